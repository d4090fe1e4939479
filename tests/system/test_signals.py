"""Every long-running verb stops on SIGINT and SIGTERM whatever signal state it inherited.

A background job of a shell (``cmd &`` in a non-interactive shell, CI runners, ``nohup``) starts
with SIGINT ignored, and Python then installs no KeyboardInterrupt handler: a verb relying on
Python's default handler would ignore ``kill -INT``. Each test here starts the verb through
``sh -c 'trap "" INT; exec ...'`` (SIGINT ignored, inherited across exec), waits until it is
demonstrably running, sends the signal and expects a clean exit.

Also the readiness signal of ``serve``: the ``maitred: ready {JSON}`` line and ``--ready-file``
come once every transport listens, with all the endpoints.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from maitred.plugins.testing import MAITRED_COMMAND, ServeProcess
from maitred.transports.http.client import SwitchClient

pytestmark = pytest.mark.slow

#: prefix of a command that runs it with SIGINT ignored, as a shell's background job does
SIGINT_IGNORED = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]
WAIT = 30.0


def maitred(*args: str) -> list[str]:
    return [*SIGINT_IGNORED, *MAITRED_COMMAND, *args]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAITRED_COMMAND, *args], capture_output=True, text=True, timeout=WAIT, check=False
    )


def test_the_prefix_really_ignores_sigint() -> None:
    """The premise of the other tests: a program started this way inherits SIGINT ignored."""
    out = subprocess.run(
        [*SIGINT_IGNORED, *MAITRED_COMMAND[:-2], "-c",
         "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"],
        capture_output=True, text=True, timeout=WAIT, check=True,
    ).stdout  # fmt: skip
    assert out == "True\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_worker_stops_on_a_signal_with_sigint_inherited_ignored(sig: signal.Signals) -> None:
    with ServeProcess("--mdp", "tcp://127.0.0.1:0") as served:
        ep = served.endpoint("mdp")
        worker = subprocess.Popen(
            maitred("worker", "sig", "--program", "cat", "-b", ep),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # it answers: it runs (its handlers are set before it connects)
            result = run("call", "sig", "hi", "-b", ep, "-t", "20")
            assert result.stdout == "hi\n", result.stderr
            worker.send_signal(sig)
            _, err = worker.communicate(timeout=WAIT)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate(timeout=WAIT)
        assert worker.returncode == 0, err
        assert "stopping: leaving sig" in err and "Traceback" not in err
        # it left with DISCONNECT: gone at once, not after missed heartbeats
        assert run("call", "mmi.service", "sig", "-b", ep).stdout == "404\n"
        assert served.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_drains_on_a_signal_with_sigint_inherited_ignored(
    sig: signal.Signals, tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    served = ServeProcess(
        "--mdp", "tcp://127.0.0.1:0", "--ready-file", str(ready),
        command=[*SIGINT_IGNORED, *MAITRED_COMMAND],
    )  # fmt: skip
    try:
        data = json.loads(ready.read_text())
        assert data["endpoints"] == served.endpoints and data["pid"] == served.pid
        code = served.stop(sig)
    finally:
        served.close()
    assert code == 0, served.log()
    assert "maitred stopped" in served.log()
    assert not ready.exists()  # removed on the way out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_tail_follow_stops_on_a_signal_with_sigint_inherited_ignored(
    sig: signal.Signals,
) -> None:
    with ServeProcess("--http", "127.0.0.1:0") as served:
        url = served.endpoint("http")
        tail = subprocess.Popen(
            maitred("tail", "--follow", "--poll", "1", "-b", url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        printed = threading.Event()
        lines: list[str] = []

        def read() -> None:
            assert tail.stdout is not None
            for line in tail.stdout:
                lines.append(line)
                printed.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            with SwitchClient(url, token="sig-test", timeout=10) as sw:
                sw.create("sigq", persistent=True)
                for i in range(100):  # bounded: until tail shows it is following
                    sw.send("sigq", "sig-test", b"m%d" % i)
                    if printed.wait(0.2):
                        break
            assert printed.is_set(), "tail printed nothing"
            tail.send_signal(sig)
            code = tail.wait(WAIT)
            err = tail.stderr.read() if tail.stderr else ""
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.wait(WAIT)
            reader.join(WAIT)
            for pipe in (tail.stdout, tail.stderr):
                if pipe is not None:
                    pipe.close()
        assert code == 0, err
        assert "Traceback" not in err
        assert served.stop() == 0


def test_ready_line_names_every_transport_and_each_one_answers() -> None:
    """The ready line comes after every transport listens: each endpoint it names takes a
    connection at once (no retry, no wait)."""
    with ServeProcess(
        "--mdp", "tcp://127.0.0.1:0", "--http", "127.0.0.1:0", "--ws", "127.0.0.1:0"
    ) as served:
        assert set(served.endpoints) == {"mdp", "http", "ws"}
        listening = [ln for ln in served.stdout_lines if " listening on " in ln]
        assert len(listening) == 3
        assert served.stdout_lines[-1].startswith("maitred: ready ")  # after all of them
        with urllib.request.urlopen(served.endpoint("http") + "/healthz", timeout=10) as resp:
            assert resp.status == 200
        with connect(served.endpoint("ws"), open_timeout=10, proxy=None) as ws:
            assert ws.protocol.state.name == "OPEN"
        assert run("call", "mmi.service", "x", "-b", served.endpoint("mdp")).stdout == "404\n"
        assert served.stop() == 0


def test_serve_process_reports_a_failed_start() -> None:
    """A ServeProcess whose broker exits before it is ready (a busy port) raises with the exit
    code and the broker's stderr, instead of waiting out its start timeout."""
    with ServeProcess("--mdp", "tcp://127.0.0.1:0") as first:
        with pytest.raises(RuntimeError, match="cannot bind") as info:
            ServeProcess("--mdp", first.endpoint("mdp"))
        assert "exited with 1" in str(info.value)
        assert first.proc.poll() is None  # the first broker is untouched
        assert first.stop() == 0
