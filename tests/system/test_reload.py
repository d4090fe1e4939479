"""Reload: SIGHUP (or ``maitred reload``) re-reads the config file; service policies and access
rules change at once without dropping a connection; listen addresses stay and are reported.
A real ``maitred serve`` subprocess, real sockets, the CLI as a subprocess."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from maitred.core import cli
from maitred.plugins.testing import ServeProcess

MAITRED = [sys.executable, "-m", "maitred.core"]

BASE = """
[broker]
store = "memory"
[transports.mdp]
endpoints = ["{mdp}"]
[transports.http]
listen = ["127.0.0.1:0"]
switch = false
"""


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAITRED, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.02)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ServeProcess, Path, str]]:
    conf = tmp_path / "maitred.toml"
    conf.write_text(BASE.format(mdp="tcp://127.0.0.1:0"))
    ready = tmp_path / "ready.json"
    serve = ServeProcess("-c", str(conf), "--ready-file", str(ready))
    yield serve, conf, str(ready)
    serve.close()


@pytest.mark.slow
def test_sighup_applies_policies_and_access_without_dropping_a_connection(
    setup: tuple[ServeProcess, Path, str],
) -> None:
    serve, conf, ready = setup
    mdp = serve.endpoints["mdp"][0]
    http = serve.endpoints["http"][0]
    proc = subprocess.Popen(
        [*MAITRED, "worker", "echo", "--program", "cat", "-b", mdp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert run("call", "echo", "before", "-b", mdp, "-t", "20").stdout == "before\n"
        # before: a service without a worker waits (the default policy), so the call times out
        assert run("call", "nowork", "x", "-b", http, "-t", "0.5").returncode == cli.EXIT_TIMEOUT
        conf.write_text(
            BASE.format(mdp="tcp://127.0.0.1:1")  # a new address: cannot change while running
            + '[services.nowork]\non_no_worker = "fail"\n'
            + '[[access.rules]]\nallow = false\nnames = ["secret.>"]\n'
        )
        result = run("reload", "--ready-file", ready)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: "reloaded " in serve.log(), "the reload is logged")
        assert "applied [services], [access]" in serve.log()
        assert (
            "reload: [transports.mdp.endpoints] changed in " in serve.log()
            and "cannot change while running" in serve.log()
        )
        # the policy: no worker now fails at once with 503
        failed = run("call", "nowork", "x", "-b", http, "-t", "20")
        assert failed.returncode == cli.EXIT_ERROR_REPLY
        assert "503 NO_WORKER" in failed.stderr
        # the access rule: refused
        denied = run("call", "secret.x", "y", "-b", http, "-t", "20")
        assert denied.returncode == cli.EXIT_REFUSED, denied.stderr
        # the old address still listens and the worker's connection was kept: it still answers
        assert run("call", "echo", "after", "-b", mdp, "-t", "20").stdout == "after\n"
        workers = run("workers", "--json", "-b", http)
        assert '"served": 2' in workers.stdout, workers.stdout
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_a_bad_file_on_reload_changes_nothing(setup: tuple[ServeProcess, Path, str]) -> None:
    serve, conf, _ = setup
    http = serve.endpoints["http"][0]
    conf.write_text(BASE.format(mdp="tcp://127.0.0.1:0") + "[services.x]\nbogus = 1\n")
    assert run("reload", "--pid", str(serve.pid)).returncode == 0
    wait_for(lambda: "reload refused" in serve.log(), "the refusal is logged")
    assert "the running config stays" in serve.log()
    assert "Object contains unknown field `bogus`" in serve.log()
    info = run("info", "-b", http)
    assert info.returncode == 0 and "running" in info.stdout


def test_reload_of_a_process_that_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ready = tmp_path / "ready.json"
    ready.write_text('{"pid": 999999999, "endpoints": {}}')
    assert cli.main(["reload", "--ready-file", str(ready)]) == cli.EXIT_UNREACHABLE
    assert "pid 999999999: no such process" in capsys.readouterr().err
    assert cli.main(["reload", "--ready-file", str(tmp_path / "none")]) == cli.EXIT_UNREACHABLE
    ready.write_text("garbage")
    assert cli.main(["reload", "--ready-file", str(ready)]) == cli.EXIT_USAGE
