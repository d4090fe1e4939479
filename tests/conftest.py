"""Fixtures for every test: nothing a test starts may write outside its temporary directories."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Property tests are random: a new seed every run (hypothesis prints the seed and a reproduction
# blob of a failure; ``pytest --hypothesis-seed=N`` replays a run). "dev" keeps failing examples
# in .hypothesis/ and tries them first next time; "ci" (selected when $CI is set, or with
# ``--hypothesis-profile ci``) keeps nothing and runs a few more examples.
settings.register_profile("dev", max_examples=100, print_blob=True)
settings.register_profile("ci", max_examples=200, print_blob=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session", autouse=True)
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The HTTP transport's default SQLite store lives under ``$XDG_STATE_HOME``: point it at a
    temporary directory (subprocesses inherit it), so a test that forgets ``store = "memory"``
    or a ``store_path`` neither reads nor leaves a store in the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
        yield


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """``maitred serve``/``worker`` run in-process configure the root logger with a handler on
    the sys.stderr of that moment, which pytest closes after the test: a later record from a
    thread that outlives it would then fail to print. Put the root logger back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
