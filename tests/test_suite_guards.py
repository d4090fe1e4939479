"""The suite's own guards (tests/conftest.py) work: a test fails on an ERROR record logged in
the process, including asyncio's "Task exception was never retrieved" and an exception in a
loop callback, unless it is marked ``allow_error_logs`` with a matching pattern."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CASES = """
import asyncio
import gc
import logging
import threading

import pytest


def test_error_record_fails() -> None:
    logging.getLogger("maitred.x").error("boom")


def test_error_in_another_thread_fails() -> None:
    t = threading.Thread(target=lambda: logging.getLogger("maitred.y").exception("worker"))
    t.start()
    t.join()


def test_task_exception_never_retrieved_fails() -> None:
    async def fail() -> None:
        raise RuntimeError("lost")

    async def main() -> None:
        asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0.01)

    asyncio.run(main())
    gc.collect()


def test_callback_exception_fails() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: 1 / 0)
        await asyncio.sleep(0.01)

    asyncio.run(main())


@pytest.mark.allow_error_logs("expected one")
def test_allowed_pattern_passes() -> None:
    logging.getLogger("maitred.z").error("the expected one")


@pytest.mark.allow_error_logs("expected one")
def test_other_record_than_allowed_fails() -> None:
    logging.getLogger("maitred.z").error("a surprise")


@pytest.mark.allow_error_logs()
def test_allow_any_passes() -> None:
    logging.getLogger("maitred.z").critical("anything")


def test_warning_passes() -> None:
    logging.getLogger("maitred.z").warning("only a warning")
"""

#: a module fixture whose teardown logs an ERROR: no test is to blame, the run fails
ORPHAN = """
import logging

import pytest


@pytest.fixture(scope="module")
def noisy():
    yield
    logging.getLogger("maitred.teardown").error("after every test")


def test_uses_it(noisy) -> None:
    pass
"""


@pytest.mark.slow
def test_error_records_fail_the_test(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "tests").mkdir()
    shutil.copy(root / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    shutil.copy(root / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "tests" / "test_cases.py").write_text(CASES)
    (tmp_path / "tests" / "test_orphan.py").write_text(ORPHAN)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:randomly",
         "tests/test_cases.py", "tests/test_orphan.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out = result.stdout
    outcome = {}
    for line in out.splitlines():
        for word in ("PASSED", "FAILED", "ERROR"):
            if line.startswith(word + " tests/test_cases.py::"):
                name = line.split("::", 1)[1].split()[0]
                outcome[name] = "passed" if word == "PASSED" and name not in outcome else "failed"
    assert outcome == {
        "test_error_record_fails": "failed",
        "test_error_in_another_thread_fails": "failed",
        "test_task_exception_never_retrieved_fails": "failed",
        "test_callback_exception_fails": "failed",
        "test_allowed_pattern_passes": "passed",
        "test_other_record_than_allowed_fails": "failed",
        "test_allow_any_passes": "passed",
        "test_warning_passes": "passed",
    }, out
    assert "after tests/test_orphan.py: ERROR maitred.teardown: after every test" in out
    # alone, its test passes and the run fails all the same
    alone = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "tests/test_orphan.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "1 passed" in alone.stdout and alone.returncode == 1, alone.stdout
    assert "unexpected ERROR records" in out and "Task exception was never retrieved" in out
