"""MDP over CURVE, over real sockets: a CURVE broker serves a client and a worker written with
plain pyzmq (no maitred code on their side), refuses an unknown key during the handshake (no
session, counted, ``$sys.auth.denied``), applies the ``[access]`` rules to each key's identity,
ignores a plain client on its CURVE endpoint, and keeps an ipc:// endpoint plain alongside."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket as pysocket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from maitred.core.access import Identity
from maitred.core.errors import MaitredError
from maitred.core.local import LocalClient
from maitred.transports.mdp.client import AsyncClient, Client, Worker
from maitred.transports.mdp.curve import write_certificate
from tests.e2e.helpers import BrokerThread, CurveKeys, RawClient, RawWorker, nothing, wait_until

OPS = Identity("ops", frozenset({"ops"}))

ACCESS = """
[access]
default = "deny"

[[access.rules]]
who = ["role:ops"]
actions = ["call", "serve", "publish", "subscribe", "observe", "manage"]

[[access.rules]]
who = ["role:workers"]
actions = ["serve"]
names = ["billing.>"]

[[access.rules]]
who = ["role:apps"]
actions = ["call"]
names = ["billing.>"]

[[access.rules]]
who = ["anonymous"]
actions = ["call", "serve"]
names = ["open.>"]
"""


class Keys:
    """The broker's certificate (written by maitred keygen's code) and two client key pairs
    made with plain pyzmq: ``worker`` (role workers) and ``app`` (role apps)."""

    def __init__(self, directory: Path) -> None:
        _, self.broker_secret_file, broker_public = write_certificate(directory, "broker")
        self.broker_public = broker_public.encode()
        self.worker = zmq.curve_keypair()
        self.app = zmq.curve_keypair()

    def table(self) -> str:
        return f"""
[[transports.mdp.keys]]
public_key = "{self.worker[0].decode()}"
identity = "billing-worker"
roles = ["workers"]

[[transports.mdp.keys]]
public_key = "{self.app[0].decode()}"
identity = "billing-app"
roles = ["apps"]
"""

    def of(self, pair: tuple[bytes, bytes]) -> CurveKeys:
        return (self.broker_public, pair[0], pair[1])


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


class Curve:
    """A CURVE broker (tcp:// with CURVE, an ipc:// endpoint plain) and an in-process observer of
    ``$sys.auth.denied``."""

    def __init__(self, keys: Keys, ipc: str) -> None:
        self.keys = keys
        self.toml = (
            ACCESS
            + f"""
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0", "ipc://{ipc}"]
curve_secret_key_file = "{keys.broker_secret_file}"
"""
            + keys.table()
        )
        self.broker = BrokerThread(self.toml)
        self.tcp, self.ipc = self.broker.endpoints["mdp"]

        async def observe() -> LocalClient:
            observer = LocalClient(self.broker.broker, OPS, label="observer")
            observer.subscribe("$sys.auth.denied")
            return observer

        self.observer: LocalClient = self.broker.run(observe())

    def denials(self) -> list[dict[str, Any]]:
        def drain() -> list[dict[str, Any]]:
            out = []
            while not self.observer.events.empty():
                _, body, _ = self.observer.events.get_nowait()
                out.append(json.loads(b"".join(body)))
            return out

        return self.broker.call(drain)

    def sessions(self) -> int:
        return self.broker.call(lambda: len(self.broker.broker.router.sessions))

    def identities(self) -> set[str]:
        return self.broker.call(
            lambda: {s.identity.name for s in self.broker.broker.router.sessions.values()}
        )


@pytest.fixture
def curve(keys: Keys, tmp_path: Path) -> Iterator[Curve]:
    c = Curve(keys, str(tmp_path / "mdp.sock"))
    yield c
    c.broker.stop(drain_timeout=0)


def billing_worker(curve: Curve, ctx: zmq.Context[Any]) -> RawWorker:
    """A CURVE worker of ``billing.pay`` (the worker's key), registered."""
    worker = RawWorker(ctx, curve.tcp, "rfc", b"billing.pay", curve.keys.of(curve.keys.worker))
    worker.ready()
    return worker


def served(curve: Curve, ctx: zmq.Context[Any], worker: RawWorker, body: bytes) -> None:
    """A new CURVE client is served (the broker is not disturbed)."""
    client = RawClient(ctx, curve.tcp, "rfc", curve.keys.of(curve.keys.app))
    client.send(b"billing.pay", body)
    addr, got = worker.request()
    worker.final(addr, *got)
    assert client.recv() == (True, [body])


def test_curve_client_and_worker_in_plain_pyzmq(curve: Curve, ctx: zmq.Context[Any]) -> None:
    k = curve.keys
    worker = RawWorker(ctx, curve.tcp, "rfc", b"billing.pay", k.of(k.worker))
    worker.ready()
    client = RawClient(ctx, curve.tcp, "rfc", k.of(k.app))
    client.send(b"billing.pay", b"42")
    addr, body = worker.request()
    assert body == [b"42"]
    worker.final(addr, b"paid")
    assert client.recv() == (True, [b"paid"])
    # each peer is the identity of its key: the worker's session and the clients' session
    assert {"billing-worker", "billing-app"} <= curve.identities()
    assert curve.denials() == []
    # with CURVE on, each message's User-Id is read: the pure-Python frame loop (frames.py)
    assert curve.broker.stats()["mdp.frame_loop.compiled"] == 0


def test_unknown_key_gets_no_session_and_is_counted_and_published(
    curve: Curve, ctx: zmq.Context[Any]
) -> None:
    k = curve.keys
    before = curve.sessions()
    stranger = zmq.curve_keypair()
    client = RawClient(ctx, curve.tcp, "rfc", k.of(stranger))
    client.send(b"billing.pay", b"1")
    wait_until(lambda: curve.broker.stats().get("denied.authenticate", 0) >= 1, 5, "a denial")
    assert nothing(client.sock)
    stats = curve.broker.stats()
    assert stats["mdp.rejected.unknown CURVE key"] >= 1
    assert curve.sessions() == before
    denied = curve.denials()
    assert denied and denied[0]["action"] == "authenticate"
    # the address it came from, the key it presented (public: no secret is published)
    assert denied[0]["transport"] == "mdp" and denied[0]["session"] == ""
    assert denied[0]["identity"] == stranger[0].decode()
    assert denied[0]["name"] == "127.0.0.1" and denied[0]["reason"] == "unknown CURVE key"
    assert stats["denied.authenticate.mdp"] >= 1
    # a worker with an unknown key is refused the same way: it never registers
    worker = RawWorker(ctx, curve.tcp, "rfc", b"billing.pay", k.of(stranger))
    worker.ready()
    wait_until(lambda: curve.broker.stats().get("denied.authenticate", 0) >= 2, 5, "a denial")
    assert curve.sessions() == before


def test_access_rules_apply_to_each_keys_identity(curve: Curve, ctx: zmq.Context[Any]) -> None:
    k = curve.keys
    # the app's key may call billing.> but not serve it: its READY is refused in MDP's form
    impostor = RawWorker(ctx, curve.tcp, "rfc", b"billing.pay", k.of(k.app))
    impostor.ready()
    impostor.expect_disconnect()
    # the worker's key may serve but not call: the broker's error reply
    worker = RawWorker(ctx, curve.tcp, "rfc", b"billing.pay", k.of(k.worker))
    worker.ready()
    caller = RawClient(ctx, curve.tcp, "rfc", k.of(k.worker))
    assert caller.call(b"billing.pay", b"x")[0] == b"403"
    denied = {(d["identity"], d["action"], d["name"]) for d in curve.denials()}
    assert ("billing-app", "serve", "billing.pay") in denied
    assert ("billing-worker", "call", "billing.pay") in denied
    stats = curve.broker.stats()
    assert stats["denied.serve"] >= 1 and stats["denied.call"] >= 1
    # and the app's key still calls what it may
    app = RawClient(ctx, curve.tcp, "rfc", k.of(k.app))
    app.send(b"billing.pay", b"ok")
    addr, body = worker.request()
    assert body == [b"ok"]  # the first request it sees: the denied call never reached it
    worker.final(addr, b"done")
    assert app.recv() == (True, [b"done"])


def test_plain_client_on_the_curve_endpoint_gets_nothing_and_disturbs_no_one(
    curve: Curve, ctx: zmq.Context[Any]
) -> None:
    k = curve.keys
    worker = RawWorker(ctx, curve.tcp, "rfc", b"billing.pay", k.of(k.worker))
    worker.ready()
    plain = RawClient(ctx, curve.tcp, "rfc")
    plain.send(b"billing.pay", b"sneaky")
    app = RawClient(ctx, curve.tcp, "rfc", k.of(k.app))
    for i in range(3):
        app.send(b"billing.pay", b"%d" % i)
        addr, body = worker.request()
        assert body == [b"%d" % i]  # never the plain client's request
        worker.final(addr, body[0])
        assert app.recv() == (True, [b"%d" % i])
    assert nothing(plain.sock)
    # its failed handshakes are counted and published (no session, no key to name: the endpoint)
    wait_until(
        lambda: curve.broker.stats().get("mdp.rejected.failed CURVE handshake", 0) >= 1,
        5,
        "counted",
    )
    denied = curve.denials()
    assert denied and {d["reason"] for d in denied} == {"failed CURVE handshake"}
    assert denied[0]["name"] == curve.tcp and denied[0]["action"] == "authenticate"
    assert denied[0]["identity"] == ""


@pytest.mark.parametrize(
    ("garbage", "counted"),
    [
        (b"", False),  # a stalled handshake: libzmq's handshake timeout (30 s) bounds it
        (b"\x04\x05\x05HELLO", True),
        (b"\x04\x40\x05HELLO" + bytes(70), True),
        (b"\xff" * 300, False),  # a frame larger than the limit: the connection is dropped
    ],
    ids=["greeting-only", "truncated-hello", "zero-hello", "junk"],
)
def test_garbage_curve_handshakes_are_refused_and_bounded(
    curve: Curve, ctx: zmq.Context[Any], garbage: bytes, counted: bool
) -> None:
    """A ZMTP 3.0 greeting asking for CURVE, then a truncated, zeroed or garbage HELLO, or
    nothing: no session; a bad HELLO is counted; the broker closes the connection (the stalled
    one is closed by us); a CURVE client is served meanwhile."""
    before = curve.sessions()
    host, port = curve.tcp.removeprefix("tcp://").rsplit(":", 1)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\0") + bytes(32)
    closed = False
    with pysocket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(greeting + garbage)
        raw.settimeout(1 if not garbage else 5)
        with contextlib.suppress(TimeoutError):
            while raw.recv(4096):  # the broker's greeting, then the close
                pass
            closed = True
    assert closed == bool(garbage)
    if counted:
        wait_until(
            lambda: curve.broker.stats().get("mdp.rejected.failed CURVE handshake", 0) >= 1,
            5,
            "counted",
        )
        assert {d["reason"] for d in curve.denials()} == {"failed CURVE handshake"}
    served(curve, ctx, billing_worker(curve, ctx), b"fine")
    # the worker's session and a clients' session per identity heard from, nothing for the
    # garbage
    assert curve.sessions() == before + 3
    assert curve.identities() == {"anonymous", "ops", "billing-worker", "billing-app"}


def test_ipc_endpoint_stays_plain_beside_curve(curve: Curve, ctx: zmq.Context[Any]) -> None:
    k = curve.keys
    # a plain worker and client on ipc://: the [transports.mdp] identity (anonymous)
    worker = RawWorker(ctx, curve.ipc, "rfc", b"open.echo")
    worker.ready()
    client = RawClient(ctx, curve.ipc, "rfc")
    client.send(b"open.echo", b"hi")
    addr, body = worker.request()
    worker.final(addr, *body)
    assert client.recv() == (True, [b"hi"])
    # anonymous may not call billing.>
    assert client.call(b"billing.pay", b"x")[0] == b"403"
    # a CURVE client on tcp:// beside it is its own identity (apps may not call open.>)
    app = RawClient(ctx, curve.tcp, "rfc", k.of(k.app))
    assert app.call(b"open.echo", b"x")[0] == b"403"


def test_package_clients_and_worker_speak_curve(curve: Curve, keys: Keys, tmp_path: Path) -> None:
    # key files as maitred keygen writes them; the server key given as Z85 and as a file
    _, worker_file, worker_pub = write_certificate(tmp_path, "w")
    _, app_file, app_pub = write_certificate(tmp_path, "a")
    broker_key_file = str(tmp_path / "broker.key")
    toml = f"""
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
curve_secret_key_file = "{keys.broker_secret_file}"

[[transports.mdp.keys]]
public_key = "{worker_pub}"
identity = "w"
roles = ["workers"]

[[transports.mdp.keys]]
public_key = "{app_pub}"
identity = "a"
roles = ["apps"]
"""
    broker = BrokerThread(ACCESS + toml)
    try:
        endpoint = broker.endpoint
        worker = Worker(
            endpoint,
            "billing.echo",
            lambda body: body,
            curve_server_key=keys.broker_public.decode(),
            curve_key_file=str(worker_file),
        )
        import threading

        thread = threading.Thread(target=worker.run, kwargs={"max_requests": 2}, daemon=True)
        thread.start()
        with Client(
            endpoint, curve_server_key=broker_key_file, curve_key_file=str(app_file), timeout=5
        ) as client:
            assert client.request("billing.echo", b"sync") == [b"sync"]

        async def call() -> list[bytes]:
            aclient = AsyncClient(
                endpoint, curve_server_key=keys.broker_public, curve_key_file=str(app_file)
            )
            try:
                return await aclient.request("billing.echo", b"async", timeout=5)
            finally:
                aclient.close()

        assert asyncio.run(call()) == [b"async"]
        thread.join(5)
        worker.close()
    finally:
        broker.stop(drain_timeout=0)


def test_client_key_options_are_checked_before_connecting(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a Z85 public key"):
        Client("tcp://127.0.0.1:1", curve_server_key="short")
    with pytest.raises(ValueError, match="needs the server's key"):
        Client("tcp://127.0.0.1:1", curve_key_file=str(keys.broker_secret_file))
    loose = tmp_path / "loose.key_secret"
    loose.write_text(keys.broker_secret_file.read_text())
    loose.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        Client("tcp://127.0.0.1:1", curve_server_key=keys.broker_public, curve_key_file=str(loose))


def test_garbage_zap_requests_do_not_stop_the_handler(curve: Curve, ctx: zmq.Context[Any]) -> None:
    """Requests as only code in the broker's process could send them (the ZAP endpoint is
    inproc): the wrong version, truncated, garbage. Each is answered 500 or dropped, counted,
    and CURVE peers are served as before."""
    transport: Any = curve.broker.broker.transports["mdp"]
    rogue: zmq.Socket[Any] = transport.context.socket(zmq.DEALER)
    try:
        rogue.connect("inproc://zeromq.zap.01")
        rogue.send_multipart([b"", b"2.0", b"1", b"", b"", b"", b"CURVE", bytes(32)])
        reply = rogue.recv_multipart() if rogue.poll(3000) else []
        assert reply[:4] == [b"", b"1.0", b"1", b"500"]
        for junk in ([b"", b"1.0"], [b"\xff" * 100], [b"", b"1.0", b"2", b"d", b"a", b"i", b"X"]):
            rogue.send_multipart(junk)
        wait_until(lambda: curve.broker.stats().get("mdp.zap.malformed", 0) >= 4, 5, "counted")
    finally:
        rogue.close(0)
    k = curve.keys
    worker = RawWorker(ctx, curve.tcp, "rfc", b"billing.pay", k.of(k.worker))
    worker.ready()
    client = RawClient(ctx, curve.tcp, "rfc", k.of(k.app))
    client.send(b"billing.pay", b"still")
    addr, body = worker.request()
    worker.final(addr, *body)
    assert client.recv() == (True, [b"still"])


def test_a_secret_key_readable_by_others_is_refused_at_start(keys: Keys) -> None:
    keys.broker_secret_file.chmod(0o644)
    toml = f"""
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
curve_secret_key_file = "{keys.broker_secret_file}"
"""
    with pytest.raises(MaitredError, match=f"chmod 600 {keys.broker_secret_file}"):
        BrokerThread(toml)


def test_reload_applies_the_key_table_to_new_handshakes(
    curve: Curve, ctx: zmq.Context[Any]
) -> None:
    """A key added by a reload is accepted from then on and one taken out is refused, while a
    connection made with the removed key keeps its identity; nothing else changes."""
    from maitred.core.config import parse_config

    k = curve.keys
    worker = RawWorker(ctx, curve.tcp, "rfc", b"billing.pay", k.of(k.worker))
    worker.ready()
    app = RawClient(ctx, curve.tcp, "rfc", k.of(k.app))  # connected before the reload
    app.send(b"billing.pay", b"1")
    addr, _ = worker.request()
    worker.final(addr, b"ok")
    assert app.recv() == (True, [b"ok"])
    newcomer = zmq.curve_keypair()
    # the same config, the key table changed: the app's key replaced by the newcomer's
    without_app = curve.toml.replace(k.app[0].decode(), newcomer[0].decode())
    report = curve.broker.call(lambda: curve.broker.broker.reload(parse_config(without_app)))
    assert "transports.mdp.keys" in report["applied"], report
    assert not [u for u in report["unchanged"] if u.startswith("transports.mdp")], report
    # the new key is in: its identity (the entry that held the app's key) may call billing.>
    late = RawClient(ctx, curve.tcp, "rfc", k.of(newcomer))
    late.send(b"billing.pay", b"2")
    addr, body = worker.request()
    assert body == [b"2"]
    worker.final(addr, b"ok2")
    assert late.recv() == (True, [b"ok2"])
    # the app's key is out for new handshakes
    denied = curve.broker.stats().get("denied.authenticate", 0)
    again = RawClient(ctx, curve.tcp, "rfc", k.of(k.app))
    again.send(b"billing.pay", b"3")
    wait_until(lambda: curve.broker.stats().get("denied.authenticate", 0) > denied, 5, "a refusal")
    assert nothing(again.sock)
    # the connection the app made before the reload keeps its identity and is served
    app.send(b"billing.pay", b"4")
    addr, body = worker.request()
    assert body == [b"4"]
    worker.final(addr, b"ok4")
    assert app.recv() == (True, [b"ok4"])


def test_a_reconnect_storming_bad_peer_is_published_a_bounded_number_of_times(
    curve: Curve, ctx: zmq.Context[Any]
) -> None:
    """A CURVE client that has the wrong server key fails the handshake and libzmq retries it
    at once, again and again (every 100 ms by default; 5 ms here): each failure is counted,
    one event is published (per address and reason every 10 s; the monitor names the
    endpoint, not the peer), and a CURVE client beside it is served meanwhile."""
    k = curve.keys
    stormer = ctx.socket(zmq.DEALER)
    stormer.linger = 0
    stormer.reconnect_ivl = 5
    stormer.curve_serverkey = zmq.curve_keypair()[0]  # not the broker's
    stormer.curve_publickey, stormer.curve_secretkey = k.app  # a key the broker knows
    stormer.connect(curve.tcp)
    try:
        wait_until(
            lambda: curve.broker.stats().get("denied.authenticate.mdp", 0) >= 20,
            10,
            "20 failed handshakes",
        )
        served(curve, ctx, billing_worker(curve, ctx), b"still here")
    finally:
        stormer.close(0)
    stats = curve.broker.stats()
    denied = curve.denials()
    assert [(d["name"], d["reason"], d["suppressed"]) for d in denied] == [
        (curve.tcp, "failed CURVE handshake", 0)
    ]
    failed = stats["denied.authenticate.mdp"]
    assert failed >= 20 and stats["denied.authenticate.suppressed"] == failed - 1
    assert stats["mdp.rejected.failed CURVE handshake"] == failed


# -- replayed handshakes, and garbage after a valid one ------------------------------------------


class Relay:
    """A TCP relay for one connection, between a CURVE client and the broker: forwards both
    ways, keeps what the client sent (``sent``), and can put bytes of its own into the stream
    to the broker (:meth:`inject`, as a man in the middle would)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = pysocket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent = bytearray()
        self.closed_by_broker = threading.Event()
        self._up: pysocket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._listener.settimeout(10)
        down, _ = self._listener.accept()
        with down, pysocket.create_connection(self._upstream, timeout=10) as up:
            self._up = up
            while not self._stop.is_set():
                readable, _, _ = select.select([down, up], [], [], 0.05)
                for sock in readable:
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        if sock is up:
                            self.closed_by_broker.set()
                        return
                    if sock is down:
                        self.sent += data
                        with self._lock:
                            up.sendall(data)
                    else:
                        down.sendall(data)

    def inject(self, data: bytes) -> None:
        assert self._up is not None
        with self._lock:
            self._up.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def zmtp_commands(stream: bytes) -> list[tuple[bytes, int]]:
    """The ZMTP 3 commands after the 64-byte greeting in ``stream``: (name, where it ends)."""
    out, pos = [], 64
    while pos < len(stream):
        flags = stream[pos]
        if flags & 0x02:
            size, head = int.from_bytes(stream[pos + 1 : pos + 9], "big"), 9
        else:
            size, head = stream[pos + 1], 2
        body = stream[pos + head : pos + head + size]
        pos += head + size
        out.append((body[1 : 1 + body[0]] if flags & 0x04 else b"", pos))
    return out


@contextlib.contextmanager
def relayed_client(
    curve: Curve, ctx: zmq.Context[Any]
) -> Iterator[tuple[Relay, RawClient, RawWorker]]:
    """A worker, and the app's CURVE client connected through a relay that has seen it complete
    a handshake and a call."""
    k = curve.keys
    worker = billing_worker(curve, ctx)
    relay = Relay(curve.tcp)
    try:
        app = RawClient(ctx, relay.endpoint, "rfc", k.of(k.app))
        app.send(b"billing.pay", b"through the relay")
        addr, body = worker.request()
        worker.final(addr, *body)
        assert app.recv() == (True, [b"through the relay"])
        yield relay, app, worker
    finally:
        relay.close()


def test_a_replayed_curve_handshake_is_refused(curve: Curve, ctx: zmq.Context[Any]) -> None:
    """A real client's greeting, HELLO and INITIATE, captured on the wire and sent again on a
    new connection: the broker's WELCOME carries a new cookie, so the old INITIATE does not
    open: the handshake fails before the key is looked at (no ZAP request, no session),
    counted and published, and the broker closes the connection; every other peer is served."""
    with relayed_client(curve, ctx) as (relay, app, worker):
        commands = zmtp_commands(bytes(relay.sent))
        names = [name for name, _ in commands]
        assert names[:2] == [b"HELLO", b"INITIATE"], names
        handshake = bytes(relay.sent[: commands[1][1]])
        before = curve.sessions()
        stats = curve.broker.stats()
        asked = stats["mdp.zap.curve"]
        failed = stats.get("mdp.rejected.failed CURVE handshake", 0)
        curve.denials()
        host, port = curve.tcp.removeprefix("tcp://").rsplit(":", 1)
        for replay in (handshake, bytes(relay.sent)):  # the handshake; with the request after it
            with pysocket.create_connection((host, int(port)), timeout=5) as raw:
                raw.sendall(replay)
                received = b""
                while chunk := raw.recv(4096):  # (the greeting, WELCOME), then the close
                    received += chunk
            assert b"\x05READY" not in received
        wait_until(
            lambda: (
                curve.broker.stats().get("mdp.rejected.failed CURVE handshake", 0) >= failed + 2
            ),
            5,
            "both replays counted",
        )
        assert curve.broker.stats()["mdp.zap.curve"] == asked  # the ZAP handler was not asked
        assert curve.sessions() == before
        assert [(d["reason"], d["name"]) for d in curve.denials()] == [
            ("failed CURVE handshake", curve.tcp)
        ]
        # the client the handshake was taken from, and a new one, are served as before
        app.send(b"billing.pay", b"again")
        addr, body = worker.request()
        worker.final(addr, *body)
        assert app.recv() == (True, [b"again"])
        served(curve, ctx, worker, b"new")


@pytest.mark.parametrize(
    ("garbage", "counted", "closed"),
    [
        # a frame longer than max_message_size: libzmq drops the connection at once and says
        # only "disconnected" (as for any peer that goes away): not counted
        (b"\xff" * 64, False, True),
        # MESSAGE commands whose box does not open (an old nonce; a forged one): libzmq
        # reports a failed handshake (counted) and reads nothing more from that connection,
        # but leaves it open (libzmq 4.3.5) until the peer closes it: nothing it sends is
        # read, its own heartbeats time out
        (b"\x04\x30\x07MESSAGE" + bytes(40), True, False),
        (b"\x04\x30\x07MESSAGE" + b"\xff" * 8 + bytes(32), True, False),
        (b"\x00\x05hello", True, True),  # a plain frame on a CURVE connection
    ],
    ids=["oversized-frame", "replayed-nonce", "forged-box", "plain-frame"],
)
def test_garbage_after_a_valid_handshake_is_refused_and_disturbs_no_one(
    curve: Curve,
    ctx: zmq.Context[Any],
    garbage: bytes,
    counted: bool,
    closed: bool,
) -> None:
    """Bytes a man in the middle puts into an established CURVE connection: never delivered,
    no session opened, every other peer served; counted when libzmq reports it, and the
    connection closed when libzmq closes it (see the cases)."""
    with relayed_client(curve, ctx) as (relay, app, worker):
        before = curve.sessions()
        failed = curve.broker.stats().get("mdp.rejected.failed CURVE handshake", 0)
        relay.inject(garbage)
        if closed:
            assert relay.closed_by_broker.wait(5), "the broker kept the connection"
        if counted:
            wait_until(
                lambda: curve.broker.stats().get("mdp.rejected.failed CURVE handshake", 0) > failed,
                5,
                "counted",
            )
        app.send(b"billing.pay", b"after the garbage")  # not read any more
        served(curve, ctx, worker, b"unaffected")  # the first request the worker sees
        assert nothing(worker.sock) and nothing(app.sock)
        assert curve.sessions() == before
