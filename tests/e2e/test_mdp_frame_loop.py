"""The MDP broker's two frame loops (transports/mdp/frames.py), each over real sockets: the
compiled one (where it was built) and the pure-Python one give the same answers, tell a lost
worker by its connection, count failed sends, and say which is in use. CI builds the compiled
loop; its MAITRED_PURE=1 run covers the pure one with the rest of the MDP tests too."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from maitred.transports.mdp import adapter as mdp_adapter
from maitred.transports.mdp import frames
from tests.e2e.helpers import W02, BrokerThread, RawClient, RawWorker, recv, wait_until

Ctx = zmq.Context[Any]

#: CI installs a C toolchain, so there the compiled loop must have been built (unless forced off)
MUST_BE_BUILT = bool(os.environ.get("CI")) and frames.REASON != "MAITRED_PURE is set"


def need_compiled() -> frames.FrameLoop:
    """The compiled loop; a skip where it was not built (a failure in CI, which builds it)."""
    if frames.LOOP is None:
        if MUST_BE_BUILT:
            pytest.fail(f"the compiled frame loop is missing: {frames.REASON}")
        pytest.skip(f"the compiled frame loop: {frames.REASON}")
    return frames.LOOP


def ready_worker(broker: BrokerThread, ctx: Ctx, kind: str, service: bytes) -> RawWorker:
    """A raw worker of ``service``, known to the router."""
    worker = RawWorker(ctx, broker.endpoint, kind, service)
    worker.ready()
    name = service.decode()
    wait_until(lambda: broker.call(lambda: name in broker.broker.router.services))
    return worker


@pytest.fixture(params=["compiled", "pure"])
def loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The loop the brokers this test starts use."""
    kind: str = request.param
    if kind == "pure":
        monkeypatch.setattr(mdp_adapter, "LOOP", None)
    else:
        need_compiled()
    return kind


def _in_use(broker: BrokerThread) -> int:
    return broker.stats()["mdp.frame_loop.compiled"]


def test_pipelined_bursts_in_every_dialect(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, loop_kind: str
) -> None:
    # batch = 3: a burst is read over several turns (the compiled loop's budget and lone paths)
    broker = make_broker(mdp="batch = 3\nworker_credit_max = 8\n")
    assert _in_use(broker) == (loop_kind == "compiled")
    worker = ready_worker(broker, ctx, "majortomo", b"echo")
    clients = [RawClient(ctx, broker.endpoint, k) for k in ("rfc", "majortomo", "0.1-dealer")]
    bodies: dict[str, list[tuple[bytes, ...]]] = {}
    for n, client in enumerate(clients):
        # multi-frame bodies, empty frames and a large one among them
        bodies[client.kind] = [
            (b"%d-%d" % (n, i), b"", bytes([i]) * (i * 997 % 70_000)) for i in range(40)
        ]
        for body in bodies[client.kind]:
            client.send(b"echo", *body)
    for _ in range(sum(map(len, bodies.values()))):
        addr, body = worker.request()
        worker.final(addr, *body)
    for client in clients:
        got = []
        for _ in bodies[client.kind]:
            final, body = client.recv()
            assert final
            got.append(tuple(body))
        assert sorted(got) == sorted(bodies[client.kind])
    stats = broker.stats()
    assert stats.get("mdp.rejected", 0) == 0
    assert stats.get("mdp.send_failed", 0) == 0


def test_a_closed_worker_connection_is_noticed_by_its_fd(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, loop_kind: str
) -> None:
    # heartbeats far apart: only the connection's fd (read from the READY) can name the worker
    broker = make_broker(mdp="heartbeat_interval = 30.0\nzmtp_heartbeats = false\n")
    worker = ready_worker(broker, ctx, "rfc", b"gone")

    def fds() -> int:
        return len(broker.broker.transports["mdp"]._fds)  # type: ignore[attr-defined]

    wait_until(lambda: broker.call(fds) == 1, what="the worker's fd")
    worker.close()  # no DISCONNECT: the TCP connection just closes
    wait_until(
        lambda: "gone" not in broker.call(lambda: set(broker.broker.router.services)),
        what="the worker dropped",
    )
    assert broker.call(fds) == 0
    assert broker.stats().get("workers.expired", 0) == 0


def test_replies_to_a_client_that_never_reads_are_counted_and_dropped(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, loop_kind: str
) -> None:
    broker = make_broker(mdp="sndhwm = 4\n")
    worker = ready_worker(broker, ctx, "rfc", b"echo")
    lazy = ctx.socket(zmq.DEALER)  # never reads: its own buffers hold almost nothing
    lazy.setsockopt(zmq.LINGER, 0)
    lazy.setsockopt(zmq.RCVHWM, 1)
    lazy.setsockopt(zmq.RCVBUF, 4096)
    lazy.connect(broker.endpoint)
    try:
        reply = b"r" * (64 * 1024)
        deadline = time.monotonic() + 20
        # 1000 replies of 64 KiB at most: the kernel's buffers and the 4 messages of the
        # broker's high-water mark fill long before; each send after that fails with EAGAIN
        for sent in range(1, 1001):
            lazy.send_multipart([b"MDPC02", b"\x01", b"echo", b"q"])
            addr, _ = worker.request()
            worker.final(addr, reply)
            if sent % 20 == 0 and broker.stats().get("mdp.peer_full", 0) >= 10:
                break
            assert time.monotonic() < deadline, sent
        assert broker.stats().get("mdp.peer_full", 0) >= 10
    finally:
        lazy.close(0)
    client = RawClient(ctx, broker.endpoint, "majortomo")  # the others are served as usual
    client.send(b"echo", b"q")
    addr, _ = worker.request()
    worker.final(addr, b"fine")
    assert client.recv() == (True, [b"fine"])


def test_the_frame_loop_in_use_is_counted(make_broker: Callable[..., BrokerThread]) -> None:
    broker = make_broker()
    assert _in_use(broker) == (frames.LOOP is not None)
    assert ("compiled" if frames.LOOP is not None else "pure") == frames.IMPLEMENTATION


# -- the loader ---------------------------------------------------------------------------------


def test_maitred_pure_forces_the_pure_loop() -> None:
    assert frames.load({"MAITRED_PURE": "1"}) == (None, "MAITRED_PURE is set")


def test_a_missing_extension_means_the_pure_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "maitred.transports.mdp._frames", None)
    loop, reason = frames.load({})
    assert loop is None and reason.startswith("not available (")
    assert frames.load({"MAITRED_PURE": "0"})[0] is None


def test_the_extension_binds_to_pyzmqs_own_libzmq() -> None:
    need_compiled()
    found = frames._pyzmq_functions()
    assert set(found) == set(frames.FUNCTIONS) and all(found.values())
    loop, reason = frames.load({"MAITRED_PURE": ""})
    assert loop is frames.LOOP and reason == frames.REASON


# -- the compiled module itself -------------------------------------------------------------------


@pytest.fixture
def compiled() -> frames.FrameLoop:
    return need_compiled()


def test_recv_batch_reads_whole_messages_up_to_the_limit(
    ctx: Ctx, compiled: frames.FrameLoop
) -> None:
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    inproc = ctx.socket(zmq.DEALER)
    inproc.setsockopt(zmq.LINGER, 0)
    router.bind("inproc://frames-test")
    inproc.connect("inproc://frames-test")
    try:
        for i in range(5):
            dealer.send_multipart([b"", b"m%d" % i, b"x" * i])
        inproc.send_multipart([b"in", b"proc"])
        out: list[list[bytes]] = []
        fds: list[int] = []
        assert compiled.recv_batch(router.underlying, 0, out, fds) == 0
        wait_until(lambda: bool(router.poll(0)), what="the messages")
        got = 0
        for _ in range(100):  # bounded: until all six came in (tcp and inproc)
            got += compiled.recv_batch(router.underlying, 2, out, fds)
            if got == 6:
                break
            router.poll(100)
        assert got == 6 and len(out) == 6 and len(fds) == 6
        by_body = {tuple(m[1:]): (m[0], fd) for m, fd in zip(out, fds, strict=True)}
        for i in range(5):
            assert (b"", b"m%d" % i, b"x" * i) in by_body
        tcp_fds = {fd for body, (_, fd) in by_body.items() if body != (b"in", b"proc")}
        assert len(tcp_fds) == 1 and min(tcp_fds) >= 0  # one tcp connection, its fd
        assert by_body[(b"in", b"proc")][1] == -1  # inproc: no fd
        assert compiled.recv_batch(router.underlying, 10, out, fds) == 0  # EAGAIN: nothing

        rid = next(rid for body, (rid, _) in by_body.items() if body[1:2] == (b"m0",))
        # bytes, a memoryview, a bytearray; a tuple message; one to a routing id nobody has
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        failed = compiled.send_batch(
            router.underlying,
            [[rid, b"a", memoryview(b"bc")], [b"nobody", b"x"], (rid, bytearray(b"d"))],  # type: ignore[list-item]
        )
        assert failed == [(b"nobody", zmq.EHOSTUNREACH)]
        assert compiled.send_batch(router.underlying, [[rid, b"e"]]) is None
        assert compiled.send(router.underlying, rid, (b"f", b"g")) == 0
        assert compiled.send(router.underlying, b"nobody", [b"h"]) == zmq.EHOSTUNREACH
        assert recv(dealer) == [b"a", b"bc"]
        assert recv(dealer) == [b"d"]
        assert recv(dealer) == [b"e"]
        assert recv(dealer) == [b"f", b"g"]
    finally:
        for s in (dealer, inproc, router):
            s.close(0)


def test_recv_batch_raises_libzmqs_error(ctx: Ctx, compiled: frames.FrameLoop) -> None:
    req = ctx.socket(zmq.REQ)  # a REQ socket must send first: receiving is EFSM
    req.setsockopt(zmq.LINGER, 0)
    try:
        with pytest.raises(zmq.ZMQError) as caught:
            compiled.recv_batch(req.underlying, 4, [], [])
        assert caught.value.errno == zmq.EFSM
    finally:
        req.close(0)


class _SpyLoop:
    """The compiled loop, each call noted: ("r", [(header, command) of each message read]) and
    ("s", [the header of each message sent])."""

    def __init__(self, real: frames.FrameLoop) -> None:
        self.real = real
        self.calls: list[tuple[str, list[tuple[bytes, bytes]]]] = []

    def recv_batch(self, socket: int, limit: int, out: list[list[bytes]], fds: list[int]) -> int:
        n = self.real.recv_batch(socket, limit, out, fds)
        if n:
            self.calls.append(("r", [(m[2], m[3]) for m in out[len(out) - n :]]))
        return n

    def send_batch(self, socket: int, queue: Any) -> Any:
        self.calls.append(("s", [(m[2], m[3]) for m in queue]))
        return self.real.send_batch(socket, queue)

    def send(self, socket: int, rid: bytes, frames_: Any) -> int:
        return self.real.send(socket, rid, frames_)


def test_strict_worker_gets_its_next_request_before_the_refill_is_read(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strict MDP with the compiled loop: a turn after a short one reads one message and sends
    what it produced before it reads on, so a worker's reply that came with a client's refill
    gets the worker its next request first (its round trip is what strict MDP waits on)."""
    spy = _SpyLoop(need_compiled())
    monkeypatch.setattr(mdp_adapter, "LOOP", spy)
    broker = make_broker(mdp="worker_credit_max = 1\n")
    assert _in_use(broker) == 1
    worker = ready_worker(broker, ctx, "majortomo", b"echo")
    client = RawClient(ctx, broker.endpoint, "majortomo")
    total, in_flight = 200, 8
    for sent in range(in_flight):
        client.send(b"echo", b"%d" % sent)
    sent = in_flight
    start = end = 0
    for answered in range(total):  # bounded: each step answers one request or fails in 3 s
        if answered == 20:
            start = len(spy.calls)  # the first burst of requests is behind
        if answered == total - in_flight - 2:
            end = len(spy.calls)  # from here on the queue runs dry
        addr, body = worker.request()
        worker.final(addr, *body)
        if sent < total:  # the refill goes with the reply, before the reply is read
            client.send(b"echo", b"%d" % sent)
            sent += 1
        final, got = client.recv()
        assert final and got == [b"%d" % answered], got
    calls = spy.calls[start:end]
    final = (W02, b"\x04")  # a worker's FINAL
    reads = [(i, msgs) for i, (kind, msgs) in enumerate(calls) if kind == "r" and final in msgs]
    assert len(reads) >= total // 2  # the spy saw the worker's replies
    late = [
        msgs
        for i, msgs in reads
        if msgs[-1] != final  # something was read after the reply before the sends
        or i + 1 >= len(calls)
        or calls[i + 1][0] != "s"
        or (W02, b"\x02") not in calls[i + 1][1]  # the next request, to the worker
    ]
    assert not late, (len(late), late[:5])
