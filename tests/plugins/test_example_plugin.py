"""The example third-party plugin (examples/maitred-line-plugin), installed and exercised.

The package must be installed in the test environment (tox does it; by hand:
``pip install ./examples/maitred-line-plugin``). If it is not, these tests FAIL: they are the
proof that a plugin installed the way a user installs one is found and works.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import zmq

from maitred.core import cli
from maitred.core.errors import ConfigError
from maitred.plugins import hookimpl
from maitred.plugins.testing import BrokerStarter, BrokerThread, ServeProcess, make_broker

INSTALL_HINT = (
    "the example plugin maitred-line-plugin is not installed in this environment: run "
    "`pip install ./examples/maitred-line-plugin` (tox installs it in commands_pre)"
)
TIMEOUT = 10.0


class EventWatch:
    """A plugin object (hook ``maitred_system_event``) that test threads can wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def maitred_system_event(self, topic: str, payload: dict[str, Any]) -> None:
        with self._cond:
            self.events.append((topic, dict(payload)))
            self._cond.notify_all()

    def wait(self, topic: str, timeout: float = TIMEOUT, **match: str) -> dict[str, Any]:
        """Block until an event on ``topic`` whose payload has ``match`` was seen."""

        def seen() -> dict[str, Any] | None:
            for t, payload in self.events:
                if t == topic and all(payload.get(k) == v for k, v in match.items()):
                    return payload
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: seen() is not None, timeout):
                pytest.fail(f"no {topic} {match} within {timeout}s (saw {self.events})")
            payload = seen()
            assert payload is not None
            return payload


@pytest.fixture
def line_plugin() -> ModuleType:
    """The installed plugin module (fails, never skips, when the package is missing)."""
    try:
        import maitred_line.plugin as plugin
    except ImportError as exc:
        pytest.fail(f"{INSTALL_HINT} ({exc})")
    registered = {ep.name: ep.value for ep in entry_points(group="maitred")}
    if registered.get("line") != "maitred_line.plugin":
        pytest.fail(
            f"{INSTALL_HINT}: no entry point line = maitred_line.plugin in group 'maitred' "
            f"(found: {registered})"
        )
    return plugin


# -- a blocking line-protocol client and an MDP worker, for the tests


class LineSocket:
    """A TCP connection to the line transport, one request/answer line at a time."""

    def __init__(self, endpoint: str) -> None:
        assert endpoint.startswith("line://"), endpoint
        host, _, port = endpoint[len("line://") :].rpartition(":")
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\n")

    def readline(self) -> bytes:
        line = self.file.readline()
        assert line.endswith(b"\n"), f"connection closed or cut: {line!r}"
        return line.rstrip(b"\r\n")

    def ask(self, line: bytes) -> bytes:
        self.send(line)
        return self.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class MdpEchoWorker(threading.Thread):
    """A raw pyzmq DEALER speaking MDP/0.2 (majortomo dialect) that echoes each request."""

    def __init__(self, endpoint: str, service: bytes) -> None:
        super().__init__(name=f"mdp-worker-{service.decode()}", daemon=True)
        self.endpoint = endpoint
        self.service = service
        self.stopping = threading.Event()
        self.served = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.endpoint)
            sock.send_multipart([b"", b"MDPW02", b"\x01", self.service])  # READY
            while not self.stopping.is_set():
                if not sock.poll(50):
                    continue
                frames = sock.recv_multipart()
                command = frames[2]
                if command == b"\x02":  # REQUEST: [b"", MDPW02, 0x02, addr, b"", body...]
                    addr, body = frames[3], frames[5:]
                    sock.send_multipart([b"", b"MDPW02", b"\x04", addr, b"", *body])
                    self.served += 1
                elif command == b"\x05":  # HEARTBEAT
                    sock.send_multipart([b"", b"MDPW02", b"\x05"])
                elif command == b"\x06":  # DISCONNECT
                    return
        except BaseException as exc:
            self.error = exc
        finally:
            sock.close(0)
            ctx.term()

    def stop(self) -> None:
        self.stopping.set()
        self.join(TIMEOUT)
        assert not self.is_alive(), "the MDP worker thread did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def echo_worker() -> Iterator[list[MdpEchoWorker]]:
    workers: list[MdpEchoWorker] = []
    yield workers
    for worker in workers:
        worker.stop()


def start_worker(workers: list[MdpEchoWorker], endpoint: str, service: bytes) -> MdpEchoWorker:
    worker = MdpEchoWorker(endpoint, service)
    workers.append(worker)
    worker.start()
    return worker


# -- the package as installed


def test_example_plugin_is_installed_and_registered(
    line_plugin: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hasattr(line_plugin, "maitred_transports")
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "  line\n" in out and "  mdp\n" in out
    assert "plain TCP text lines" in out


def test_line_config_is_validated_like_every_transport(line_plugin: ModuleType) -> None:
    from maitred_line.transport import LineConfig

    broker = make_broker({"transports": {"line": {"enabled": False}}})
    assert broker.endpoints() == {}
    assert LineConfig() == LineConfig(
        enabled=True, listen="127.0.0.1:7070", max_line=65536, identity="anonymous"
    )
    bad = {
        "bogus = 1": r"transports\.line: Object contains unknown field `bogus`",
        'max_line = "big"': r"transports\.line\.max_line: Expected `int`, got `str`",
        'listen = "nowhere"': r"transports\.line: listen: 'nowhere' is not HOST:PORT",
        'listen = "127.0.0.1:70000"': r"transports\.line: listen: port 70000 is out of range",
        "max_line = 2": r"transports\.line: max_line must be >= 16",
        'identity = ""': r"transports\.line: identity must not be empty",
    }
    for line, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            make_broker(f"[transports.line]\n{line}\n")


def test_line_plugin_can_be_disabled(
    line_plugin: ModuleType, maitred_broker: BrokerStarter, caplog: pytest.LogCaptureFixture
) -> None:
    text = '[plugins]\ndisable = ["line"]\n[transports.line]\nlisten = "127.0.0.1:0"\n'
    with caplog.at_level(logging.WARNING, logger="maitred.core.app"):
        running = maitred_broker(text, transports=["mdp"])
    assert set(running.endpoints()) == {"mdp"}
    assert "transports.line is configured but plugin 'line' is disabled" in caplog.text
    with pytest.raises(ConfigError, match=r"no transport named 'line' is registered"):
        make_broker(text, transports=["line"])


# -- the protocol, in process (broker in a background thread)


@pytest.fixture
def watch() -> EventWatch:
    return EventWatch()


@pytest.fixture
def line_broker(
    line_plugin: ModuleType, maitred_broker: BrokerStarter, watch: EventWatch
) -> BrokerThread:
    config = {
        "services": {"default": {"on_no_worker": "fail"}},
        "transports": {
            "line": {"listen": "127.0.0.1:0", "max_line": 100},
            "mdp": {"endpoints": ["tcp://127.0.0.1:0"]},
        },
    }
    return maitred_broker(config, plugins=[watch])


def test_line_protocol_commands(
    line_broker: BrokerThread, echo_worker: list[MdpEchoWorker], watch: EventWatch
) -> None:
    conn = LineSocket(line_broker.endpoint("line"))
    try:
        assert conn.ask(b"HELP").startswith(b"OK commands: CALL")
        assert conn.ask(b"CALL nobody hi") == b"ERR 503 no worker for nobody"
        assert conn.ask(b"frobnicate now") == b"ERR 400 unknown command 'FROBNICATE' (try HELP)"
        assert conn.ask(b"CALL") == b"ERR 400 usage: CALL <service> <text>"
        assert conn.ask(b"SUB a..b").startswith(b"ERR 400 ")
        assert conn.ask(b"PUB $sys.worker.ready forged").startswith(b"ERR 403 ")
        # blank lines are ignored; CRLF (telnet) is accepted; commands are case-insensitive
        conn.send(b"")
        conn.send(b"   ")
        assert conn.ask(b"call mmi.service nobody\r") == b"OK 404"
        # a line longer than max_line (100) is refused, the connection stays usable
        assert conn.ask(b"CALL x " + b"y" * 200) == b"ERR 413 line too long"
        conn.sock.sendall(b"z" * 300)  # no newline yet: refused as soon as it is too long...
        assert conn.readline() == b"ERR 413 line too long"
        conn.sock.sendall(b"z" * 300 + b"\n")  # ...and the rest of that line is skipped
        assert conn.ask(b"SERVICES") == b"OK []"

        start_worker(echo_worker, line_broker.endpoint("mdp"), b"echo")
        watch.wait("$sys.worker.ready", service="echo")
        assert conn.ask(b"CALL mmi.service echo") == b"OK 200"
        assert conn.ask(b"CALL echo hello  world ") == b"OK hello  world "
        assert conn.ask(b"CALL echo") == b"OK"
        assert conn.ask(b"CALL echo two\\nlines") == b"OK two\\nlines"
        [row] = json.loads(conn.ask(b"SERVICES")[3:])
        assert row["name"] == "echo" and row["workers"] == 1 and row["replies"] == 3

        assert conn.ask(b"QUIT") == b"OK bye"
        assert conn.file.readline() == b""
    finally:
        conn.close()


def test_line_pub_sub(line_broker: BrokerThread) -> None:
    endpoint = line_broker.endpoint("line")
    sub, pub = LineSocket(endpoint), LineSocket(endpoint)
    try:
        assert pub.ask(b"HELP").startswith(b"OK")  # its session is open before sub listens
        assert sub.ask(b"SUB news.*") == b"OK"
        assert sub.ask(b"SUB $sys.session.*") == b"OK"
        assert pub.ask(b"PUB news.today hello subscribers") == b"OK 1"
        assert sub.readline() == b"EVENT news.today hello subscribers"
        assert pub.ask(b"PUB sports.today nobody listens") == b"OK 0"
        pub.close()
        event = sub.readline()
        assert event.startswith(b"EVENT $sys.session.leave {"), event
        assert json.loads(event.split(b" ", 2)[2])["transport"] == "line"
        assert sub.ask(b"UNSUB news.*") == b"OK"
    finally:
        sub.close()
        pub.close()


def test_line_slow_consumer_is_disconnected(line_broker: BrokerThread, watch: EventWatch) -> None:
    conn = LineSocket(line_broker.endpoint("line"))
    try:
        assert conn.ask(b"SUB flood") == b"OK"
        [label] = [p["session"] for t, p in watch.events if t == "$sys.session.join"]
        router = line_broker.broker.router
        big = (b"x" * (1 << 20),)
        # the subscriber reads nothing: once the kernel buffers are full, unread events pile up
        # in the transport beyond max_output (1 MiB) and the connection is cut
        for _ in range(64):
            line_broker.call(router.publish, None, "flood", big)
            if line_broker.call(lambda: router.stats["line.slow_consumer"]):
                break
        assert line_broker.call(lambda: router.stats["line.slow_consumer"]) == 1
        watch.wait("$sys.session.leave", session=label)
    finally:
        conn.close()


def test_line_cli_client(
    line_broker: BrokerThread,
    echo_worker: list[MdpEchoWorker],
    watch: EventWatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = line_broker.endpoint("line")
    # mmi.service's 404 (no worker yet) is printed and is not success
    assert cli.main(["call", "-b", url, "mmi.service", "echo"]) == cli.EXIT_ERROR_REPLY
    assert capsys.readouterr().out == "404\n"
    assert cli.main(["call", "-b", url, "nobody", "hi"]) == cli.EXIT_ERROR_REPLY
    assert "503" in capsys.readouterr().err
    start_worker(echo_worker, line_broker.endpoint("mdp"), b"echo")
    watch.wait("$sys.worker.ready", service="echo")
    assert cli.main(["call", "-b", url, "echo", "a", "b"]) == 0
    assert capsys.readouterr().out == "a b\n"
    assert cli.main(["services", "-b", url]) == 0
    assert "echo" in capsys.readouterr().out
    assert cli.main(["worker", "-b", url, "echo", "--program", "cat"]) == cli.EXIT_ERROR_REPLY
    assert "no worker side" in capsys.readouterr().err


def test_event_counter_plugin_object(
    line_plugin: ModuleType, maitred_broker: BrokerStarter
) -> None:
    from maitred_line.events import EventCounter

    counter = EventCounter()
    running = maitred_broker(plugins=[counter], transports=["line"])
    conn = LineSocket(running.endpoint("line"))
    try:
        assert conn.ask(b"HELP").startswith(b"OK")  # the session is open
        assert running.call(lambda: counter.counts["$sys.session.join"]) == 1
    finally:
        conn.close()


def test_line_codec(line_plugin: ModuleType) -> None:
    from maitred_line import codec

    assert codec.parse(b"  call  svc  two  spaces \r") == codec.Command(
        "CALL", "svc", b" two  spaces "
    )
    assert codec.parse(b"SUB a.*") == codec.Command("SUB", "a.*")
    assert codec.parse(b" \t ") is None
    assert codec.ok([b"a", b"b\nc\r"]) == b"OK a b\\nc\\r\n"
    assert codec.ok([]) == codec.ok([b""]) == b"OK\n"
    assert codec.err(504, "late\nreason") == b"ERR 504 late\\nreason\n"
    assert codec.event("t", [b"x"]) == b"EVENT t x\n"
    assert codec.parse_answer(b"ERR 403 no\r\n") == codec.Answer("ERR", 403, "", b"no")
    with pytest.raises(ValueError):
        codec.call("svc", [b"multi\nline"])
    with pytest.raises(codec.LineError, match="names must be UTF-8"):
        codec.parse(b"CALL \xff x")


# -- the system test: `maitred serve` with the plugin, as a subprocess


@pytest.mark.slow
def test_maitred_serve_with_the_installed_line_plugin(
    line_plugin: ModuleType, tmp_path: Path, echo_worker: list[MdpEchoWorker]
) -> None:
    config = tmp_path / "maitred.toml"
    config.write_text(
        "[transports.line]\n"
        'listen = "127.0.0.1:0"\n'
        "[transports.mdp]\n"
        'endpoints = ["tcp://127.0.0.1:0"]\n',
        encoding="utf-8",
    )
    serve = ServeProcess("-c", str(config))  # returns once both transports listen
    conns: list[LineSocket] = []
    try:
        endpoints = {name: serve.endpoint(name) for name in ("line", "mdp")}
        assert endpoints["line"].startswith("line://127.0.0.1:")
        assert endpoints["mdp"].startswith("tcp://127.0.0.1:")

        start_worker(echo_worker, endpoints["mdp"], b"svc")
        client = LineSocket(endpoints["line"])
        conns.append(client)
        # on_no_worker = "wait" (the default): the call waits for the worker's READY
        assert client.ask(b"CALL svc hello") == b"OK hello"
        assert client.ask(b"HELLO there").startswith(b"ERR 400 ")

        subscriber = LineSocket(endpoints["line"])
        conns.append(subscriber)
        assert subscriber.ask(b"SUB room.*") == b"OK"
        assert client.ask(b"PUB room.1 hi all") == b"OK 1"
        assert subscriber.readline() == b"EVENT room.1 hi all"

        [row] = json.loads(client.ask(b"SERVICES")[3:])
        assert row["name"] == "svc" and row["workers"] == 1
    finally:
        for conn in conns:
            conn.close()
        code = serve.stop()
    log = serve.log()
    assert code == 0, f"exit code {code}; stderr:\n{log}"
    assert "Traceback" not in log, log
    assert "maitred stopped" in log
