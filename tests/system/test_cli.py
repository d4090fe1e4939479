"""The ``maitred`` command as an operator uses it: serve, worker --program, call, services,
check, and a graceful stop on SIGTERM. Each runs as a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from maitred.plugins.testing import ServeProcess

MAITRED = [sys.executable, "-m", "maitred.core"]


@pytest.fixture
def served() -> Iterator[ServeProcess]:
    s = ServeProcess("--mdp", "tcp://127.0.0.1:0")
    yield s
    s.close()


def run(
    *args: str, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAITRED, *args], capture_output=True, text=True, timeout=timeout, input=stdin, check=False
    )


@pytest.mark.slow
def test_worker_program_call_services_and_graceful_stop(served: ServeProcess) -> None:
    ep = served.endpoints["mdp"][0]
    worker = subprocess.Popen(
        [*MAITRED, "worker", "echo", "--program", "tr a-z A-Z", "-b", ep],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # the call waits in the broker until the worker is ready: no race to sleep over
        result = run("call", "echo", "hello", "-b", ep, "-t", "20")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "HELLO\n"
        listing = run("services", "-b", ep)
        assert listing.returncode == 0, listing.stderr
        assert re.search(r"^echo\s+1\s+1\s+0\s+0\s+1\s+0$", listing.stdout, re.M), listing.stdout
        mmi = run("call", "mmi.service", "echo", "-b", ep)
        assert mmi.stdout == "200\n"
        # a failing program answers with an error the caller sees at once
        bad = subprocess.Popen(
            [*MAITRED, "worker", "boom", "--program", "false", "-b", ep, "--max-requests", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        failed = run("call", "boom", "x", "-b", ep, "-t", "20")
        assert failed.returncode == 4, (failed.stdout, failed.stderr)
        assert "program exited 1" in failed.stderr
        assert bad.wait(20) == 0
    finally:
        rc = served.stop()
        worker.terminate()
        worker.wait(20)
    assert rc == 0
    log = "".join(served.stderr_lines)
    assert "mdp listening on" in log and "stopped" in log


@pytest.mark.slow
def test_worker_leaves_the_broker_on_sigterm(tmp_path: Path) -> None:
    # liveness so long that only the worker's DISCONNECT can take it out of the service in time
    conf = tmp_path / "long-liveness.toml"
    conf.write_text("[liveness]\nheartbeat_interval = 60.0\n")
    served = ServeProcess("-c", str(conf), "--mdp", "tcp://127.0.0.1:0")
    try:
        ep = served.endpoints["mdp"][0]
        worker = subprocess.Popen(
            [*MAITRED, "worker", "leaving", "--program", "cat", "-b", ep],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        result = run("call", "leaving", "hi", "-b", ep, "-t", "20")  # waits for the worker
        assert result.stdout == "hi\n", result.stderr
        worker.terminate()
        _, err = worker.communicate(timeout=20)
        assert worker.returncode == 0, err
        assert "stopping: leaving leaving" in err and "Traceback" not in err
        for _ in range(100):  # bounded: 100 short calls, far less than 180 s of liveness
            if run("call", "mmi.service", "leaving", "-b", ep).stdout == "404\n":
                break
        else:
            raise AssertionError("the worker is still registered")
    finally:
        assert served.stop() == 0
        served.close()


@pytest.mark.slow
def test_call_without_worker_times_out_with_exit_3(served: ServeProcess) -> None:
    ep = served.endpoints["mdp"][0]
    result = run("call", "nobody", "x", "-b", ep, "-t", "0.5")
    assert result.returncode == 3
    assert "timeout" in result.stderr


def test_check_names_the_key_and_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[services.echo]\nrequest_timeout = "soon"\n')
    result = run("check", "-c", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "services.echo.request_timeout" in result.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[transports.mdp]\nendpoint = "tcp://127.0.0.1:1"\n')
    result = run("check", "-c", str(unknown))
    assert result.returncode == 2
    assert "transports.mdp" in result.stderr and "endpoint" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text('[transports.mdp]\nendpoints = ["tcp://127.0.0.1:0"]\n')
    result = run("check", "-c", str(good))
    assert result.returncode == 0 and "ok" in result.stdout


def test_serve_refuses_a_busy_port_cleanly(served: ServeProcess) -> None:
    ep = served.endpoints["mdp"][0]
    result = run("serve", "--mdp", ep, timeout=30)
    assert result.returncode == 1
    assert "cannot bind" in result.stderr


def test_no_env_leaks_into_the_default_broker_url() -> None:
    # the CLI's default broker comes from MAITRED_BROKER or the embedded default
    env = dict(os.environ, MAITRED_BROKER="tcp://127.0.0.1:1")
    result = subprocess.run(
        [*MAITRED, "call", "--help"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0 and "MAITRED_BROKER" in result.stdout


@pytest.mark.slow
def test_json_logs_follow_one_request_across_protocols() -> None:
    """A REST call answered by an MDP worker: with ``--log-format json`` and debug level, the
    broker's records of that request (accepted from http, dispatched to the mdp worker,
    answered) carry the same ``req`` id, each with the transport of its side."""
    import json
    import urllib.request

    s = ServeProcess(
        "--mdp",
        "tcp://127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--log-level",
        "debug",
    )
    worker = None
    try:
        ep = s.endpoints["mdp"][0]
        worker = subprocess.Popen(
            [*MAITRED, "worker", "echo", "--program", "cat", "-b", ep],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        http = s.endpoints["http"][0]
        req = urllib.request.Request(
            f"{http}/v1/services/echo",
            data=b"hi",
            method="POST",
            headers={"X-Maitred-Timeout": "20"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.read() == b"hi"
    finally:
        assert s.stop() == 0
        if worker is not None:
            worker.terminate()
            worker.wait(20)
    records = [json.loads(line) for line in s.stderr_lines if line.startswith("{")]
    assert records and all({"time", "level", "logger", "msg"} <= r.keys() for r in records)
    accepted = [r for r in records if r.get("service") == "echo" and "called" in r["msg"]]
    assert len(accepted) == 1 and accepted[0]["transport"] == "http"
    rid = accepted[0]["req"]
    steps = [r for r in records if r.get("req") == rid]
    assert [r["transport"] for r in steps] == ["http", "mdp", "http"], steps
    assert "answered by" in steps[-1]["msg"]
