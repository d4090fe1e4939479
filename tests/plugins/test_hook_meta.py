"""Every hook in plugins/hookspecs.py is documented in docs/reference/hooks.md and has a test."""

from __future__ import annotations

import inspect
from pathlib import Path

from maitred.plugins import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS_DOC = ROOT / "docs" / "reference" / "hooks.md"
TESTS = ROOT / "tests"


def hook_names() -> list[str]:
    names = [
        name
        for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("maitred_")
    ]
    assert names, "no maitred_* function found in plugins/hookspecs.py"
    return sorted(names)


def test_every_maitred_function_is_a_hookspec() -> None:
    for name in hook_names():
        assert hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec"), (
            f"{name} in plugins/hookspecs.py is not marked @hookspec"
        )


def test_every_hook_is_documented() -> None:
    assert HOOKS_DOC.is_file(), f"{HOOKS_DOC.relative_to(ROOT)} is missing"
    text = HOOKS_DOC.read_text(encoding="utf-8")
    missing = [name for name in hook_names() if name not in text]
    assert not missing, f"hooks not documented in {HOOKS_DOC.relative_to(ROOT)}: {missing}"


def test_every_hook_has_a_test() -> None:
    me = Path(__file__).resolve()
    sources = [
        p.read_text(encoding="utf-8") for p in sorted(TESTS.rglob("*.py")) if p.resolve() != me
    ]
    untested = [name for name in hook_names() if not any(name in src for src in sources)]
    assert not untested, f"hooks that no test under tests/ mentions: {untested}"
