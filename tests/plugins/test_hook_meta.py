"""Every hook in plugins/hookspecs.py is documented in docs/reference/hooks.md (with exactly the
spec's arguments) and has a test named for it."""

from __future__ import annotations

import inspect
import re
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


def _section(text: str, name: str) -> str:
    found = re.search(rf"^## `{name}`\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert found, f"no '## `{name}`' section in {HOOKS_DOC.relative_to(ROOT)}"
    return found.group(1)


def documented_arguments(name: str) -> list[str]:
    """The arguments the hook's section names: its ``**Arguments**:`` paragraph is ``none.`` or
    clauses separated by ``;``, each starting with the argument in backticks."""
    section = _section(HOOKS_DOC.read_text(encoding="utf-8"), name)
    para = re.search(r"\*\*Arguments\*\*:(.*?)(?:\n\n|\Z)", section, re.S)
    assert para, f"{name}: no **Arguments**: paragraph in its section"
    body = " ".join(para.group(1).split())
    if body.rstrip(".").strip() == "none":
        return []
    out = []
    for clause in body.split(";"):
        first = re.match(r"\s*`(\w+)`", clause)
        assert first, f"{name}: an argument clause does not start with `arg`: {clause!r}"
        out.append(first.group(1))
    return out


def test_every_hook_documents_exactly_its_arguments() -> None:
    wrong = {}
    for name in hook_names():
        spec = list(inspect.signature(getattr(hookspecs, name)).parameters)
        documented = documented_arguments(name)
        if documented != spec:
            wrong[name] = {"spec": spec, "documented": documented}
    assert not wrong, f"argument lists that differ from plugins/hookspecs.py: {wrong}"


def test_every_hook_has_a_test_named_for_it() -> None:
    names = {
        m.group(1)
        for p in sorted(TESTS.rglob("test_*.py"))
        for m in re.finditer(r"^(?:async )?def (test_\w+)", p.read_text(encoding="utf-8"), re.M)
    }
    unnamed = [h for h in hook_names() if not any(t.startswith(f"test_{h}") for t in names)]
    assert not unnamed, f"hooks with no test named test_<hook>_...: {unnamed}"
