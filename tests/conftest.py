"""Fixtures for every test: nothing a test starts may write outside its temporary directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The HTTP transport's default SQLite store lives under ``$XDG_STATE_HOME``: point it at a
    temporary directory (subprocesses inherit it), so a test that forgets ``store = "memory"``
    or a ``store_path`` neither reads nor leaves a store in the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
        yield
