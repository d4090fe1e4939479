"""The documentation kept in step with the code: the configuration reference is generated from the
config Structs (docs/gen_config.py), and every page is in the mkdocs nav."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

from maitred.core.config import Config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load_generator() -> ModuleType:
    path = DOCS / "gen_config.py"
    spec = importlib.util.spec_from_file_location("maitred_docs_gen_config", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
REGENERATE = f"regenerate with: {gen.REGENERATE}"


@pytest.mark.parametrize("section", list(gen.SECTIONS))
def test_every_field_has_a_description(section: str) -> None:
    _, missing = gen.describe(section)
    assert not missing, (
        f"[{section}] fields without a description: {missing}; add them to DESCRIPTIONS in "
        f"docs/gen_config.py (or a `#:` comment above the field), then {REGENERATE}"
    )


@pytest.mark.parametrize("section", list(gen.SECTIONS))
def test_no_description_for_a_field_that_is_gone(section: str) -> None:
    fields = {f.encode_name for f in msgspec.structs.fields(gen.SECTIONS[section])}
    extra = set(gen.DESCRIPTIONS.get(section, {})) | set(gen.RANGES.get(section, {}))
    assert extra <= fields, (
        f"docs/gen_config.py describes [{section}] keys the Struct does not have: "
        f"{sorted(extra - fields)}"
    )


def test_config_reference_is_up_to_date() -> None:
    text = gen.CONFIG_MD.read_text(encoding="utf-8")
    stale = gen.stale(text)
    details = []
    for section in stale:
        m = gen.block_pattern(section).search(text)
        have = set(m.group(2).splitlines()) if m else set()
        want = gen.render(section).splitlines()
        rows = [re.match(r"\| `([^`]+)`", row) for row in want if row not in have]
        details.append(f"[{section}] rows: {[r.group(1) for r in rows if r] or 'block missing'}")
    assert not stale, (
        f"docs/reference/config.md does not match the config Structs ({'; '.join(details)}); "
        f"{REGENERATE}"
    )


def test_every_config_section_is_generated() -> None:
    structs = set(gen.SECTIONS.values())
    for field in msgspec.structs.fields(Config):
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            assert field.type in structs, f"[{field.name}] has no table in docs/gen_config.py"


def test_every_built_in_transport_is_generated() -> None:
    from maitred.transports.http import plugin as http_plugin
    from maitred.transports.mdp import plugin as mdp_plugin
    from maitred.transports.ws import plugin as ws_plugin

    for module in (mdp_plugin, http_plugin, ws_plugin):
        for spec in module.maitred_transports():
            key = f"transports.{spec.name}"
            assert gen.SECTIONS.get(key) is spec.config_type, (
                f"[{key}] ({spec.config_type.__name__}) has no table in docs/gen_config.py"
            )


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    missing = [p for p in pages if not re.search(rf":\s*{re.escape(p)}\s*$", nav, re.M)]
    assert not missing, f"pages not in the nav of mkdocs.yml: {missing}"


# Names of documents that live outside the repository (the team's shared notes); spelled in
# pieces so this file does not match itself.
_OUTSIDE = ("PROTOCOLS" + ".md", "DESIGN" + ".md", "shared/" + "seeds")
_SCANNED = (".py", ".md", ".toml", ".ini", ".yml", ".cfg", ".txt", ".html", ".js", ".c", ".h")


def test_nothing_cites_files_outside_the_repository() -> None:
    """Code and docs point at docs/ pages, never at documents a reader of the repository lacks."""
    skip = {".git", ".tox", ".venv", "site", "node_modules", "build", "artifacts"}
    found = []
    for path in ROOT.rglob("*"):
        if not path.is_file() or path.suffix not in _SCANNED:
            continue
        if skip.intersection(path.relative_to(ROOT).parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}: {name}" for name in _OUTSIDE if name in text]
    assert not found, "cite docs/reference pages instead:\n" + "\n".join(found)
