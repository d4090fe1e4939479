"""The ws transport's limits over real sockets: the cap on open connections (503 at the
opening handshake while established clients go on), the bounds of a maitred.json hello, and
protocol errors that cannot flood the log."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.helpers import BrokerThread

T = TypeVar("T")


def _ws(**keys: object) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return f'[transports.ws]\nlisten = "127.0.0.1:0"\nping_interval = 0\n{extra}'


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


async def _hello(url: str, **fields: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(url, subprotocols=["maitred.json"])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "hello", "key": "xyzzy", **fields}))
    return ws, json.loads(await ws.recv())


def test_connections_past_the_cap_get_503_while_others_work(
    make_broker: Callable[..., BrokerThread],
) -> None:
    broker = make_broker(_ws(max_connections=2))
    url = broker.endpoints["ws"][0]

    async def main() -> None:
        a, welcome_a = await _hello(url, name="a", methods=["m"])
        b, welcome_b = await _hello(url, name="b")
        assert welcome_a["type"] == welcome_b["type"] == "welcome"
        for _ in range(3):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, subprotocols=["maitred.json"])  # type: ignore[list-item]
            assert refused.value.response.status_code == 503
            assert b"too many connections" in refused.value.response.body
        # the established clients go on: b calls a's service through the broker
        await b.send(json.dumps({"type": "request", "id": 1, "destination": "a", "payload": "x"}))
        request = json.loads(await a.recv())
        assert request["type"] == "request"
        await a.send(json.dumps({"type": "reply", "id": request["id"], "payload": "y"}))
        reply = json.loads(await b.recv())
        assert reply["type"] == "reply" and reply["payload"] == "y"
        await b.close()
        # a freed place is taken again
        for _ in range(100):
            try:
                c, welcome_c = await _hello(url, name="c")
                break
            except InvalidStatus:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the freed place was not given again")
        assert welcome_c["type"] == "welcome"
        await c.close()
        await a.close()

    run(main())
    assert broker.stats()["ws.connections_refused"] >= 3


def test_a_hello_with_too_many_methods_is_refused(
    make_broker: Callable[..., BrokerThread],
) -> None:
    broker = make_broker(_ws(max_hello_methods=10, max_hello_size=1 << 20, max_frame_size=1 << 20))
    url = broker.endpoints["ws"][0]

    async def main() -> None:
        ws, answer = await _hello(url, name="big", methods=[f"m{i}" for i in range(60_000)])
        assert answer["type"] == "error" and answer["code"] == 413
        assert "60000 methods" in answer["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        ok, welcome = await _hello(url, name="small", methods=[f"m{i}" for i in range(10)])
        assert welcome["type"] == "welcome" and len(welcome["services"]) == 11
        await ok.close()

    run(main())
    assert broker.stats()["ws.json.hello_too_large"] == 1
    assert broker.call(lambda: "big" not in broker.broker.router.services)


def test_a_hello_larger_than_its_limit_is_refused(
    make_broker: Callable[..., BrokerThread],
) -> None:
    broker = make_broker(_ws(max_hello_size=1000))
    url = broker.endpoints["ws"][0]

    async def main() -> None:
        ws, answer = await _hello(url, name="x" * 2000)
        assert answer["type"] == "error" and answer["code"] == 413
        with pytest.raises(ConnectionClosed):
            await ws.recv()

    run(main())
    assert broker.stats()["ws.json.hello_too_large"] == 1


def test_protocol_errors_cannot_flood_the_log(
    make_broker: Callable[..., BrokerThread], caplog: pytest.LogCaptureFixture
) -> None:
    broker = make_broker(_ws())
    url = broker.endpoints["ws"][0]
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        ws, welcome = await _hello(url, name="n")
        assert welcome["type"] == "welcome"
        for _ in range(1000):
            await ws.send("{not json")
        for _ in range(1000):
            answer = json.loads(await ws.recv())
            assert answer["type"] == "error" and answer["code"] == 400
        await ws.close()

    async def garbage() -> None:  # not even an HTTP request: websockets answers 400
        host, _, port = url.removeprefix("ws://").rpartition(":")
        for line in (b"\x16\x03\x01 hello\r\n\r\n", b"GET / HTTP/1.1\r\nbad\r\n\r\n") * 50:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(line)
            await reader.read()  # until the server closes
            writer.close()
            await writer.wait_closed()

    run(main())
    run(garbage())
    assert broker.stats()["ws.json.invalid"] == 1000
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # (websockets logs a request it cannot parse at DEBUG, with its traceback; nothing louder)
    assert not [r for r in loud if r.exc_info or r.levelno >= logging.ERROR]
    assert len(loud) <= 3, [r.getMessage() for r in loud]
    broker.stop(drain_timeout=0)
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("1,000 WebSocket protocol errors from 127.0.0.1") for m in summaries)
