"""Guard: every package folder under the mapped roots must be listed in
[tool.setuptools].packages, or editable installs see it while wheels silently drop it."""

from __future__ import annotations

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_dir_is_listed_in_pyproject() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for prefix, directory in cfg["package-dir"].items():
        base = ROOT / directory
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join((prefix, *rel.parts)))
    assert found == set(cfg["packages"])


def test_no_maitred_folder_at_the_root() -> None:
    # maitred is a namespace package made of core/, transports/ and plugins/
    assert not (ROOT / "maitred").exists()
