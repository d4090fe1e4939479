"""Memory bounds over real sockets: service names, queue bytes, the broker's ``max_memory``,
the number of services, and peers that stop reading (MDP clients, WebSocket subscribers, SSE
callers). Every flood is bounded in count; the waits are on broker state, with timeouts."""

from __future__ import annotations

import json
import socket as pysocket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import zmq
from websockets.sync.client import ClientConnection, connect

from maitred.core.access import ANONYMOUS
from maitred.core.errors import MaitredError
from maitred.core.routing.model import Body, Headers, ReplyKind, Request, Worker
from maitred.transports.mdp import adapter as mdp_adapter
from tests.e2e.helpers import BrokerThread, RawClient, RawWorker, wait_until
from tests.e2e.http_helpers import RawHttp, endpoint_of, http_toml

Ctx = zmq.Context[Any]
KIB = 1024
MIB = 1024 * 1024

WS = """
[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
"""


def held(broker: BrokerThread) -> int:
    return broker.call(lambda: broker.broker.router.held)


def error_reply(client: RawClient, timeout: float = 3.0) -> tuple[int, str]:
    final, body = client.recv(timeout)
    assert final and len(body) == 2, body
    return int(body[0]), body[1].decode()


class EventSink:
    """A router session of the test's own (through the router's public API) that records the
    ``$sys.`` events it is sent."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def deliver_request(self, worker: Worker, request: Request) -> None:
        return None

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        return None

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        return None

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        self.events.append((topic, json.loads(body[0])))

    def worker_removed(self, worker: Worker, reason: str) -> None:
        return None

    def topics(self) -> list[str]:
        return [t for t, _ in self.events]


def watch_sys(broker: BrokerThread, pattern: str) -> EventSink:
    sink = EventSink()

    def subscribe() -> None:
        router = broker.broker.router
        session = router.open_session("test", sink, ANONYMOUS, 0.0, "test:sys", quiet=True)
        router.subscribe(session, pattern)

    broker.call(subscribe)
    return sink


# -- MDP: names, queue bytes, max_memory, services ---------------------------------------------


def test_mdp_long_service_names_are_refused_and_nothing_is_kept(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker()
    client = RawClient(ctx, broker.endpoint, "rfc")
    decode = getattr(mdp_adapter, "_decode_name", None)
    cached = decode.cache_info().currsize if decode is not None else 0
    for i in range(300):
        name = b"%04d" % i + b"n" * (255 + 1024 - 4)  # 1 KiB over the limit, all distinct
        client.send(name, b"body")
        code, reason = error_reply(client)
        assert code == 400 and "longer than 255 bytes" in reason
    router = broker.broker.router
    assert broker.call(lambda: len(router.services)) == 0
    assert held(broker) == 0
    assert decode is not None
    assert decode.cache_info().currsize == cached  # never decoded nor cached
    assert broker.stats()["mdp.rejected.service name too long"] == 300
    # a name of exactly 255 bytes is a name like any other
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"s" * 255)
    worker.ready()
    client.send(b"s" * 255, b"hi")
    addr, _ = worker.request()
    worker.final(addr, b"ok")
    assert client.recv() == (True, [b"ok"])


def test_mdp_ready_with_a_long_name_is_disconnected(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker()
    worker = RawWorker(ctx, broker.endpoint, "majortomo", b"w" * 256)
    worker.ready()
    worker.expect_disconnect()
    assert broker.call(lambda: len(broker.broker.router.services)) == 0


def test_mdp_max_queue_bytes_refuses_the_second_mib(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker("[services.default]\nmax_queue_bytes = 1048576\n")
    client = RawClient(ctx, broker.endpoint, "rfc")
    body = b"x" * (128 * KIB)
    for _ in range(16):  # 2 MiB for a service with no worker
        client.send(b"nobody", body)
    refused = [error_reply(client) for _ in range(9)]
    assert {code for code, _ in refused} == {429}
    assert "max_queue_bytes" in refused[0][1]
    service = broker.call(lambda: broker.broker.router.services["nobody"])
    assert broker.call(lambda: (service.queued, service.queued_bytes)) == (7, 7 * (128 * KIB + 6))
    assert held(broker) == 7 * (128 * KIB + 6) <= MIB


def test_mdp_max_memory_answers_503_and_publishes_one_overload_episode(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker("[broker]\nmax_memory = 2097152\n")
    events = watch_sys(broker, "$sys.broker.*")
    client = RawClient(ctx, broker.endpoint, "rfc")
    body = b"x" * (128 * KIB)
    for i in range(24):  # 3 MiB over two services with no worker
        client.send(b"a" if i % 2 else b"b", body)
    refused = [error_reply(client) for _ in range(24 - 15)]
    assert {code for code, _ in refused} == {503}
    assert "overloaded" in refused[0][1]
    assert held(broker) <= 2 * MIB
    assert events.topics() == ["$sys.broker.overload"]
    assert events.events[0][1]["max_memory"] == str(2 * MIB)
    # a worker takes requests: the bytes held fall under 90 % and the episode ends
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"a")
    worker.ready()
    addr, _ = worker.request()
    wait_until(lambda: "$sys.broker.recovered" in broker.call(events.topics), what="recovered")
    assert broker.call(events.topics).count("$sys.broker.overload") == 1
    worker.final(addr, b"done")
    assert client.recv() == (True, [b"done"])
    assert broker.stats()["broker.overload_episodes"] == 1


def test_mdp_max_services(make_broker: Callable[..., BrokerThread], ctx: Ctx) -> None:
    broker = make_broker("[broker]\nmax_services = 5\n")
    client = RawClient(ctx, broker.endpoint, "rfc")
    for i in range(8):
        client.send(b"svc-%d" % i, b"x")
    refused = [error_reply(client) for _ in range(3)]
    assert {code for code, _ in refused} == {429}
    assert "too many services" in refused[0][1]
    assert broker.call(lambda: sorted(broker.broker.router.services)) == [
        f"svc-{i}" for i in range(5)
    ]
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"another")
    worker.ready()
    worker.expect_disconnect()
    assert broker.stats()["mdp.ready_refused.queue_full"] == 1


def test_mdp_client_that_never_reads_loses_replies_not_memory(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker()
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"echo")
    worker.ready()
    wait_until(lambda: broker.call(lambda: "echo" in broker.broker.router.services))
    # a client that never reads: its own buffers hold almost nothing
    lazy = ctx.socket(zmq.DEALER)
    lazy.setsockopt(zmq.LINGER, 0)
    lazy.setsockopt(zmq.RCVHWM, 1)
    lazy.setsockopt(zmq.RCVBUF, 4096)
    lazy.connect(broker.endpoint)
    try:
        reply = b"r" * (16 * KIB)
        sent = 0
        deadline = time.monotonic() + 30
        # 3000 replies of 16 KiB (47 MiB) at most: the broker's high-water mark (1000 messages)
        # is reached long before
        while sent < 3000 and time.monotonic() < deadline:
            lazy.send_multipart([b"MDPC02", b"\x01", b"echo", b"q"])
            addr, _ = worker.request()
            worker.final(addr, reply)
            sent += 1
            if sent % 100 == 0 and broker.stats().get("mdp.peer_full", 0) >= 100:
                break
        assert broker.stats().get("mdp.peer_full", 0) >= 100, (sent, broker.stats())
    finally:
        lazy.close(0)
    # other clients are served as usual
    client = RawClient(ctx, broker.endpoint, "majortomo")
    client.send(b"echo", b"q")
    addr, _ = worker.request()
    worker.final(addr, b"fine")
    assert client.recv() == (True, [b"fine"])


def test_http_long_service_name_is_refused_with_400(
    make_broker: Callable[..., BrokerThread],
) -> None:
    broker = make_broker(http_toml(["127.0.0.1:0"], "switch = false\nadmin = false"))
    caller = RawHttp(endpoint_of(broker, "http://"))
    caller.send("POST", "/v1/services/" + "n" * 300, b"x", {"X-Maitred-Timeout": "1"})
    head = caller.sock.recv(65536)
    caller.sock.close()
    assert head.startswith(b"HTTP/1.1 400 "), head[:200]
    assert b"longer than 255 bytes" in head
    assert broker.call(lambda: len(broker.broker.router.services)) == 0


def test_ws_subscriptions_past_the_overall_limit_are_refused(
    make_broker: Callable[..., BrokerThread], stack: ExitStack
) -> None:
    broker = make_broker("[broker]\nmax_subscriptions_total = 4\n" + WS)

    def login() -> ClientConnection:
        ws = stack.enter_context(connect(broker.endpoints["ws"][0], open_timeout=5))
        ws.send("xyzzy")
        assert ws.recv(timeout=3) == "MM OK"
        ws.recv(timeout=3)  # its id; its private channel MSG:<id> is one subscription
        return ws

    a = login()
    a.send("SUB t0\r\n\r\n.\r\n")
    a.send("SUB t1\r\n\r\n.\r\n")
    b = login()  # its private channel is the 4th
    b.send("SUB u0\r\n\r\n.\r\n")
    assert b.recv(timeout=3) == (
        "PUB ERROR\r\n\r\nToo many subscriptions SUB u0: too many subscriptions"
        " (at most 4 in all)\r\n.\r\n"
    )
    assert broker.stats()["subscriptions.refused"] == 1
    a.close()  # its three subscriptions end: room again
    wait_until(lambda: broker.call(lambda: broker.broker.router.topics.size) == 1)
    b.send("SUB u0\r\n\r\n.\r\n")
    b.send("PUB u0\r\n\r\nhi\r\n.\r\n")
    assert b.recv(timeout=3).startswith("PUB u0\r\n")


# -- WebSocket: a subscriber that never reads ---------------------------------------------------


def lazy_ws(url: str, stack: ExitStack) -> ClientConnection:
    """A middleman connection that logs in, subscribes to ``flood`` and then never reads (its
    socket's receive buffer is small and the client library buffers 4 frames at most)."""
    host, _, port = url.removeprefix("ws://").rpartition(":")
    sock = pysocket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM)
    sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((host, int(port)))
    ws = stack.enter_context(connect(url, sock=sock, open_timeout=5, max_queue=4))
    ws.send("xyzzy")
    assert ws.recv(timeout=3) == "MM OK"
    ws.recv(timeout=3)  # its id
    ws.send("SUB flood\r\n\r\n.\r\n")
    ws.send("SUB sync\r\n\r\n.\r\n")
    ws.send("PUB sync\r\n\r\n.\r\n")
    while not ws.recv(timeout=3).startswith("PUB sync"):
        pass
    return ws


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def flood(broker: BrokerThread, rounds: int, done: Callable[[], bool]) -> list[int]:
    """Publish 64 events of 16 KiB per loop turn, ``rounds`` times at most or until ``done``;
    the bytes the broker holds after each round."""
    router = broker.broker.router
    body = (b"e" * (16 * KIB),)
    seen = []

    def burst() -> int:
        for _ in range(64):
            router.publish(None, "flood", body)
        return router.held

    for _ in range(rounds):
        seen.append(broker.call(burst))
        if done():
            break
    return seen


def test_ws_subscriber_that_never_reads_has_its_events_dropped(
    make_broker: Callable[..., BrokerThread], stack: ExitStack
) -> None:
    broker = make_broker(WS + "outbox_bytes = 262144\n")
    lazy_ws(broker.endpoints["ws"][0], stack)
    seen = flood(broker, 100, lambda: broker.stats().get("ws.events_dropped", 0) > 1000)
    stats = broker.stats()
    assert stats.get("ws.events_dropped", 0) > 1000, (len(seen), stats)
    assert max(seen) <= 256 * KIB
    assert stats.get("ws.slow_consumer_closed", 0) == 0  # the drop policy keeps it open
    assert broker.call(lambda: len(broker.broker.transports["ws"].conns)) == 1  # type: ignore[attr-defined]


def test_ws_subscriber_that_never_reads_is_closed_under_the_close_policy(
    make_broker: Callable[..., BrokerThread], stack: ExitStack
) -> None:
    broker = make_broker(WS + 'outbox_bytes = 262144\nslow_consumer = "close"\n')
    lazy_ws(broker.endpoints["ws"][0], stack)
    seen = flood(broker, 100, lambda: broker.stats().get("ws.slow_consumer_closed", 0) > 0)
    assert broker.stats().get("ws.slow_consumer_closed", 0) == 1, len(seen)
    assert max(seen) <= 256 * KIB
    wait_until(lambda: held(broker) == 0, what="the outbox released")


# -- SSE: a caller that never reads its partials ------------------------------------------------


def test_sse_caller_that_never_reads_partials_is_cut_off(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker(
        http_toml(["127.0.0.1:0"], "sse_buffer_bytes = 262144\nswitch = false\nadmin = false")
    )
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"gen")
    worker.ready()
    wait_until(lambda: broker.call(lambda: "gen" in broker.broker.router.services))
    caller = RawHttp(endpoint_of(broker, "http://"))
    caller.sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, 4096)
    caller.send("POST", "/v1/services/gen", b"go", {"Accept": "text/event-stream"})
    addr, _ = worker.request()
    part = b"p" * (64 * KIB)
    seen = []
    for _ in range(400):  # 25 MiB of partials at most
        worker.partial(addr, part)
        seen.append(held(broker))
        if broker.stats().get("http.sse_overflow", 0):
            break
    assert broker.stats().get("http.sse_overflow", 0) == 1, len(seen)
    assert max(seen) <= 256 * KIB + 64 * KIB
    # the request was cancelled: what the worker still sends is dropped, nothing is held
    for _ in range(20):
        worker.partial(addr, part)
    worker.final(addr, b"end")
    wait_until(lambda: held(broker) == 0, what="the stream's buffer released")
    caller.sock.close()


def test_sse_topic_subscriber_that_never_reads_is_cut_off_by_bytes(
    make_broker: Callable[..., BrokerThread],
) -> None:
    broker = make_broker(
        http_toml(["127.0.0.1:0"], "sse_buffer_bytes = 262144\nswitch = false\nadmin = false")
    )
    sub = RawHttp(endpoint_of(broker, "http://"))
    sub.sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, 4096)
    sub.send("GET", "/v1/topics/flood", headers={"Accept": "text/event-stream"})
    router = broker.broker.router
    wait_until(lambda: broker.call(lambda: router.topics.size) == 1, what="the subscription")
    body = (b"e" * (16 * KIB),)

    def burst() -> int:
        for _ in range(16):
            router.publish(None, "flood", body)
        return router.held

    # 640 events of 16 KiB (10 MiB), fewer than sse_buffer (1000): only the byte bound stops them
    seen = [broker.call(burst) for _ in range(40)]
    assert max(seen) <= 256 * KIB
    assert 0 < seen[-1] <= 256 * KIB  # the stream holds what it had when it fell behind
    sub.sock.close()
    wait_until(lambda: held(broker) == 0, what="the stream's buffer released", timeout=10)
    wait_until(lambda: broker.call(lambda: router.topics.size) == 0, what="the stream ended")
