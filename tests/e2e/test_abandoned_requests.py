"""Requests a caller leaves behind: a WebSocket JSON client that asks for no deadline
(``"timeout": 0``) and then disconnects takes its waiting requests with it, over real sockets;
nothing it queued keeps services alive or keeps other callers (REST, MDP) out with 429."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from maitred.core.errors import ErrorCode, MaitredError
from maitred.transports.http.client import RestClient
from maitred.transports.ws.client import JsonClient
from tests.e2e.helpers import BrokerThread, RawClient, RawWorker, wait_until
from tests.e2e.http_helpers import endpoint_of, http_toml

Ctx = zmq.Context[Any]

WS = """
[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
"""


def services(broker: BrokerThread, prefix: str) -> int:
    return broker.call(lambda: sum(n.startswith(prefix) for n in broker.broker.router.services))


def queued(broker: BrokerThread, service: str) -> int:
    def count() -> int:
        svc = broker.broker.router.services.get(service)
        return svc.queued if svc else 0

    return broker.call(count)


async def flood(url: str, names: list[str], then: Callable[[], None]) -> None:
    """Send one request with ``"timeout": 0`` to each name, call ``then`` while connected,
    and disconnect."""
    client = await JsonClient.connect(url, "xyzzy")
    for i, name in enumerate(names):
        await client.ws.send(
            json.dumps(
                {"type": "request", "id": i, "destination": name, "payload": i, "timeout": 0}
            )
        )
    await asyncio.get_running_loop().run_in_executor(None, then)
    await client.close()


def test_a_gone_json_client_leaves_no_services_behind(
    make_broker: Callable[..., BrokerThread],
) -> None:
    broker = make_broker(WS)
    url = broker.endpoints["ws"][0]
    names = [f"gone.{i}" for i in range(4000)]

    def all_queued() -> None:
        wait_until(lambda: services(broker, "gone.") == 4000, 20.0, "4000 services")
        assert broker.call(lambda: broker.broker.router.services["gone.7"].queue[0].deadline) < 1e9

    asyncio.run(asyncio.wait_for(flood(url, names, all_queued), 40))
    wait_until(lambda: services(broker, "gone.") == 0, 10.0, "the services forgotten")
    assert broker.stats()["requests.dropped_caller_gone"] == 4000


def test_a_gone_json_client_does_not_keep_others_out(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker(WS + http_toml(["127.0.0.1:0"]) + "\n[services.busy]\nmax_queue = 500\n")
    url = broker.endpoints["ws"][0]
    rest = RestClient(endpoint_of(broker, "http://"), timeout=10.0)
    mdp = RawClient(ctx, broker.endpoint, "rfc")

    def refused_while_connected() -> None:
        wait_until(lambda: queued(broker, "busy") == 500, 20.0, "a full queue")
        assert mdp.call(b"busy", b"m", timeout=5.0)[0] == b"429"
        with pytest.raises(MaitredError) as info:
            rest.call("busy", b"r", timeout=5.0)
        assert info.value.code == ErrorCode.QUEUE_FULL

    asyncio.run(asyncio.wait_for(flood(url, ["busy"] * 500, refused_while_connected), 40))
    wait_until(lambda: queued(broker, "busy") == 0, 10.0, "the queue emptied")

    worker = RawWorker(ctx, broker.endpoint, "rfc", b"busy")
    worker.ready()
    served: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            addr, body = worker.request(10.0)
            served.append(body[0])
            worker.final(addr, b"ok", *body)

    server = threading.Thread(target=serve)
    server.start()
    try:
        assert mdp.call(b"busy", b"m2", timeout=10.0) == [b"ok", b"m2"]
        assert rest.call("busy", b"r2", timeout=10.0) == [b"ok", b"r2"]
    finally:
        server.join(15)
        rest.close()
    assert served == [b"m2", b"r2"]  # none of the gone client's requests reached the worker
