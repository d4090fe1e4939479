"""The middleman dialect over real sockets, with plain websockets clients as the middleman-style
service and clients (not maitred's codec: the frames are written by hand from
docs/reference/wire.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import zmq
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.e2e.helpers import BrokerThread, RawClient, RawWorker, wait_until

WS = """
[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
"""

Ctx = zmq.Context[Any]


@pytest.fixture
def ws_broker(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    return make_broker(WS)


class Conns:
    """Client connections of a test, closed at its end."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack

    def open(self, broker: BrokerThread) -> ClientConnection:
        return self.stack.enter_context(connect(url(broker), open_timeout=5))


@pytest.fixture
def conns() -> Iterator[Conns]:
    with ExitStack() as stack:
        yield Conns(stack)


def url(broker: BrokerThread) -> str:
    return broker.endpoints["ws"][0]


def login(broker: BrokerThread, conns: Conns, key: str) -> tuple[ClientConnection, str]:
    ws = conns.open(broker)
    ws.send(key)
    assert ws.recv(timeout=3) == "MM OK"
    cid = ws.recv(timeout=3)
    assert isinstance(cid, str) and len(cid) == 20
    return ws, cid


def recv(ws: ClientConnection, timeout: float = 3.0) -> str:
    got = ws.recv(timeout=timeout)
    assert isinstance(got, str)
    return got


def nothing(ws: ClientConnection, timeout: float = 0.2) -> bool:
    try:
        ws.recv(timeout=timeout)
    except TimeoutError:
        return True
    return False


def workers_of(broker: BrokerThread, service: str) -> int:
    def count() -> int:
        svc = broker.broker.router.services.get(service)
        return len(svc.workers) if svc else 0

    return broker.call(count)


def err(text: str) -> str:
    return f"PUB ERROR\r\n\r\n{text}\r\n.\r\n"


def sync(ws: ClientConnection) -> None:
    """Round-trip through the broker so that everything sent before has been processed
    (frames of one connection are handled in order): an UNS of nothing answers nothing, so
    use a bad command whose error comes back."""
    ws.send("NOP x\r\n\r\n.\r\n")
    assert recv(ws) == err("Unknown command NOP x")


def test_transcript_byte_for_byte(ws_broker: BrokerThread, conns: Conns) -> None:
    service, scid = login(ws_broker, conns, "xyzzy")
    service.send("EREQ echo\r\n\r\n.\r\n")
    wait_until(lambda: workers_of(ws_broker, "echo") == 1, what="responder")
    client, ccid = login(ws_broker, conns, "plugh")
    client.send("REQ echo\r\nReqID: abc-123\r\n\r\nping body\r\n.\r\n")
    got = recv(service)
    prefix = f"REQ echo\r\nReqid: abc-123\r\nCid: {ccid}\r\nUid: \r\nRid: "
    assert got.startswith(prefix)
    rid = got[len(prefix) :].split("\r\n", 1)[0]
    assert rid.isdigit()
    assert got == f"{prefix}{rid}\r\n\r\nping body\r\n.\r\n"
    service.send(f"RES echo\r\nRid: {rid}\r\nReqid: abc-123\r\n\r\npong body\r\n.\r\n")
    assert recv(client) == (
        f"RES echo\r\nReqid: abc-123\r\nCid: {scid}\r\nUid: \r\n\r\npong body\r\n.\r\n"
    )


def test_wrong_key_closes_1008(ws_broker: BrokerThread, conns: Conns) -> None:
    ws = conns.open(ws_broker)
    ws.send("nope")
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=3)
    assert ws.close_code == 1008
    assert ws.close_reason == "bad key"
    assert ws_broker.stats()["ws.bad_key"] == 1


def test_untrusted_denials_exact_and_not_performed(ws_broker: BrokerThread, conns: Conns) -> None:
    service, _ = login(ws_broker, conns, "xyzzy")
    client, _ = login(ws_broker, conns, "plugh")
    service.send("SUB k\r\n\r\n.\r\n")
    sync(service)
    client.send("PUB k\r\n\r\nnope\r\n.\r\n")
    assert recv(client) == err("Not trusted PUB k")
    client.send("SUB k\r\n\r\n.\r\n")
    assert recv(client) == err("Not trusted: SUB k")
    client.send("REQ k\r\n\r\n.\r\n")
    assert recv(client) == err("Not trusted REQ k")
    client.send("RES k\r\nRid: 1\r\n\r\n.\r\n")
    assert recv(client) == err("Not trusted RES k")
    for cmd in ("EREQ", "EPUB", "ESUB"):
        client.send(f"{cmd} k\r\n\r\n.\r\n")
        assert recv(client) == err(f"Not trusted {cmd} k")
    client.send("INT UID\r\nForcid: x\r\nSetuid: y\r\n\r\n.\r\n")
    assert recv(client) == err("Not trusted INT UID")
    # nothing was performed: the service saw no publication, k has no worker, no grant exists
    assert nothing(service)
    assert workers_of(ws_broker, "k") == 0
    # no grant at all: the private channel is the transport's own (subscribed unchecked)
    assert ws_broker.call(ws_broker.broker.router.grants.listing) == {}
    # a trusted publish still reaches the subscriber, and the untrusted one is not subscribed
    service.send("PUB k\r\n\r\nyes\r\n.\r\n")
    assert recv(service).endswith("\r\n\r\nyes\r\n.\r\n")
    assert nothing(client)
    stats = ws_broker.stats()
    assert stats["denied.publish"] >= 1 and stats["denied.subscribe"] >= 1
    assert stats["denied.call"] >= 1


def test_grants_open_doors(ws_broker: BrokerThread, conns: Conns) -> None:
    service, scid = login(ws_broker, conns, "xyzzy")
    client, ccid = login(ws_broker, conns, "plugh")
    service.send("ESUB news\r\n\r\n.\r\n")
    service.send("EPUB chat\r\n\r\n.\r\n")
    service.send("SUB chat\r\n\r\n.\r\n")
    sync(service)
    client.send("SUB news\r\n\r\n.\r\n")
    client.send("PUB chat\r\nX-a: 1\r\n\r\nhello\r\n.\r\n")
    assert recv(service) == f"PUB chat\r\nX-A: 1\r\nCid: {ccid}\r\nUid: \r\n\r\nhello\r\n.\r\n"
    service.send("PUB news\r\n\r\nextra\r\n.\r\n")
    assert recv(client) == f"PUB news\r\nCid: {scid}\r\nUid: \r\n\r\nextra\r\n.\r\n"


def test_sub_pub_uns_wildcards_and_self_delivery(ws_broker: BrokerThread, conns: Conns) -> None:
    a, acid = login(ws_broker, conns, "xyzzy")
    b, _ = login(ws_broker, conns, "xyzzy")
    a.send("SUB room.*\r\n\r\n.\r\n")
    b.send("SUB room.1\r\n\r\n.\r\n")
    sync(a)
    sync(b)
    a.send("PUB room.1\r\nUid: forged\r\n\r\n..dot\r\nline2\r\n.\r\n")
    expected = f"PUB room.1\r\nCid: {acid}\r\nUid: \r\n\r\n..dot\r\nline2\r\n.\r\n"
    assert recv(a) == expected  # the publisher too, since it is subscribed
    assert recv(b) == expected
    b.send("UNS room.1\r\n\r\n.\r\n")
    sync(b)
    a.send("PUB room.1\r\n\r\nagain\r\n.\r\n")
    assert recv(a).endswith("again\r\n.\r\n")
    assert nothing(b)


def test_private_channel_and_int_uid(ws_broker: BrokerThread, conns: Conns) -> None:
    service, _ = login(ws_broker, conns, "xyzzy")
    client, ccid = login(ws_broker, conns, "plugh")
    service.send(f"INT UID\r\nForcid: {ccid}\r\nSetuid: alice\r\n\r\n.\r\n")
    service.send("INT UID\r\nForcid: nobody\r\nSetuid: bob\r\n\r\n.\r\n")
    assert recv(service) == err("No connection nobody INT UID")
    service.send(f"PUB MSG:{ccid}\r\n\r\nfor you\r\n.\r\n")
    got = recv(client)
    assert got.startswith(f"PUB MSG:{ccid}\r\n") and got.endswith("\r\n\r\nfor you\r\n.\r\n")
    # the uid set by INT UID travels with the client's messages
    service.send("EPUB up\r\n\r\n.\r\n")
    service.send("SUB up\r\n\r\n.\r\n")
    sync(service)
    client.send("PUB up\r\n\r\nx\r\n.\r\n")
    assert recv(service) == f"PUB up\r\nCid: {ccid}\r\nUid: alice\r\n\r\nx\r\n.\r\n"
    # another untrusted connection cannot listen on the client's private channel
    other, _ = login(ws_broker, conns, "plugh")
    other.send(f"SUB MSG:{ccid}\r\n\r\n.\r\n")
    assert recv(other) == err(f"Not trusted: SUB MSG:{ccid}")


def test_no_responder_at_once_and_when_responder_leaves(
    ws_broker: BrokerThread, conns: Conns
) -> None:
    client, _ = login(ws_broker, conns, "xyzzy")
    client.send("REQ none\r\nReqID: 1\r\n\r\n.\r\n")
    assert recv(client) == err("No responder for REQ none")
    service, _ = login(ws_broker, conns, "xyzzy")
    service.send("EREQ svc\r\n\r\n.\r\n")
    wait_until(lambda: workers_of(ws_broker, "svc") == 1, what="responder")
    client.send("REQ svc\r\n\r\nq\r\n.\r\n")
    assert recv(service).startswith("REQ svc\r\n")
    service.close()
    assert recv(client) == err("No responder for REQ svc")


def test_res_with_unknown_rid(ws_broker: BrokerThread, conns: Conns) -> None:
    service, _ = login(ws_broker, conns, "xyzzy")
    service.send("RES echo\r\nRid: 999\r\n\r\n.\r\n")
    assert recv(service) == err("No client for request ID  RES echo")
    service.send("RES echo\r\n\r\n.\r\n")
    assert recv(service) == err("No client for request ID  RES echo")


def test_round_robin_and_in_order(ws_broker: BrokerThread, conns: Conns) -> None:
    s1, _ = login(ws_broker, conns, "xyzzy")
    s2, _ = login(ws_broker, conns, "xyzzy")
    for s in (s1, s2):
        s.send("EREQ rr\r\n\r\n.\r\n")
    wait_until(lambda: workers_of(ws_broker, "rr") == 2, what="responders")
    client, _ = login(ws_broker, conns, "xyzzy")
    for i in range(4):
        client.send(f"REQ rr\r\nN: {i}\r\n\r\n{i}\r\n.\r\n")
    got1 = [recv(s1) for _ in range(2)]
    got2 = [recv(s2) for _ in range(2)]
    assert [m.split("\r\n")[1] for m in got1] == ["N: 0", "N: 2"]
    assert [m.split("\r\n")[1] for m in got2] == ["N: 1", "N: 3"]
    for s, msgs in ((s2, got2), (s1, got1)):
        for m in msgs:
            rid = m.split("Rid: ")[1].split("\r\n")[0]
            n = m.split("N: ")[1].split("\r\n")[0]
            s.send(f"RES rr\r\nRid: {rid}\r\nN: {n}\r\n\r\nr{n}\r\n.\r\n")
    bodies = sorted(recv(client).split("\r\n\r\n")[1] for _ in range(4))
    assert bodies == [f"r{i}\r\n.\r\n" for i in range(4)]


def test_bad_input_is_answered_and_counted(ws_broker: BrokerThread, conns: Conns) -> None:
    ws, _ = login(ws_broker, conns, "xyzzy")
    ws.send("PUBtarget\r\n\r\n.\r\n")
    assert recv(ws) == err("Parse error: no space between command and target")
    ws.send("PUB t\r\nNoColon\r\n\r\n.\r\n")
    assert recv(ws).startswith("PUB ERROR\r\n\r\nParse error: malformed header line (no colon)")
    ws.send("PUB t\r\n\r\nunterminated\r\n")
    assert recv(ws) == err("Parse error: no terminating '.' line")
    ws.send("PUB bad..name\r\n\r\n.\r\n")
    assert recv(ws).startswith("PUB ERROR\r\n\r\nBad target PUB bad..name: ")
    # still alive
    ws.send("SUB ok\r\n\r\n.\r\n")
    ws.send("PUB ok\r\n\r\nfine\r\n.\r\n")
    assert recv(ws).endswith("fine\r\n.\r\n")
    stats = ws_broker.stats()
    assert stats["ws.mm.parse_errors"] == 3
    # a binary frame closes with 1003
    ws.send(b"\x00\x01")
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=3)
    assert ws.close_code == 1003


def test_oversized_frame_closes_1009(
    make_broker: Callable[..., BrokerThread], conns: Conns
) -> None:
    broker = make_broker(WS + "max_frame_size = 1024\n")
    ws, _ = login(broker, conns, "xyzzy")
    ws.send("PUB t\r\n\r\n" + "x" * 2000 + "\r\n.\r\n")
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=3)
    assert ws.close_code == 1009
    wait_until(lambda: broker.stats().get("ws.oversized", 0) == 1, what="counted")
    # the broker still serves others
    login(broker, conns, "xyzzy")


def test_flood_of_sub_is_refused_past_the_limit(
    make_broker: Callable[..., BrokerThread], conns: Conns
) -> None:
    broker = make_broker("[broker]\nmax_subscriptions = 3\n" + WS)
    ws, cid = login(broker, conns, "xyzzy")
    # the connection's own MSG:<cid> channel is one of the three
    for i in range(6):
        ws.send(f"SUB t{i}\r\n\r\n.\r\n")
    for i in (2, 3, 4, 5):
        assert recv(ws) == (
            f"PUB ERROR\r\n\r\nToo many subscriptions SUB t{i}: too many subscriptions"
            " (at most 3 per session)\r\n.\r\n"
        )
    assert broker.stats()["subscriptions.refused"] == 4
    # the subscriptions it holds still work, and so does the connection
    ws.send("PUB t1\r\n\r\nhi\r\n.\r\n")
    assert recv(ws).startswith("PUB t1\r\n")
    ws.send("UNS t0\r\n\r\n.\r\n")
    ws.send("SUB t9\r\n\r\n.\r\n")
    sync(ws)
    assert broker.stats()["subscriptions.refused"] == 4
    ws.send(f"PUB MSG:{cid}\r\n\r\nprivate\r\n.\r\n")
    assert recv(ws).startswith(f"PUB MSG:{cid}\r\n")


def test_slow_consumer_drop_policy(make_broker: Callable[..., BrokerThread], conns: Conns) -> None:
    broker = make_broker(WS + "outbox = 4\n")
    sub, _ = login(broker, conns, "xyzzy")
    sub.send("SUB flood\r\n\r\n.\r\n")
    sync(sub)
    router = broker.broker.router

    def flood() -> None:
        # 50 publications in one loop turn: the writer cannot run in between
        for i in range(50):
            router.publish(None, "flood", (b"%d" % i,))

    broker.call(flood)
    got = [recv(sub) for _ in range(4)]
    assert [m.split("\r\n\r\n")[1] for m in got] == [f"{i}\r\n.\r\n" for i in range(4)]
    assert broker.stats()["ws.events_dropped"] == 46
    sync(sub)  # still connected, and nothing else was queued


def test_slow_consumer_close_policy(make_broker: Callable[..., BrokerThread], conns: Conns) -> None:
    broker = make_broker(WS + 'outbox = 4\nslow_consumer = "close"\n')
    sub, _ = login(broker, conns, "xyzzy")
    sub.send("SUB flood\r\n\r\n.\r\n")
    sync(sub)
    router = broker.broker.router

    def flood() -> None:
        for i in range(50):
            router.publish(None, "flood", (b"%d" % i,))

    broker.call(flood)
    with pytest.raises(ConnectionClosed):
        while True:
            sub.recv(timeout=3)
    assert sub.close_code == 1008 and sub.close_reason == "slow consumer: outbox full"
    assert broker.stats()["ws.slow_consumer_closed"] == 1


def test_mdp_client_to_middleman_service(ws_broker: BrokerThread, conns: Conns, ctx: Ctx) -> None:
    service, _ = login(ws_broker, conns, "xyzzy")
    service.send("EREQ upper\r\n\r\n.\r\n")
    wait_until(lambda: workers_of(ws_broker, "upper") == 1, what="responder")
    for kind in ("0.1-dealer", "majortomo"):
        client = RawClient(ctx, ws_broker.endpoint, kind)
        client.send(b"upper", b"hello", b"world")
        got = recv(service)
        head, body = got.split("\r\n\r\n", 1)
        lines = head.split("\r\n")
        assert lines[0] == "REQ upper"
        assert lines[1] == "Cid: mdp:clients" and lines[2] == "Uid: "
        assert body == "hello\r\nworld\r\n.\r\n"  # frames joined by a line break
        rid = lines[3].split(": ")[1]
        service.send(f"RES upper\r\nRid: {rid}\r\n\r\nHELLO\r\n.\r\n")
        final, frames = client.recv()
        assert final and frames == [b"HELLO"]


def test_middleman_req_to_mdp_worker(ws_broker: BrokerThread, conns: Conns, ctx: Ctx) -> None:
    worker = RawWorker(ctx, ws_broker.endpoint, "majortomo", b"mdpsvc")
    worker.ready()
    wait_until(lambda: workers_of(ws_broker, "mdpsvc") == 1, what="mdp worker")
    client, _ = login(ws_broker, conns, "xyzzy")
    client.send("REQ mdpsvc\r\nReqID: 7\r\n\r\nline1\r\nline2\r\n.\r\n")
    addr, body = worker.request()
    assert body == [b"line1\nline2"]
    worker.partial(addr, b"skipped")
    worker.final(addr, b"a", b"b")
    got = recv(client)
    # the request's Reqid comes back (MDP replies have no headers); frames joined by a line break
    assert got == "RES mdpsvc\r\nReqid: 7\r\nCid: " + got.split("Cid: ")[1].split("\r\n")[0] + (
        "\r\nUid: \r\n\r\na\r\nb\r\n.\r\n"
    )
    assert got.split("Cid: ")[1].startswith("mdp:")


def test_sys_events_reach_middleman_subscribers(ws_broker: BrokerThread, conns: Conns) -> None:
    watcher, _ = login(ws_broker, conns, "xyzzy")
    watcher.send("SUB $sys.service.>\r\n\r\n.\r\n")
    sync(watcher)
    service, _ = login(ws_broker, conns, "xyzzy")
    service.send("EREQ watched\r\n\r\n.\r\n")
    got = recv(watcher)
    head, body = got.split("\r\n\r\n", 1)
    assert head.startswith("PUB $sys.service.online\r\n")
    assert json.loads(body[: -len("\r\n.\r\n")]) == {"service": "watched"}


def test_access_rules_apply_to_trusted_keys_too(
    make_broker: Callable[..., BrokerThread], conns: Conns
) -> None:
    access = """
[[access.rules]]
allow = false
who = ["role:untrusted"]
actions = ["subscribe"]

[[access.rules]]
allow = false
who = ["service"]
actions = ["serve"]
names = ["secret.>"]
"""
    broker = make_broker(access + WS)
    # an explicit rule wins over the private grant: no private channel, but a working connection
    client, _ = login(broker, conns, "plugh")
    client.send("SUB anything\r\n\r\n.\r\n")
    assert recv(client) == err("Not trusted: SUB anything")
    service, _ = login(broker, conns, "xyzzy")
    service.send("EREQ secret.svc\r\n\r\n.\r\n")
    got = recv(service)
    assert got.startswith("PUB ERROR\r\n\r\nCannot serve EREQ secret.svc: ")
    assert workers_of(broker, "secret.svc") == 0
