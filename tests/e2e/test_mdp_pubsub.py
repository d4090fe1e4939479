"""The ZeroMQ publish/subscribe endpoints of the MDP transport over real sockets, with plain
pyzmq SUB and PUB sockets (no maitred code on the peer side) and the package's clients
(docs/reference/mdp.md, "Publish and subscribe").

Waits are on conditions: the broker's counters (a subscription is applied when
``mdp.pub.subscribed`` counts it: anything published after that reaches the peer), or probes
published until the first arrives, bounded in time. That nothing arrives is shown by order: a
message published after it on the same socket arrives first."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

from maitred.core import cli
from maitred.core.access import Action, Identity, Rule, RuleTable
from maitred.core.app import build_broker
from maitred.core.config import parse_config
from maitred.core.errors import MaitredError
from maitred.transports.http.client import HttpCliClient, RestClient
from maitred.transports.mdp.client import (
    AsyncPublisher,
    AsyncSubscriber,
    Event,
    Publisher,
    Subscriber,
)
from maitred.transports.mdp.pubsub import ZmqPubSub
from tests.e2e.helpers import BASE, BrokerThread, RawWorker, recv, socket, wait_until

PUBSUB = """
pub_endpoints = ["tcp://127.0.0.1:0"]
publish_endpoints = ["tcp://127.0.0.1:0"]
"""
HTTP = """
[transports.http]
listen = ["127.0.0.1:0"]
switch = false
"""
DENY_SECRET = """
[[access.rules]]
allow = false
who = ["anonymous"]
actions = ["subscribe"]
names = ["secret.>"]
"""

Make = Callable[..., BrokerThread]


def hub(b: BrokerThread) -> ZmqPubSub:
    pubsub = b.broker.transports["mdp"].pubsub  # type: ignore[attr-defined]
    assert pubsub is not None
    return pubsub  # type: ignore[no-any-return]


def stat(b: BrokerThread, key: str) -> int:
    return b.stats().get(key, 0)


def wait_stat(b: BrokerThread, key: str, n: int) -> None:
    wait_until(lambda: stat(b, key) >= n, 5.0, f"{key} >= {n}")


def subscriber(ctx: zmq.Context[Any], b: BrokerThread, *subs: bytes) -> zmq.Socket[Any]:
    """A plain SUB socket with ``subs``, once the broker applied them (or refused them)."""
    before = stat(b, "mdp.pub.subscribed") + stat(b, "mdp.pub.denied")
    sock = socket(ctx, zmq.SUB, hub(b).pub_bound[0])
    for s in subs:
        sock.setsockopt(zmq.SUBSCRIBE, s)
    wait_until(
        lambda: stat(b, "mdp.pub.subscribed") + stat(b, "mdp.pub.denied") >= before + len(subs),
        5.0,
        "subscriptions handled",
    )
    return sock


def publish(b: BrokerThread, topic: str, *body: bytes) -> int:
    """Publish as the broker (in process): every transport's subscribers may get it."""
    return b.call(lambda: b.broker.router.publish(None, topic, list(body)))


def probe(send: Callable[[int], None], sock: zmq.Socket[Any], timeout: float = 5.0) -> list[bytes]:
    """Publish probes (``send(i)``) until ``sock`` receives something; that first message."""
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        send(i)
        i += 1
        if sock.poll(50):
            return sock.recv_multipart()
    raise AssertionError(f"no probe arrived within {timeout}s")


def drain(sock: zmq.Socket[Any], until: bytes) -> list[list[bytes]]:
    """Every message up to and including the first whose first frame is ``until``."""
    got = []
    while True:
        msg = recv(sock)
        got.append(msg)
        if msg[0] == until:
            return got


def core_patterns(b: BrokerThread) -> dict[str, int]:
    """Pattern -> core sessions of the pub/sub endpoints holding it."""

    def read() -> dict[str, int]:
        out: dict[str, int] = {}
        for s in hub(b)._sessions.values():
            for p in s.patterns:
                out[p] = out.get(p, 0) + 1
        return out

    return b.call(read)


# -- the whole path -------------------------------------------------------------------------------


def test_plain_sub_gets_worker_ready_rest_and_zeromq_publications(
    make_broker: Make, ctx: zmq.Context[Any]
) -> None:
    b = make_broker(HTTP, PUBSUB)
    sub = subscriber(ctx, b, b"$sys.worker.", b"news.")
    # an MDP worker registers: $sys.worker.ready reaches the plain SUB socket
    worker = RawWorker(ctx, b.endpoint, "rfc", b"echo")
    worker.ready()
    msg = recv(sub)
    assert msg[0] == b"$sys.worker.ready"
    event = json.loads(msg[1])
    assert event["service"] == "echo" and event["transport"] == "mdp"
    # a message published over REST
    with RestClient(b.endpoints["http"][0]) as rest:
        assert rest.publish("news.rest", b"from http") == 1
    assert recv(sub) == [b"news.rest", b"from http"]
    # a message a plain ZeroMQ PUB socket published (probes until the broker subscribed to it)
    pub = socket(ctx, zmq.PUB, hub(b).publish_bound[0])
    first = probe(lambda i: pub.send_multipart([b"news.zmq", b"probe %d" % i]), sub)
    assert first[0] == b"news.zmq" and first[1].startswith(b"probe ")
    pub.send_multipart([b"news.zmq", b"part 1", b"part 2"])
    while (msg := recv(sub))[1].startswith(b"probe "):
        pass
    assert msg == [b"news.zmq", b"part 1", b"part 2"]


def test_zeromq_publications_reach_sse_subscribers(
    make_broker: Make, ctx: zmq.Context[Any]
) -> None:
    b = make_broker(HTTP, PUBSUB)
    got: list[tuple[str, list[bytes]]] = []
    rest = HttpCliClient(b.endpoints["http"][0], timeout=10)
    stream = rest.subscribe("news.>")

    def sse_subscribed() -> bool:
        return b.call(lambda: len(b.broker.router.topics.match("news.x"))) == 1

    def read() -> None:
        for item in stream:
            got.append(item)
            if item[1] == [b"final"]:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(sse_subscribed, 5.0, "SSE subscription")
    with Publisher(hub(b).publish_bound[0], context=ctx) as pub:  # waits for the broker
        pub.publish("news.a", b"one", b"two")
        pub.publish("news.b", b"final")
    reader.join(10)
    assert got == [("news.a", [b"one", b"two"]), ("news.b", [b"final"])]
    rest.close()


# -- forms --------------------------------------------------------------------------------------


def test_prefix_and_pattern_layouts(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    b = make_broker("", PUBSUB)
    prefix = subscriber(ctx, b, b"news.")
    star = subscriber(ctx, b, b"news.*")
    rest = subscriber(ctx, b, b"news.>")
    exact = subscriber(ctx, b, b"news")
    everything = subscriber(ctx, b, b"")
    assert core_patterns(b) == {"news.>": 2, "news.*": 1, "news": 1, ">": 1}
    assert publish(b, "news.today", b"x") == 3  # the prefixes' session, two patterns' sessions
    publish(b, "news.eu.today", b"y")
    publish(b, "news", b"z")
    publish(b, "news.end", b"")
    publish(b, "end", b"")
    # a pattern's subscribers get [pattern, topic, body...]
    assert recv(star) == [b"news.*", b"news.today", b"x"]
    assert recv(rest) == [b"news.>", b"news.today", b"x"]
    assert recv(rest) == [b"news.>", b"news.eu.today", b"y"]
    # a prefix's get [topic, body...], and (ZeroMQ's own filter) the pattern forms whose first
    # frame starts with their prefix too
    got = drain(prefix, b"news.end")
    assert [b"news.today", b"x"] in got and [b"news.eu.today", b"y"] in got
    assert [b"news.*", b"news.today", b"x"] in got and [b"news.>", b"news.eu.today", b"y"] in got
    # "news": the topic news itself (the broker follows whole segments)
    assert drain(exact, b"news")[-1] == [b"news", b"z"]
    # "": everything
    assert drain(everything, b"end")[-1] == [b"end", b""]
    # and the pattern subscriber did not get the deeper topic (nor "news")
    assert recv(star) == [b"news.*", b"news.end", b""]


def test_system_events_by_pattern(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    b = make_broker("", PUBSUB)
    sub = subscriber(ctx, b, b"$sys.service.>")
    worker = RawWorker(ctx, b.endpoint, "rfc", b"svc")
    worker.ready()
    msg = recv(sub)
    assert msg[:2] == [b"$sys.service.>", b"$sys.service.online"]
    assert json.loads(msg[2]) == {"service": "svc"}
    worker.disconnect()
    msg = recv(sub)
    assert msg[:2] == [b"$sys.service.>", b"$sys.service.offline"]


def test_unsubscribe_stops_delivery(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    b = make_broker("", PUBSUB)
    sub = subscriber(ctx, b, b"a.", b"b.")
    publish(b, "a.x", b"1")
    assert recv(sub) == [b"a.x", b"1"]
    sub.setsockopt(zmq.UNSUBSCRIBE, b"a.")
    wait_stat(b, "mdp.pub.unsubscribed", 1)
    assert core_patterns(b) == {"b.>": 1}
    assert publish(b, "a.x", b"2") == 0
    publish(b, "b.x", b"3")
    assert recv(sub) == [b"b.x", b"3"]  # a.x was not delivered: it would have come first


def test_identical_subscriptions_are_counted(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    b = make_broker("", PUBSUB)
    subs = [subscriber(ctx, b, b"news.") for _ in range(3)]
    assert core_patterns(b) == {"news.>": 1}  # one core subscription for three peers
    assert b.call(lambda: dict(hub(b)._applied)) == {("anonymous", b"news."): 3}
    publish(b, "news.x", b"1")
    for s in subs:
        assert recv(s) == [b"news.x", b"1"]
    # one disconnects (libzmq unsubscribes for it), one unsubscribes
    subs[0].close(0)
    wait_stat(b, "mdp.pub.unsubscribed", 1)
    subs[1].setsockopt(zmq.UNSUBSCRIBE, b"news.")
    wait_stat(b, "mdp.pub.unsubscribed", 2)
    assert core_patterns(b) == {"news.>": 1}
    publish(b, "news.x", b"2")
    assert recv(subs[2]) == [b"news.x", b"2"]
    # the last one goes: the core subscription and its session go with it
    subs[2].close(0)
    wait_stat(b, "mdp.pub.unsubscribed", 3)
    assert core_patterns(b) == {}
    assert b.call(lambda: (len(hub(b)._sessions), len(hub(b)._applied))) == (0, 0)
    assert publish(b, "news.x", b"3") == 0


# -- access and bad input ---------------------------------------------------------------------


def test_denied_subscription_delivers_nothing(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    b = make_broker(DENY_SECRET, PUBSUB)
    watcher = subscriber(ctx, b, b"$sys.auth.denied")
    sub = subscriber(ctx, b, b"secret.", b"secret.*", b"open.")
    assert stat(b, "mdp.pub.denied") == 2 and stat(b, "denied.subscribe") == 2
    assert core_patterns(b) == {"$sys.auth.denied": 1, "open.>": 1}
    events = [json.loads(recv(watcher)[1]) for _ in range(2)]
    assert {e["name"] for e in events} == {"secret.>", "secret.*"}
    assert all(
        e["action"] == "subscribe" and e["transport"] == "mdp" and e["identity"] == "anonymous"
        for e in events
    )
    assert publish(b, "secret.x", b"hidden") == 0
    publish(b, "open.x", b"seen")
    assert recv(sub) == [b"open.x", b"seen"]  # secret.x would have come first
    # the refused subscriptions are forgotten with the peer
    sub.close(0)
    wait_until(lambda: b.call(lambda: dict(hub(b)._refused)) == {}, 5.0, "refusals forgotten")
    wait_until(lambda: core_patterns(b) == {"$sys.auth.denied": 1}, 5.0, "open.> dropped")


def test_bad_subscriptions_are_refused(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    b = make_broker("", PUBSUB)
    before = stat(b, "mdp.pub.rejected")
    sock = socket(ctx, zmq.SUB, hub(b).pub_bound[0])
    for bad in (b"\xff.", b"news..", b"a.>.b"):
        sock.setsockopt(zmq.SUBSCRIBE, bad)
    wait_stat(b, "mdp.pub.rejected", before + 3)
    assert core_patterns(b) == {}
    # a raw XSUB peer sending something that is no subscription: dropped, counted
    raw = socket(ctx, zmq.XSUB, hub(b).pub_bound[0])
    raw.send_multipart([b"\x05hello", b"more"])
    raw.send(b"\x07")
    wait_stat(b, "mdp.pub.rejected", before + 5)
    ok = subscriber(ctx, b, b"fine.")
    publish(b, "fine.x", b"")
    assert recv(ok) == [b"fine.x", b""]


def test_zeromq_publishers_are_checked(
    make_broker: Make, ctx: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    b = make_broker("", PUBSUB + "max_frames = 2\nmax_message_size = 100\n")
    sub = subscriber(ctx, b, b"")
    pub = socket(ctx, zmq.PUB, hub(b).publish_bound[0])
    probe(lambda i: pub.send_multipart([b"probe", b"%d" % i]), sub)
    before = stat(b, "mdp.publish.rejected")
    pub.send_multipart([b"", b"empty topic"])
    pub.send_multipart([b"\xfftopic", b"x"])
    pub.send_multipart([b"t", b"1", b"2", b"3"])  # too many frames
    pub.send_multipart([b"t", b"x" * 101])  # oversized
    pub.send_multipart([b"news.*", b"a pattern"])  # not a topic
    pub.send_multipart([b"$sys.worker.ready", b"{}"])  # the broker's
    pub.send_multipart([b"done", b"ok"])
    while (msg := recv(sub))[0] == b"probe":
        pass
    # "" is everything: the refusal of the $sys. publication, then the good one (nothing else)
    assert msg[0] == b"$sys.auth.denied"
    assert json.loads(msg[1])["name"] == "$sys.worker.ready"
    assert recv(sub) == [b"done", b"ok"]
    assert stat(b, "mdp.publish.rejected") == before + 5
    assert stat(b, "mdp.publish.denied") == 1 and stat(b, "denied.publish") == 1
    for reason in ("empty topic", "topic not UTF-8", "too many frames", "oversized"):
        assert stat(b, f"mdp.publish.rejected.{reason}") == 1
    # logged: each at DEBUG, one WARNING summary for the window (written at the latest when the
    # transport closes), never an ERROR or a traceback
    b.stop(0)
    warnings = [r for r in caplog.records if r.name == "maitred.transports.mdp.pubsub"]
    summaries = [r.getMessage() for r in warnings if r.levelno == logging.WARNING]
    assert summaries and all("ZeroMQ publications dropped" in m for m in summaries), summaries
    assert all(r.levelno < logging.ERROR and r.exc_info is None for r in warnings)


def test_publisher_denied_by_access(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    rules = (
        '[[access.rules]]\nallow = false\nwho = ["anonymous"]\nactions = ["publish"]\n'
        'names = ["locked.>"]\n'
    )
    b = make_broker(rules, PUBSUB)
    sub = subscriber(ctx, b, b"locked.", b"open.")
    with Publisher(hub(b).publish_bound[0], context=ctx) as pub:
        pub.publish("locked.x", b"no")
        pub.publish("open.x", b"yes")
        assert recv(sub) == [b"open.x", b"yes"]
    assert stat(b, "mdp.publish.denied") == 1 and stat(b, "denied.publish") == 1


# -- slow subscribers, lifecycle ---------------------------------------------------------------


def test_slow_subscriber_loses_messages_past_its_mark(
    make_broker: Make, ctx: zmq.Context[Any]
) -> None:
    b = make_broker("", PUBSUB + "pub_sndhwm = 4\n")
    slow = subscriber(ctx, b, b"bulk.")
    slow.setsockopt(zmq.RCVHWM, 4)
    count, size = 400, 256 << 10  # 100 MiB offered to a subscriber that does not read
    body = b"x" * size

    def burst() -> int:
        reached = 0
        for _ in range(count):
            reached += b.broker.router.publish(None, "bulk.x", [body])
        return reached

    assert b.call(burst, timeout=30) == count  # the broker never waits for the subscriber
    # what is left for it (its queues, the kernel's buffers), then an end marker published
    # until one arrives (a marker sent while its queue is full is dropped as well)
    got = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not slow.poll(50):
            publish(b, "bulk.end", b"")
            continue
        if slow.recv_multipart()[0] == b"bulk.end":
            break
        got += 1
    else:
        raise AssertionError("the end marker never arrived")
    assert got < count // 2, got  # far fewer than offered: dropped at the mark, not buffered


def test_off_by_default(broker: BrokerThread) -> None:
    transport: Any = broker.broker.transports["mdp"]
    assert transport.pubsub is None


def test_pub_endpoint_in_use(make_broker: Make) -> None:
    b = make_broker("", PUBSUB)
    taken = hub(b).publish_bound[0]

    async def start() -> None:
        broker = build_broker(parse_config(BASE + f'publish_endpoints = ["{taken}"]\n', "<t>"))
        await broker.start()

    with pytest.raises(MaitredError, match="cannot bind"):
        asyncio.run(start())


# -- the package's clients ------------------------------------------------------------------------


def test_python_clients(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    b = make_broker("", PUBSUB)
    sub = Subscriber(hub(b).pub_bound[0], context=ctx)
    other = Subscriber(hub(b).pub_bound[0], context=ctx)
    try:
        before = stat(b, "mdp.pub.subscribed")
        sub.subscribe("news.")
        other.subscribe("news.*")
        wait_stat(b, "mdp.pub.subscribed", before + 2)
        with Publisher(hub(b).publish_bound[0], context=ctx) as pub:
            pub.publish("news.today", b"hello", b"world")
        # the prefix subscriber skips the copy meant for news.* (its prefix lets it through)
        assert sub.recv(5) == Event("news.today", [b"hello", b"world"])
        assert other.recv(5) == Event("news.today", [b"hello", b"world"], "news.*")
        other.unsubscribe("news.*")
        wait_stat(b, "mdp.pub.unsubscribed", 1)
        publish(b, "news.later", b"")
        assert sub.recv(5) == Event("news.later", [b""])
        with pytest.raises(TimeoutError):
            sub.recv(0)
    finally:
        sub.close()
        other.close()


def test_python_asyncio_clients(make_broker: Make) -> None:
    b = make_broker("", PUBSUB)

    async def main() -> list[Event]:
        context = zmq.asyncio.Context()
        try:
            async with AsyncSubscriber(hub(b).pub_bound[0], context=context) as sub:
                before = stat(b, "mdp.pub.subscribed")
                sub.subscribe("$sys.broadcast")
                sub.subscribe("chat.>")
                await asyncio.to_thread(wait_stat, b, "mdp.pub.subscribed", before + 2)
                async with AsyncPublisher(hub(b).publish_bound[0], context=context) as pub:
                    await pub.publish("chat.room", b"hi")
                    await pub.publish("$sys.broadcast", b"to all")
                    got = [await sub.recv(5), await sub.recv(5)]
                with pytest.raises(TimeoutError):
                    await sub.recv(0.01)
                return got
        finally:
            context.destroy(linger=0)

    assert asyncio.run(main()) == [
        Event("chat.room", [b"hi"], "chat.>"),
        Event("$sys.broadcast", [b"to all"]),
    ]


# -- identities ---------------------------------------------------------------------------------


class _ZapFrame:
    """What libzmq's Frame.get says of a connection a ZAP handler accepted (CURVE, PLAIN)."""

    def __init__(self, user: str | None) -> None:
        self.user = user

    def get(self, name: str) -> str:
        if self.user is None or name != "User-Id":
            raise zmq.ZMQError(zmq.EINVAL)
        return self.user


def test_identity_from_zap_user_id(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    b = make_broker("", PUBSUB)
    pubsub = hub(b)
    assert b.call(lambda: pubsub._identity_of(_ZapFrame(None))).name == "anonymous"
    assert b.call(lambda: pubsub._identity_of(_ZapFrame(""))).name == "anonymous"
    assert b.call(lambda: pubsub._identity_of(_ZapFrame("alice"))).name == "alice"
    # a real connection without a security mechanism has no User-Id: the transport's identity
    sub = subscriber(ctx, b, b"x.")
    assert b.call(lambda: sorted({name for name, _ in pubsub._sessions})) == ["anonymous"]
    # the same subscription for another identity is a core session of its own, but one
    # publication is still sent once on the socket
    assert b.call(lambda: pubsub.subscribe(Identity("alice"), b"x."))
    assert core_patterns(b) == {"x.>": 2}
    assert publish(b, "x.y", b"1") == 2
    publish(b, "x.z", b"2")
    assert recv(sub) == [b"x.y", b"1"]
    assert recv(sub) == [b"x.z", b"2"]  # not x.y a second time
    b.call(lambda: pubsub.unsubscribe(Identity("alice"), b"x."))
    assert core_patterns(b) == {"x.>": 1}


def test_subscription_limits_and_small_batches(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    """Past ``[broker] max_subscriptions`` a subscription is refused (not applied, counted);
    with ``batch = 2`` the broker reads subscriptions and publications two at a time, and all
    of them are handled."""
    b = make_broker("[broker]\nmax_subscriptions = 3\n", PUBSUB + "batch = 2\n")
    sub = subscriber(ctx, b, b"a.", b"b.", b"c.")
    sub.setsockopt(zmq.SUBSCRIBE, b"d.")
    wait_stat(b, "mdp.pub.refused", 1)
    assert stat(b, "subscriptions.refused") == 1
    assert core_patterns(b) == {"a.>": 1, "b.>": 1, "c.>": 1}
    pub = socket(ctx, zmq.PUB, hub(b).publish_bound[0])
    probe(lambda i: pub.send_multipart([b"a.probe", b"%d" % i]), sub)
    for topic in (b"d.x", b"a.x", b"b.x", b"c.x", b"d.y", b"c.end"):
        pub.send_multipart([topic, b""])
    got = []
    while (msg := recv(sub))[0] != b"c.end":
        if msg[0] != b"a.probe":
            got.append(msg[0])
    assert got == [b"a.x", b"b.x", b"c.x"]  # d. was refused
    # a refused subscription held by two peers is forgotten with each of them
    other = socket(ctx, zmq.SUB, hub(b).pub_bound[0])
    other.setsockopt(zmq.SUBSCRIBE, b"d.")
    wait_stat(b, "mdp.pub.refused", 2)
    assert b.call(lambda: dict(hub(b)._refused)) == {("anonymous", b"d."): 2}
    other.close(0)
    wait_until(lambda: b.call(lambda: dict(hub(b)._refused)) == {("anonymous", b"d."): 1})
    sub.setsockopt(zmq.UNSUBSCRIBE, b"d.")
    wait_until(lambda: b.call(lambda: dict(hub(b)._refused)) == {})


def test_second_peer_is_asked_again(make_broker: Make, ctx: zmq.Context[Any]) -> None:
    """A subscription another peer holds is still checked for the next peer: once the rules
    deny it, the next peer's is refused (counted, published), not applied."""
    b = make_broker("", PUBSUB)
    first = subscriber(ctx, b, b"open.")
    deny = Rule(allow=False, actions=(Action.SUBSCRIBE,), names=("open.>",))
    b.call(lambda: b.broker.router.set_access(RuleTable([deny])))
    second = subscriber(ctx, b, b"open.", b"other.")
    assert stat(b, "mdp.pub.denied") == 1 and stat(b, "denied.subscribe") == 1
    assert b.call(lambda: dict(hub(b)._applied)) == {
        ("anonymous", b"open."): 1,
        ("anonymous", b"other."): 1,
    }
    assert b.call(lambda: dict(hub(b)._refused)) == {("anonymous", b"open."): 1}
    publish(b, "open.x", b"")  # withheld from the first too: the rules are asked on delivery
    publish(b, "other.x", b"")
    assert recv(second) == [b"other.x", b""]
    second.close(0)
    wait_until(lambda: b.call(lambda: dict(hub(b)._refused)) == {}, 5.0, "refusal forgotten")
    assert b.call(lambda: dict(hub(b)._applied)) == {("anonymous", b"open."): 1}
    first.close(0)
    wait_until(lambda: core_patterns(b) == {}, 5.0, "all gone")


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_pub_and_sub(
    make_broker: Make, ctx: zmq.Context[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """``maitred sub -b <pub endpoint>`` (a subprocess) and ``maitred pub -b <publish
    endpoint>`` (in process)."""
    b = make_broker("", PUBSUB)
    pub_ep, publish_ep = hub(b).pub_bound[0], hub(b).publish_bound[0]
    sub = subprocess.Popen(
        [sys.executable, "-m", "maitred.core", "sub", "news.*", "-n", "1", "--json", "-b", pub_ep],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_stat(b, "mdp.pub.subscribed", 1)  # (the handshake check subscribes to nothing)
        assert cli.main(["pub", "-b", publish_ep, "news.today", "hello"]) == 0
        assert capsys.readouterr().err == "published to news.today\n"
        out, err = sub.communicate(timeout=20)
    finally:
        sub.kill()
        sub.wait(10)
    assert sub.returncode == 0, err
    assert json.loads(out) == {"topic": "news.today", "frames": ["hello"]}
    # the other endpoint for each verb: refused with a hint, exit 2
    assert cli.main(["pub", "-b", pub_ep, "news.today", "x"]) == 2
    assert "is not of the kind this needs" in capsys.readouterr().err
    assert cli.main(["sub", "-b", publish_ep, "news.*"]) == 2
    assert "is not of the kind this needs" in capsys.readouterr().err


def test_identity_of_a_zap_authenticated_peer(
    make_broker: Make, ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a security mechanism on the pub/sub sockets (here PLAIN, as the test sets it up; a
    ZAP handler answers with the user name as User-Id), subscriptions and publications are
    checked for the peer's own identity: alice may neither subscribe to nor publish on
    secret.>, anonymous peers may."""
    from zmq.auth.thread import ThreadAuthenticator

    plain = ZmqPubSub._socket

    def with_plain(self: ZmqPubSub, kind: int) -> zmq.Socket[Any]:
        sock = plain(self, kind)
        sock.setsockopt(zmq.PLAIN_SERVER, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, b"maitred")
        return sock

    monkeypatch.setattr(ZmqPubSub, "_socket", with_plain)
    rules = (
        '[[access.rules]]\nallow = false\nwho = ["alice"]\nactions = ["subscribe", "publish"]\n'
        'names = ["secret.>"]\n'
    )
    b = make_broker(rules, PUBSUB)
    auth = ThreadAuthenticator(b.broker.transports["mdp"].context)  # type: ignore[attr-defined]
    auth.start()
    try:
        auth.configure_plain(domain="maitred", passwords={"alice": "pw", "bob": "pw"})

        def peer(kind: int, user: str, endpoint: str) -> zmq.Socket[Any]:
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.plain_username = user.encode()
            sock.plain_password = b"pw"
            sock.connect(endpoint)
            return sock

        watcher = peer(zmq.SUB, "bob", hub(b).pub_bound[0])
        watcher.setsockopt(zmq.SUBSCRIBE, b"$sys.auth.denied")
        watcher.setsockopt(zmq.SUBSCRIBE, b"secret.")
        wait_stat(b, "mdp.pub.subscribed", 2)
        alice = peer(zmq.SUB, "alice", hub(b).pub_bound[0])
        alice.setsockopt(zmq.SUBSCRIBE, b"secret.")
        wait_stat(b, "mdp.pub.denied", 1)
        event = json.loads(recv(watcher)[1])
        assert (event["identity"], event["action"], event["name"]) == (
            "alice",
            "subscribe",
            "secret.>",
        )
        assert b.call(lambda: sorted(hub(b)._applied)) == [
            ("bob", b"$sys.auth.denied"),
            ("bob", b"secret."),
        ]
        # alice's publication on secret.x is refused; bob's arrives (alice got nothing)
        pub_alice = peer(zmq.PUB, "alice", hub(b).publish_bound[0])
        pub_bob = peer(zmq.PUB, "bob", hub(b).publish_bound[0])
        first = probe(lambda i: pub_bob.send_multipart([b"secret.bob", b"%d" % i]), watcher)
        assert first[0] == b"secret.bob"
        before = stat(b, "mdp.publish.denied")
        probe(lambda i: pub_alice.send_multipart([b"secret.alice", b"%d" % i]), watcher)
        # what came is the refusal of alice's publication, never her message
        assert stat(b, "mdp.publish.denied") > before
        pub_bob.send_multipart([b"secret.end", b""])
        while (msg := recv(watcher))[0] != b"secret.end":
            assert msg[0] in (b"$sys.auth.denied", b"secret.bob"), msg
            if msg[0] == b"$sys.auth.denied":
                assert json.loads(msg[1])["identity"] == "alice"
        assert not alice.poll(0)
        # the unsubscribes libzmq makes for a peer that disconnects carry no User-Id: the
        # subscriptions of bob and the refusal of alice are forgotten all the same
        for sock in (watcher, alice, pub_alice, pub_bob):
            sock.close(0)
        wait_until(lambda: core_patterns(b) == {}, 5.0, "bob's subscriptions dropped")
        assert b.call(lambda: (dict(hub(b)._applied), dict(hub(b)._refused))) == ({}, {})
    finally:
        auth.stop()


def test_old_libzmq_is_refused_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without XPUB_VERBOSER (libzmq < 4.3) unsubscribes could not be counted: the transport
    does not start, and says why."""
    monkeypatch.delattr(zmq, "XPUB_VERBOSER")

    async def start() -> None:
        broker = build_broker(parse_config(BASE + PUBSUB, "<t>"))
        await broker.start()

    with pytest.raises(MaitredError, match=r"pub_endpoints need libzmq 4\.3 or later"):
        asyncio.run(start())
