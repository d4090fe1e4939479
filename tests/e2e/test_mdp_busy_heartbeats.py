"""maitred's AsyncWorker keeps heartbeating while its handler works, over real sockets: the
broker hears from it during a request that lasts several liveness windows, so it is never
suspected (a silent busy worker would get no new request and lose its pipelined credit)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import zmq
import zmq.asyncio

from maitred.transports.mdp.client import AsyncClient, AsyncWorker
from tests.e2e.helpers import BrokerThread, wait_until

#: a liveness window of 0.6 s
LIVE = "[liveness]\nheartbeat_interval = 0.2\nliveness = 3\n"


def worker_state(broker: BrokerThread, service: str) -> tuple[float, bool, int] | None:
    """(seconds heard from it since it got its request, suspect, requests held)."""

    def read() -> tuple[float, bool, int] | None:
        svc = broker.broker.router.services.get(service)
        if svc is None or not svc.workers:
            return None
        w = next(iter(svc.workers))
        return w.touched - w.progress, w.suspect, len(w.inflight)

    return broker.call(read)


def test_a_busy_async_worker_stays_alive(make_broker: Callable[..., BrokerThread]) -> None:
    broker = make_broker(LIVE)
    release = threading.Event()

    async def main() -> list[bytes]:
        actx: zmq.asyncio.Context = zmq.asyncio.Context()
        try:

            async def long_job(body: list[bytes]) -> list[bytes]:
                while not release.is_set():
                    await asyncio.sleep(0.01)
                return [b"done:" + body[0]]

            worker = AsyncWorker(
                broker.endpoint, "long", long_job, heartbeat_interval=0.2, context=actx
            )
            task = asyncio.ensure_future(worker.run())
            async with AsyncClient(broker.endpoint, context=actx, timeout=20) as client:
                call = asyncio.ensure_future(client.request("long", b"x"))

                def heard_while_busy() -> bool:
                    state = worker_state(broker, "long")
                    # heard from it more than two windows after it got the request
                    return state is not None and state[2] == 1 and state[0] > 1.2

                loop = asyncio.get_running_loop()
                await loop.run_in_executor(
                    None, lambda: wait_until(heard_while_busy, 10.0, "heartbeats while busy")
                )
                state = worker_state(broker, "long")
                assert state is not None and not state[1]
                release.set()
                reply = await call
            worker.stop()
            await task
            await worker.close()
            return reply
        finally:
            actx.destroy(linger=0)

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [b"done:x"]
    assert broker.stats().get("workers.suspected", 0) == 0
