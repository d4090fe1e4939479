"""maitred's own Python MDP client and worker through maitred, in every dialect pairing,
sync and asyncio, with partial replies; and the embedded broker with inproc:// peers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
import zmq.asyncio

from maitred.core.app import embedded
from maitred.core.local import LocalClient, LocalWorker
from maitred.transports.mdp.adapter import MdpTransport
from maitred.transports.mdp.client import AsyncClient, AsyncWorker, Client, FinalReply, Worker
from tests.e2e.helpers import BrokerThread, wait_until

DIALECTS = ("0.1", "0.2", "rfc-envelope", "majortomo")


def upper(body: list[bytes]) -> list[bytes]:
    return [frame.upper() for frame in body]


def chunks(body: list[bytes]) -> Iterator[Any]:
    yield [b"1/2"]
    yield [b"2/2"]
    yield FinalReply([b"".join(body)])


def _workers(broker: BrokerThread, name: str) -> int:
    def count() -> int:
        svc = broker.broker.router.services.get(name)
        return len(svc.workers) if svc else 0

    return broker.call(count)


@pytest.mark.parametrize("wdialect", DIALECTS)
@pytest.mark.parametrize("cdialect", DIALECTS)
def test_sync_client_and_worker_every_pairing(
    broker: BrokerThread, ctx: zmq.Context[Any], cdialect: str, wdialect: str
) -> None:
    stop = threading.Event()
    handler = upper if wdialect == "0.1" else chunks
    worker = Worker(broker.endpoint, "svc", handler, dialect=wdialect, context=ctx)
    thread = threading.Thread(target=worker.run, kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: _workers(broker, "svc") == 1)
        with Client(broker.endpoint, dialect=cdialect, context=ctx, timeout=5) as client:
            replies = list(client.stream("svc", b"ab", b"cd"))
        if wdialect == "0.1":
            assert replies == [(True, [b"AB", b"CD"])]
        elif cdialect == "0.1":
            assert replies == [(True, [b"abcd"])]  # 0.1 clients get the final only
        else:
            assert replies == [(False, [b"1/2"]), (False, [b"2/2"]), (True, [b"abcd"])]
    finally:
        stop.set()
        thread.join(5)
        worker.close()


def test_async_client_many_in_flight_over_two_async_workers(broker: BrokerThread) -> None:
    async def main() -> list[list[bytes]]:
        actx = zmq.asyncio.Context()
        try:

            async def slowish(body: list[bytes]) -> list[bytes]:
                await asyncio.sleep(0)
                return [b"ok:" + body[0]]

            w1 = AsyncWorker(broker.endpoint, "aw", slowish, context=actx)
            w2 = AsyncWorker(broker.endpoint, "aw", slowish, dialect="majortomo", context=actx)
            tasks = [asyncio.ensure_future(w.run()) for w in (w1, w2)]
            async with AsyncClient(broker.endpoint, context=actx, timeout=5) as client:
                replies = await asyncio.gather(
                    *(client.request("aw", b"%d" % i) for i in range(40))
                )
            for w in (w1, w2):
                w.stop()
            await asyncio.gather(*tasks)
            for w in (w1, w2):
                await w.close()
            return replies
        finally:
            actx.destroy(linger=0)

    replies = asyncio.run(main())
    assert replies == [[b"ok:%d" % i] for i in range(40)]


def test_embedded_broker_inproc_and_local_peers() -> None:
    """The Majordomo seed's promise: broker, clients and workers in one process."""

    async def main() -> tuple[list[bytes], list[bytes]]:
        async with embedded(mdp=["inproc://maitred-embedded"]) as broker:
            transport = broker.transport("mdp")
            assert isinstance(transport, MdpTransport)

            async def double(body: list[bytes]) -> list[bytes]:
                return [body[0] * 2]

            async with LocalWorker(broker, "double", double):
                # an MDP client on inproc:// reaches the in-process worker...
                actx = zmq.asyncio.Context.shadow(transport.context.underlying)
                async with AsyncClient("inproc://maitred-embedded", context=actx) as client:
                    via_mdp = await client.request("double", b"ab")
                # ...and an in-process client reaches an MDP worker on inproc://
                mdp_worker = AsyncWorker(
                    "inproc://maitred-embedded",
                    "upper",
                    lambda body: [b.upper() for b in body],
                    context=actx,
                )
                task = asyncio.ensure_future(mdp_worker.run())
                async with LocalClient(broker) as local:
                    via_local = await local.request("upper", b"xy", timeout=5)
                mdp_worker.stop()
                await task
                await mdp_worker.close()
                return via_mdp, via_local

    assert asyncio.run(main()) == ([b"abab"], [b"XY"])
