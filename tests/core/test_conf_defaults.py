"""conf/maitred.toml writes out the embedded defaults in full; conf/examples/*.toml are valid.

The file must decode to exactly ``Config()`` (every section), write every key of every section
(so the commented file is a complete reference), and each example must pass ``maitred check``.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from maitred.core.config import Config, load_config
from maitred.core.routing.model import ServicePolicy
from maitred.transports.mdp.adapter import MdpConfig

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ROOT / "conf" / "maitred.toml"
EXAMPLES = sorted((ROOT / "conf" / "examples").glob("*.toml"))

#: sections compared key for key with Config(); services and transports are checked by type
PLAIN_SECTIONS = ("broker", "liveness", "store", "access", "plugins", "tracing")


def _builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


@pytest.fixture(scope="module")
def loaded() -> Config:
    return load_config(DEFAULTS)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    with DEFAULTS.open("rb") as fh:
        return tomllib.load(fh)


def test_every_section_is_written(raw: dict[str, Any]) -> None:
    expected = set(_builtins(Config())) - {"source"}
    assert set(raw) == expected


def test_loaded_config_equals_defaults(loaded: Config) -> None:
    got = _builtins(loaded)
    want = _builtins(Config())
    for section in PLAIN_SECTIONS:
        assert got[section] == want[section], section
    assert got.keys() == want.keys()
    assert loaded.source == str(DEFAULTS)


@pytest.mark.parametrize("section", PLAIN_SECTIONS)
def test_plain_sections_write_every_key(raw: dict[str, Any], section: str) -> None:
    # equal as raw TOML too: no key is left to its default silently
    assert raw[section] == _builtins(Config())[section]


def test_services_default_is_service_policy_defaults(loaded: Config, raw: dict[str, Any]) -> None:
    assert set(raw["services"]) == {"default"}
    assert raw["services"]["default"] == _builtins(ServicePolicy())
    policies = loaded.policies()
    assert policies.default == ServicePolicy()
    assert policies.for_service("any.service") == ServicePolicy()
    assert Config().policies().default == ServicePolicy()


def test_mdp_table_is_mdp_defaults(loaded: Config, raw: dict[str, Any]) -> None:
    assert set(loaded.transports) == set(Config().transports) == {"mdp"}
    table = raw["transports"]["mdp"]
    assert msgspec.convert(table, MdpConfig, strict=True) == MdpConfig()
    assert msgspec.convert(Config().transports["mdp"], MdpConfig, strict=True) == MdpConfig()
    assert table == _builtins(MdpConfig())


def test_embedded_defaults_check() -> None:
    load_config(None)  # the defaults pass their own checks


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("path", [DEFAULTS, *EXAMPLES], ids=lambda p: p.name)
def test_maitred_check_accepts(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "maitred.core", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: ok" in proc.stdout
