"""``maitred call/services/worker -b http://... | unix:...`` through the http plugin's
``maitred_connect`` (REST for calls, the message switch for ``worker``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from maitred.core.cli import main
from maitred.transports.http.client import HttpCliClient, SwitchClient
from maitred.transports.http.plugin import maitred_connect
from tests.e2e.helpers import BrokerThread, wait_until
from tests.e2e.http_helpers import endpoint_of, http_toml, short_socket_path


def test_connect_speaks_http_and_unix_urls() -> None:
    assert isinstance(maitred_connect(url="http://127.0.0.1:1", timeout=1.0), HttpCliClient)
    assert isinstance(maitred_connect(url="unix:/tmp/x.sock", timeout=1.0), HttpCliClient)
    assert maitred_connect(url="tcp://127.0.0.1:1", timeout=1.0) is None


@pytest.mark.parametrize("kind", ["http://", "unix:"])
def test_call_services_and_worker_over_http(
    make_broker: Callable[..., BrokerThread], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    b = make_broker(http_toml(["127.0.0.1:0", f"unix:{short_socket_path()}"]))
    url = endpoint_of(b, kind)
    # a worker over the message switch (what message-cli calls `serve`), running `tr`
    worker = threading.Thread(
        target=main,
        args=(["worker", "up", "--program", "tr a-z A-Z", "--max-requests", "1", "-b", url],),
        daemon=True,
    )
    worker.start()
    wait_until(lambda: b.call(lambda: "up" in b.broker.router.services), what="switch worker")
    assert main(["call", "up", "hello", "-b", url]) == 0
    worker.join(10)
    assert not worker.is_alive()
    assert main(["services", "-b", url]) == 0
    out = capsys.readouterr().out
    assert "HELLO" in out and "SERVICE" in out
    assert main(["call", "nobody", "x", "-b", url, "-t", "0.2"]) == 3  # timeout


def test_switch_client_rpc(make_broker: Callable[..., BrokerThread]) -> None:
    b = make_broker(http_toml([f"unix:{short_socket_path()}"]))
    url = endpoint_of(b, "unix:")
    with SwitchClient(url, token="srv:1") as srv, SwitchClient(url, token="cli:1") as cli:
        srv.create("rev")
        t = threading.Thread(
            target=srv.serve, args=("rev", lambda p: p[::-1]), kwargs={"max_requests": 1}
        )
        t.start()
        assert cli.rpc("rev", b"abc", timeout=10) == b"cba"
        t.join(10)
        assert "rev" in cli.list_queues()
        assert cli.diagnostics()["permanent_queues"]["rev"]["queue_contents"] == []
        assert any(e["queue"] == "rev" for _, e in cli.trace(-1, 0))


def test_message_cli_verbs(
    make_broker: Callable[..., BrokerThread], capsys: pytest.CaptureFixture[str]
) -> None:
    """list, diagnostics, ack, destroy, tail, mscgen, shutdown as message-cli offers them."""
    b = make_broker(http_toml([f"unix:{short_socket_path()}"]))
    url = endpoint_of(b, "unix:")
    with SwitchClient(url, token="cli:9") as cli:
        cli.create("jobs")
        assert cli.send("jobs", "cli:9", b"do it") == ("jobs", 0)
    capsys.readouterr()
    assert main(["list", "--all", "-b", url]) == 0
    assert "jobs" in capsys.readouterr().out.split()
    assert main(["diagnostics", "-b", url]) == 0
    summary = capsys.readouterr().out
    assert "Services never started: 1" in summary and "jobs/0" in summary
    assert main(["diagnostics", "--json", "-b", url]) == 0
    assert '"permanent_queues"' in capsys.readouterr().out
    assert main(["tail", "-b", url]) == 0
    assert "jobs/0" in capsys.readouterr().out
    assert main(["mscgen", "-b", url]) == 0
    chart = capsys.readouterr().out
    assert chart.startswith("msc {") and '"jobs"' in chart
    assert main(["ack", "jobs", "0", "-b", url]) == 0
    assert main(["destroy", "jobs", "-b", url]) == 0
    capsys.readouterr()
    assert main(["list", "--all", "-b", url]) == 0
    assert "jobs" not in capsys.readouterr().out.split()
    # shutdown is refused for a session that is not authorised
    assert main(["shutdown", "-b", url]) == 6  # refused (403)
    assert "403" in capsys.readouterr().err


def test_shutdown_with_the_secret_file(
    make_broker: Callable[..., BrokerThread], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("cli-secret\n")
    secret.chmod(0o600)
    b = make_broker(
        http_toml([f"unix:{short_socket_path()}"], f'shutdown_secret_file = "{secret}"')
    )
    url = endpoint_of(b, "unix:")
    monkeypatch.setenv("MAITRED_SHUTDOWN_SECRET", "not-it")
    assert main(["shutdown", "-b", url]) == 6  # refused: the wrong secret from the environment
    assert b.broker.state == "running"
    assert main(["shutdown", "-b", url, "--secret-file", str(secret)]) == 0
    wait_until(lambda: b.broker.state == "stopped", timeout=10, what="broker stopped")
