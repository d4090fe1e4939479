"""The release: one version, a changelog, a systemd unit that does not run as root."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from maitred.core import __version__

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "conf" / "maitred.service"


def test_the_version_is_written_in_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "maitred.core.__version__"
    }
    shown = subprocess.run(
        [sys.executable, "-m", "maitred.core", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout == f"maitred {__version__}\n"


def test_changelog_has_unreleased_and_the_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    heads = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert heads[0] == "Unreleased"
    assert __version__ in heads


def test_release_env_is_in_the_default_tox_run() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert "release" in [e.strip() for e in tox["tox"]["env_list"].split(",")]
    commands = tox["testenv:release"]["commands"]
    assert "python -m build" in commands and "twine check" in commands
    assert "release_smoke.py" in commands


def unit() -> dict[str, list[str]]:
    """The unit's [Service] settings, each key with every value it is given."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def test_systemd_unit_runs_as_its_own_user_with_hardening() -> None:
    s = unit()
    assert s["Service.User"] == ["maitred"] and s["Service.Group"] == ["maitred"]
    assert s["Service.StateDirectory"] == ["maitred"]
    assert s["Service.Environment"] == ["XDG_STATE_HOME=/var/lib/maitred"]
    assert s["Service.ProtectSystem"] == ["strict"]
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "RestrictSUIDSGID",
    ):
        assert s[f"Service.{key}"] == ["yes"], key
    assert s["Service.CapabilityBoundingSet"] == [""]
    assert s["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "serve -c /etc/maitred/maitred.toml" in s["Service.ExecStart"][0]
    assert s["Service.ExecStartPre"][0].endswith("check -c /etc/maitred/maitred.toml")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (.ci/run installs systemd)")
        pytest.skip("systemd-analyze is not installed")
    maitred = shutil.which("maitred") or str(Path(sys.executable).parent / "maitred")
    # the unit names /usr/local/bin/maitred; verify it against the maitred of this run
    copy = tmp_path / "maitred.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/maitred", maitred))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "maitred.service" not in result.stderr, result.stderr
