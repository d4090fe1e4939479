"""The maitred.json dialect over real sockets, with maitred's asyncio JsonClient (and raw MDP
peers): JSON ↔ JSON, JSON → MDP worker, MDP client → JSON service with partials, `$sys.` events,
bad input."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import pytest
import zmq
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from maitred.core.errors import ErrorCode, MaitredError
from maitred.transports.ws import json_codec as jc
from maitred.transports.ws.client import JsonClient, MmClient, payload_of
from tests.e2e.helpers import BrokerThread, RawClient, RawWorker, wait_until

WS = """
[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
"""

Ctx = zmq.Context[Any]
T = TypeVar("T")


@pytest.fixture
def ws_broker(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    return make_broker(WS)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


def url(broker: BrokerThread) -> str:
    return broker.endpoints["ws"][0]


def workers_of(broker: BrokerThread, service: str) -> int:
    def count() -> int:
        svc = broker.broker.router.services.get(service)
        return len(svc.workers) if svc else 0

    return broker.call(count)


def test_json_client_and_service(ws_broker: BrokerThread) -> None:
    async def main() -> None:
        svc = await JsonClient.connect(
            url(ws_broker), "xyzzy", name="calc", version="1.0.0", methods=["add"]
        )
        assert svc.welcome.services == ["calc", "calc:add"]
        assert svc.welcome.trusted
        client = await JsonClient.connect(url(ws_broker), "xyzzy", name="consumer-name")
        assert client.welcome.services == []

        async def serve() -> None:
            req = await svc.next_request()
            assert req.destination == "calc:add"
            assert req.consumer == "consumer-name"
            assert req.headers is not msgspec.UNSET and req.headers["X-Trace"] == "t1"
            a, b = payload_of(req)
            await svc.reply(req, {"sum": a + b}, headers={"X-Done": "yes"})

        task = asyncio.ensure_future(serve())
        reply = await client.request("calc:add", [2, 3], headers={"X-Trace": "t1"})
        await task
        assert payload_of(reply) == {"sum": 5}
        assert reply.headers is not msgspec.UNSET and reply.headers["X-Done"] == "yes"

        # an error reply from the service, with its code
        async def refuse() -> None:
            req = await svc.next_request()
            await svc.fail(req, 404, "no such thing")

        task = asyncio.ensure_future(refuse())
        with pytest.raises(MaitredError) as info:
            await client.request("calc", "x")
        await task
        assert info.value.code == ErrorCode.NOT_FOUND and info.value.reason == "no such thing"

        # no worker, fail fast
        with pytest.raises(MaitredError) as info:
            await client.request("nobody", 1, on_no_worker="fail")
        assert info.value.code == ErrorCode.NO_WORKER
        await client.close()
        await svc.close()

    run(main())


def test_each_reply_carries_its_own_headers(ws_broker: BrokerThread) -> None:
    """A partial's headers are the partial's: the final reply after it, sent without headers,
    reaches the caller without any (none left over from the partial)."""

    async def main() -> None:
        svc = await JsonClient.connect(url(ws_broker), "xyzzy", name="steps", methods=[])
        client = await JsonClient.connect(url(ws_broker), "xyzzy")

        async def serve() -> None:
            req = await svc.next_request()
            await svc.reply(req, "half", headers={"X-Step": "1"}, final=False)
            await svc.reply(req, "done")

        task = asyncio.ensure_future(serve())
        partials: list[jc.Partial] = []
        reply = await client.request("steps", 0, on_partial=partials.append)
        await task
        assert [(payload_of(p), p.headers) for p in partials] == [("half", {"X-Step": "1"})]
        assert payload_of(reply) == "done" and reply.headers is msgspec.UNSET
        await client.close()
        await svc.close()

    run(main())


def test_bytes_travel_as_base64(ws_broker: BrokerThread) -> None:
    async def main() -> None:
        svc = await JsonClient.connect(url(ws_broker), "xyzzy", name="bin", methods=[])

        async def serve() -> None:
            req = await svc.next_request()
            assert req.data == base64.b64encode(b"\xff\x00raw").decode()
            await svc.reply(req, frames=[b"a", b"\xfe"])

        task = asyncio.ensure_future(serve())
        client = await JsonClient.connect(url(ws_broker), "plugh")
        # the untrusted client may not call before a grant
        with pytest.raises(MaitredError) as info:
            await client.request("bin", data=b"\xff\x00raw")
        assert info.value.code == ErrorCode.FORBIDDEN
        trusted = await JsonClient.connect(url(ws_broker), "xyzzy")
        reply = await trusted.request("bin", data=b"\xff\x00raw")
        await task
        assert reply.frames == [base64.b64encode(b"a").decode(), base64.b64encode(b"\xfe").decode()]
        for c in (client, trusted, svc):
            await c.close()

    run(main())


def test_json_client_to_mdp_worker(ws_broker: BrokerThread, ctx: Ctx) -> None:
    worker = RawWorker(ctx, ws_broker.endpoint, "majortomo", b"mdp.echo")
    worker.ready()
    wait_until(lambda: workers_of(ws_broker, "mdp.echo") == 1, what="mdp worker")

    async def main() -> jc.Reply:
        async with await JsonClient.connect(url(ws_broker), "xyzzy") as client:
            partials: list[jc.Partial] = []
            fut = asyncio.ensure_future(
                client.request("mdp.echo", {"q": 1}, on_partial=partials.append)
            )
            addr, body = await asyncio.to_thread(worker.request)
            assert body == [b'{"q":1}']
            worker.partial(addr, b"p1")
            worker.final(addr, b'{"a":2}')
            reply = await fut
            assert [p.data for p in partials] == [base64.b64encode(b"p1").decode()]
            return reply

    reply = run(main())
    assert payload_of(reply) == {"a": 2}


def test_mdp_client_to_json_service_with_partials(ws_broker: BrokerThread, ctx: Ctx) -> None:
    async def main() -> None:
        svc = await JsonClient.connect(url(ws_broker), "xyzzy", name="stream", methods=[])
        client = RawClient(ctx, ws_broker.endpoint, "majortomo")
        client.send(b"stream", b"one", b"two")
        req = await svc.next_request()
        assert req.frames == [base64.b64encode(b"one").decode(), base64.b64encode(b"two").decode()]
        assert req.consumer == "mdp:clients"
        await svc.reply(req, {"n": 1}, final=False)
        await svc.reply(req, data=b"last")
        got = [await asyncio.to_thread(client.recv) for _ in range(2)]
        assert got == [(False, [b'{"n":1}']), (True, [b"last"])]
        await svc.close()

    run(main())


def test_middleman_and_json_meet(ws_broker: BrokerThread) -> None:
    async def main() -> None:
        svc = await JsonClient.connect(url(ws_broker), "xyzzy", name="echo", methods=[])
        mm = await MmClient.connect(url(ws_broker), "xyzzy")

        async def serve() -> None:
            req = await svc.next_request()
            assert req.data == base64.b64encode(b"ping body").decode()
            assert req.headers is not msgspec.UNSET and req.headers["Reqid"] == "abc"
            await svc.reply(req, data=b"pong body", headers={"Reqid": "abc"})

        task = asyncio.ensure_future(serve())
        res = await mm.request("echo", "ping body", [("ReqID", "abc")])
        await task
        assert res.body == "pong body"
        assert res.headers == (("Reqid", "abc"), ("Cid", svc.cid), ("Uid", ""))
        # a middleman publication reaches a JSON subscriber, with Cid/Uid headers
        await svc.subscribe("chat.*")
        await mm.send("PUB", "chat.x", '{"t":1}')
        event = await svc.next_event()
        assert event.topic == "chat.x" and payload_of(event) == {"t": 1}
        assert event.headers == {"Cid": mm.cid, "Uid": ""}
        await mm.close()
        await svc.close()

    run(main())


def test_pubsub_wildcards_and_unsubscribe(ws_broker: BrokerThread) -> None:
    async def main() -> None:
        a = await JsonClient.connect(url(ws_broker), "xyzzy")
        b = await JsonClient.connect(url(ws_broker), "xyzzy")
        await a.subscribe("orders.>")
        await b.subscribe("orders.*")
        assert await a.publish("orders.eu.created", {"id": 1}) == 1
        assert await a.publish("orders.eu", "x") == 2
        got_a = [(await a.next_event()).topic for _ in range(2)]
        got_b = (await b.next_event()).topic
        assert got_a == ["orders.eu.created", "orders.eu"]
        assert got_b == "orders.eu"
        await b.unsubscribe("orders.*")
        assert await a.publish("orders.us", None) == 1
        # $sys.broadcast is the one system topic clients may publish on
        await b.subscribe("$sys.broadcast")
        assert await a.publish("$sys.broadcast", {"hello": "all"}) == 1
        event = await b.next_event()
        assert payload_of(event) == {"hello": "all"}
        with pytest.raises(MaitredError) as info:
            await a.publish("$sys.service.online", {})
        assert info.value.code == ErrorCode.FORBIDDEN
        with pytest.raises(MaitredError) as info:
            await a.subscribe("bad..pattern")
        assert info.value.code == ErrorCode.BAD_REQUEST
        await a.close()
        await b.close()

    run(main())


def test_subscriptions_past_the_limit_are_refused(
    make_broker: Callable[..., BrokerThread],
) -> None:
    # the connection's own MSG:<id> channel is one of the three
    broker = make_broker("[broker]\nmax_subscriptions = 3\n" + WS)

    async def main() -> None:
        client = await JsonClient.connect(url(broker), "xyzzy")
        await client.subscribe("a")
        await client.subscribe("b")
        with pytest.raises(MaitredError) as info:
            await client.subscribe("c")
        assert info.value.code == ErrorCode.QUEUE_FULL
        assert "at most 3" in info.value.reason
        assert await client.publish("b", "still") == 1
        assert payload_of(await client.next_event()) == "still"
        await client.close()

    run(main())
    assert broker.stats()["subscriptions.refused"] == 1


def test_sys_events_service_lifecycle(ws_broker: BrokerThread) -> None:
    async def main() -> None:
        watcher = await JsonClient.connect(url(ws_broker), "xyzzy")
        await watcher.subscribe("$sys.>")
        svc = await JsonClient.connect(url(ws_broker), "xyzzy", name="weather", methods=["now"])
        seen: list[tuple[str, Any]] = []
        while not any(t == "$sys.worker.ready" and p["service"] == "weather:now" for t, p in seen):
            e = await watcher.next_event()
            seen.append((e.topic, payload_of(e)))
        topics = [t for t, _ in seen]
        assert "$sys.session.join" in topics
        assert ("$sys.service.online", {"service": "weather"}) in seen
        await svc.close()
        while ("$sys.service.offline", {"service": "weather:now"}) not in seen:
            e = await watcher.next_event()
            seen.append((e.topic, payload_of(e)))
        assert any(t == "$sys.worker.gone" for t, _ in seen)
        await watcher.close()

    run(main())


def test_bad_input(ws_broker: BrokerThread) -> None:
    async def main() -> None:
        # wrong key: close 1008
        with pytest.raises(MaitredError) as info:
            await JsonClient.connect(url(ws_broker), "wrong")
        assert info.value.code == ErrorCode.UNAUTHORIZED
        # not a hello first: close 1008
        async with connect(url(ws_broker), subprotocols=["maitred.json"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "maitred.json"
            await ws.send('{"type":"subscribe","topic":"x"}')
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1008
        client = await JsonClient.connect(url(ws_broker), "xyzzy")
        for frame in ("not json", '{"type":"nope"}', '{"type":"request"}', "[]"):
            await client.ws.send(frame)
            err = await asyncio.wait_for(client.errors.get(), 5)
            assert err.code == 400 and err.message.startswith("invalid message")
        await client.ws.send(b"\x00binary")
        err = await asyncio.wait_for(client.errors.get(), 5)
        assert err.code == 400 and "binary" in err.message
        await client.ws.send(
            json.dumps({"type": "request", "id": 9, "destination": "x", "data": "!!"})
        )
        err = await asyncio.wait_for(client.errors.get(), 5)
        assert err.id == 9 and err.code == 400
        # a reply for a request it never got
        await client.ws.send(json.dumps({"type": "reply", "id": 12345, "payload": 1}))
        err = await asyncio.wait_for(client.errors.get(), 5)
        assert err.id == 12345 and err.code == 404
        # still alive
        await client.subscribe("still.alive")
        await client.close()

    run(main())
    stats = ws_broker.stats()
    assert stats["ws.json.invalid"] == 5
    assert stats["ws.json.bad_hello"] == 1
