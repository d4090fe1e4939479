"""Each worker says where it is (``mmi.workers``' ``address``, docs/reference/mmi.md), over real
sockets: an MDP worker over ``ipc://`` (the socket path), WebSocket workers of both dialects
(the remote ``HOST:PORT`` and the connection's name or identity), a message-switch server (its
login token). MDP over TCP (``HOST:PORT``) is shown by the dashboard test (test_admin.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from maitred.transports.ws.client import JsonClient, MmClient
from tests.e2e.helpers import BrokerThread, RawClient, RawWorker, wait_until
from tests.e2e.http_helpers import RawHttp, connect, endpoint_of, short_socket_path

TOML = """
[transports.mdp]
endpoints = ["ipc://{path}"]

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0

[transports.http]
listen = ["127.0.0.1:0"]

[store]
backend = "memory"
"""


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    b = BrokerThread(TOML.format(path=short_socket_path("mdp.sock")))
    try:
        yield b
    finally:
        b.stop(drain_timeout=0)


def workers(ctx: zmq.Context[Any], broker: BrokerThread, service: str) -> list[dict[str, Any]]:
    client = RawClient(ctx, broker.endpoint, "rfc")
    try:
        rows: list[dict[str, Any]] = json.loads(client.call(b"mmi.workers", service.encode())[0])
        return rows
    finally:
        client.close()


def has_worker(broker: BrokerThread, service: str) -> bool:
    def check() -> bool:
        svc = broker.broker.router.services.get(service)
        return svc is not None and bool(svc.workers)

    return broker.call(check)


def test_an_mdp_worker_over_ipc_is_named_by_its_socket_path(
    broker: BrokerThread, ctx: zmq.Context[Any]
) -> None:
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"echo")
    worker.ready()
    wait_until(lambda: has_worker(broker, "echo"), what="the worker's READY")
    [row] = workers(ctx, broker, "echo")
    assert row["transport"] == "mdp"
    assert row["address"] == broker.endpoint.removeprefix("ipc://")


def test_websocket_workers_are_named_by_their_address_and_name(
    broker: BrokerThread, ctx: zmq.Context[Any]
) -> None:
    url = broker.endpoints["ws"][0]

    async def main() -> None:
        svc = await JsonClient.connect(url, "xyzzy", name="calc", methods=["add"])
        mm = await MmClient.connect(url, "xyzzy")
        await mm.send("EREQ", "mm-echo")
        try:
            await asyncio.to_thread(
                wait_until, lambda: has_worker(broker, "mm-echo"), what="the EREQ"
            )
            json_port = svc.ws.local_address[1]
            mm_port = mm.ws.local_address[1]
            rows = await asyncio.to_thread(workers, ctx, broker, "")
            by_service = {row["service"]: row for row in rows}
            assert by_service.keys() == {"calc", "calc:add", "mm-echo"}
            assert by_service["calc"]["address"] == f"127.0.0.1:{json_port} (calc)"
            assert by_service["calc:add"]["address"] == f"127.0.0.1:{json_port} (calc)"
            # a middleman connection has no name of its own: its identity (its key's role)
            who = by_service["mm-echo"]["identity"]
            assert who
            assert by_service["mm-echo"]["address"] == f"127.0.0.1:{mm_port} ({who})"
        finally:
            await mm.close()
            await svc.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_switch_server_is_named_by_its_login(
    broker: BrokerThread, ctx: zmq.Context[Any], conns: list[RawHttp]
) -> None:
    ep = endpoint_of(broker, "http://")
    main, poll = connect(conns, ep, "srv:1"), connect(conns, ep, "srv:1")
    main.do("GET", "/persistent/foo")
    poll.send("POST", "/transfer", b'{"timeout":30.0,"queues":["foo"]}')
    wait_until(lambda: has_worker(broker, "foo"), what="the switch worker of foo")
    [row] = workers(ctx, broker, "foo")
    assert row["transport"] == "http"
    assert row["address"] == "srv:1"
