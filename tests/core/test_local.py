"""The in-process ``local`` transport (core/local.py): LocalClient and LocalWorker on a broker
with no transports at all (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.local import LocalClient, LocalWorker
from maitred.core.routing.model import ReplyKind
from maitred.core.runtime import Broker
from maitred.plugins.testing import running_broker


def run(test: Callable[[Broker], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running_broker(load_entry_points=False) as broker:
            await asyncio.wait_for(test(broker), 10)

    asyncio.run(main())


def test_request_reply_partials_and_errors() -> None:
    async def echo(body: list[bytes]) -> list[bytes]:
        return body

    async def parts(body: list[bytes]) -> AsyncIterator[list[bytes]]:
        for i in range(3):
            yield [b"part-%d" % i, *body]

    async def empty(body: list[bytes]) -> AsyncIterator[list[bytes]]:
        if False:  # an async generator that yields nothing: an empty final reply
            yield body

    async def refuse(body: list[bytes]) -> list[bytes]:
        raise MaitredError("not today", ErrorCode.FORBIDDEN)

    async def test(broker: Broker) -> None:
        async with (
            LocalWorker(broker, "echo", echo),
            LocalWorker(broker, "parts", parts),
            LocalWorker(broker, "empty", empty),
            LocalWorker(broker, "no", refuse),
            LocalClient(broker, label="c") as client,
        ):
            assert await client.request("echo", b"a", b"b") == [b"a", b"b"]
            got = [x async for x in client.stream("parts", b"x")]
            assert got == [
                (False, [b"part-0", b"x"]),
                (False, [b"part-1", b"x"]),
                (True, [b"part-2", b"x"]),
            ]
            assert await client.request("parts", b"y") == [b"part-2", b"y"]
            assert await client.request("empty") == []
            with pytest.raises(MaitredError) as info:
                await client.request("no")
            assert info.value.code is ErrorCode.FORBIDDEN
            assert "not today" in info.value.reason

    run(test)


@pytest.mark.allow_error_logs("local worker for (boom|sync) failed")
def test_a_failing_or_sync_handler_answers_internal() -> None:
    async def boom(body: list[bytes]) -> list[bytes]:
        raise RuntimeError("handler bug")

    def sync(body: list[bytes]) -> Sequence[bytes]:  # not async: refused at the first request
        return body

    async def test(broker: Broker) -> None:
        async with (
            LocalWorker(broker, "boom", boom),
            LocalWorker(broker, "sync", sync),  # type: ignore[arg-type]
            LocalClient(broker) as client,
        ):
            for service, text in (("boom", "handler bug"), ("sync", "must be async")):
                with pytest.raises(MaitredError) as info:
                    await client.request(service)
                assert info.value.code is ErrorCode.INTERNAL
                assert text in info.value.reason

    run(test)


def test_timeout_and_cancel_on_abandon() -> None:
    started = asyncio.Event()

    async def slow(body: list[bytes]) -> list[bytes]:
        started.set()
        await asyncio.sleep(3600)
        return body

    async def test(broker: Broker) -> None:
        worker = LocalWorker(broker, "slow", slow)
        async with LocalClient(broker) as client:
            with pytest.raises(MaitredError) as info:
                await client.request("slow", timeout=0.2)
            assert info.value.code is ErrorCode.TIMEOUT
            # the worker's task is cancelled when the worker closes
            await started.wait()
            assert worker._tasks
            worker.close()
            await asyncio.sleep(0)
            assert all(t.cancelled() or t.done() for t in worker._tasks)

    run(test)


def test_publish_subscribe_and_a_full_event_queue() -> None:
    async def test(broker: Broker) -> None:
        async with LocalClient(broker, max_events=2) as sub, LocalClient(broker) as pub:
            assert sub.subscribe("news.*") is True
            assert sub.subscribe("news.*") is False
            for i in range(3):
                assert pub.publish("news.x", b"%d" % i, headers={"k": "v"}) == 1
            assert sub.events.qsize() == 2 and sub.dropped_events == 1
            assert sub.events.get_nowait() == ("news.x", [b"0"], {"k": "v"})
            assert sub.unsubscribe("news.*") is True
            assert pub.publish("news.x", b"late") == 0

    run(test)


def test_the_default_sink_methods_of_a_worker_session() -> None:
    """A LocalWorker's session is never a caller: replies, errors and events to it are
    dropped, and a request for a service it does not serve is refused."""

    async def echo(body: list[bytes]) -> list[bytes]:
        return body

    async def test(broker: Broker) -> None:
        async with LocalWorker(broker, "echo", echo) as w:
            request: Any = None
            assert w.deliver_reply(request, ReplyKind.FINAL, [], None) is None
            assert w.deliver_error(request, MaitredError("x")) is None
            assert w.deliver_event("t", [], {}) is None
            assert w.worker_removed(w.worker, "gone") is None
        async with LocalClient(broker) as client:
            with pytest.raises(MaitredError, match="serves nothing"):
                client.deliver_request(w.worker, request)

    run(test)
