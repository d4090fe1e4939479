"""A node of a cluster that dies (``kill -9``) or stops (``SIGSTOP``) while it holds requests of
another node: every request gets exactly one outcome, redelivery by policy, late replies dropped."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from maitred.core.errors import ErrorCode, MaitredError
from maitred.plugins import nats_testing
from maitred.plugins.nats_testing import NatsStarter
from maitred.plugins.testing import ServeStarter
from maitred.transports.ws.client import JsonClient
from tests.e2e import cluster_helpers
from tests.e2e.cluster_helpers import (
    mdp,
    run,
    start_node,
    stats,
    wait_service,
    ws,
)
from tests.e2e.helpers import RawClient, RawWorker

pytestmark = pytest.mark.slow

# the fixtures: a real nats-server, maitred serve subprocesses
nats_server = nats_testing.nats_server
maitred_serve = cluster_helpers.graceful_serve

Ctx = zmq.Context[Any]
BINARY = bytes(range(256)) * 3


@pytest.mark.allow_error_logs()
def test_kill_9_of_the_serving_node_gives_every_request_one_outcome(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    url = nats_server().url
    extra = "[services.default]\nrequest_timeout = 6.0\n"
    a = start_node(maitred_serve, tmp_path, url, "a", extra=extra)
    c = start_node(maitred_serve, tmp_path, url, "c", extra=extra)
    workers = [RawWorker(ctx, mdp(c), "rfc", b"work") for _ in range(4)]
    for w in workers:
        w.ready()
    wait_service(ctx, a, "work")

    async def main() -> list[int]:
        async with await JsonClient.connect(ws(a), "xyzzy") as jc:

            async def one(i: int) -> int:
                try:
                    await jc.request("work", data=str(i).encode(), timeout=6)
                except MaitredError as exc:
                    return int(exc.code)
                return 200

            calls = [asyncio.ensure_future(one(i)) for i in range(64)]
            await asyncio.to_thread(workers[0].request)  # requests reached c
            c.kill()
            return await asyncio.gather(*calls)

    outcomes = run(main())
    assert len(outcomes) == 64
    assert set(outcomes) <= {ErrorCode.WORKER_DIED, ErrorCode.TIMEOUT}
    assert ErrorCode.WORKER_DIED in outcomes
    for w in workers:
        w.close()


def test_kill_9_with_redeliver_and_a_worker_on_b_loses_nothing(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    url = nats_server().url
    extra = "[services.default]\nrequest_timeout = 8.0\nredeliver = true\n"
    a = start_node(maitred_serve, tmp_path, url, "a", extra=extra)
    b = start_node(maitred_serve, tmp_path, url, "b", extra=extra)
    c = start_node(maitred_serve, tmp_path, url, "c", extra=extra)
    doomed = RawWorker(ctx, mdp(c), "rfc", b"idem")
    doomed.ready()
    wait_service(ctx, a, "idem")
    stop = threading.Event()

    def serve_on_b() -> None:
        worker = RawWorker(ctx, mdp(b), "rfc", b"idem")
        worker.ready()
        while not stop.is_set():
            try:
                addr, body = worker.request(timeout=0.2)
            except AssertionError:
                continue
            except Exception:
                continue
            worker.final(addr, b"ok:" + body[0])
        worker.close()

    async def main() -> list[Any]:
        async with await JsonClient.connect(ws(a), "xyzzy") as jc:

            async def one(i: int) -> Any:
                try:
                    reply = await jc.request("idem", data=str(i).encode(), timeout=8)
                except MaitredError as exc:
                    return int(exc.code)
                return reply.data

            calls = [asyncio.ensure_future(one(i)) for i in range(64)]
            await asyncio.to_thread(doomed.request)  # c holds requests now
            thread = threading.Thread(target=serve_on_b)
            thread.start()
            c.kill()
            try:
                return await asyncio.gather(*calls)
            finally:
                stop.set()
                await asyncio.to_thread(thread.join, 10)

    outcomes = run(main(), timeout=30)
    assert len(outcomes) == 64
    assert all(isinstance(o, str) for o in outcomes), outcomes
    doomed.close()


def test_sigstop_past_the_window_then_sigcont_drops_late_replies(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    url = nats_server().url
    a = start_node(maitred_serve, tmp_path, url, "a", interval=0.2)
    c = start_node(maitred_serve, tmp_path, url, "c", interval=0.2)
    worker = RawWorker(ctx, mdp(c), "rfc", b"paused")
    worker.ready()
    wait_service(ctx, a, "paused")
    client = RawClient(ctx, mdp(a), "rfc")
    client.send(b"paused", b"q")
    addr, _ = worker.request()
    c.send_signal(signal.SIGSTOP)
    try:
        # a takes c for gone after 3 missed announcements: the request fails, once
        final, body = client.recv(timeout=5)
        assert final
        worker.final(addr, b"late answer")  # waits in c's socket while c is stopped
    finally:
        c.send_signal(signal.SIGCONT)
    assert body[:1] == [b"502"], body
    wait_service(ctx, a, "paused")  # c is back (same epoch, a join again)
    deadline = time.monotonic() + 5
    while stats(ctx, a).get("cluster.dropped.late_reply", 0) < 1:
        assert time.monotonic() < deadline, "the late reply was not dropped"
        time.sleep(0.05)
    with pytest.raises(AssertionError, match="no message"):
        client.recv(timeout=0.5)  # no second outcome
    client.close()
    worker.close()
