"""Fixtures for every test: nothing a test starts may write outside its temporary directories."""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
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
    for handler in handlers:  # setup_logging() removes every handler it finds
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("maitred")
    group.addoption(
        "--chaos-seconds",
        type=float,
        default=None,
        help="how long the chaos harness (tests/chaos) strikes; default $MAITRED_CHAOS_SECONDS, "
        "else 20 (300 with --chaos-long)",
    )
    group.addoption(
        "--chaos-long", action="store_true", help="a long chaos run (300 s unless told)"
    )
    group.addoption(
        "--chaos-seed", type=int, default=None, help="replay a chaos run (its report prints it)"
    )


class _ErrorRecords(logging.Handler):
    """Collects records at ERROR and above logged anywhere in the process (any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        with self._guard:
            taken, self.records = self.records, []
        return taken


_ERRORS = _ErrorRecords()
logging.getLogger().addHandler(_ERRORS)
#: ERROR records logged outside any test (a module fixture's teardown, garbage collected
#: between tests), with where they were found: reported at the end, and the run fails
_ORPHANS: list[tuple[str, logging.LogRecord]] = []


def _describe(record: logging.LogRecord) -> str:
    text = f"{record.levelname} {record.name}: {record.getMessage()}"
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        text += f" [{type(exc).__name__}: {exc}]"
    return text


@pytest.fixture(autouse=True)
def _no_unexpected_error_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which a record at ERROR or above was logged in this process: a
    traceback a transport or the router logged and then swallowed, an asyncio task whose
    exception nobody retrieved, a callback that raised in an event loop (asyncio's default
    exception handler logs each of these at ERROR). A test that provokes errors on purpose
    says which with ``@pytest.mark.allow_error_logs("regex", ...)`` (no pattern: any)."""
    root = logging.getLogger()
    if _ERRORS not in root.handlers:
        root.addHandler(_ERRORS)
    # what came before the test (e.g. a module fixture's setup) is not its fault
    _ORPHANS.extend((f"before {request.node.nodeid}", r) for r in _ERRORS.take())
    yield
    records = _ERRORS.take()
    marker = request.node.get_closest_marker("allow_error_logs")
    if marker is not None:
        patterns = [re.compile(p) for p in marker.args]
        records = [
            r for r in records if patterns and not any(p.search(_describe(r)) for p in patterns)
        ]
    if records:
        pytest.fail(
            "unexpected ERROR records (mark the test allow_error_logs if they are expected):\n"
            + "\n".join(_describe(r) for r in records),
            pytrace=False,
        )


@pytest.fixture(scope="module", autouse=True)
def _collect_garbage_per_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each module, collect garbage: an asyncio task whose exception nobody retrieved
    says so (at ERROR) only when it is collected."""
    yield
    gc.collect()
    _ORPHANS.extend((f"after {request.node.nodeid}", r) for r in _ERRORS.take())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    gc.collect()
    _ORPHANS.extend(("at the end", r) for r in _ERRORS.take())
    if not _ORPHANS:
        return
    lines = [f"{where}: {_describe(record)}" for where, record in _ORPHANS]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    text = "ERROR records logged outside any test:\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_sep("=", "unexpected ERROR records", red=True)
        reporter.write_line(text)
    else:
        print(text)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
