"""In-process clients and workers: sessions of the ``local`` transport, no sockets at all.

For programs that embed the broker (see :func:`maitred.core.app.embedded`)::

    async with embedded(mdp=["tcp://127.0.0.1:5555"]) as broker:
        async def echo(body):
            return body
        async with LocalWorker(broker, "echo", echo):
            async with LocalClient(broker) as client:
                assert await client.request("echo", b"hi") == [b"hi"]

Local workers are workers like any other: MDP (and later HTTP, WebSocket) clients reach them, and
local clients reach workers on every transport.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Self, cast

from maitred.core.access import ANONYMOUS, Identity
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import BaseSink, Body, Headers, ReplyKind, Request, Session, Worker
from maitred.core.runtime import Broker

log = logging.getLogger("maitred.core.local")

#: what a request's queue receives: (final, body) or the error that ended it
_Item = tuple[bool, list[bytes]] | MaitredError

Handler = Callable[[list[bytes]], Awaitable[Sequence[bytes]] | AsyncIterator[Sequence[bytes]]]


class _Base(BaseSink):
    def __init__(self, broker: Broker, identity: Identity, label: str) -> None:
        self._broker = broker
        self._router = broker.router
        self._clock = broker.clock
        self.session: Session = self._router.open_session(
            "local", self, identity, self._clock(), label=label
        )

    def close(self) -> None:
        self._router.close_session(self.session, self._clock(), "closed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # SessionSink defaults
    def deliver_request(self, worker: Worker, request: Request) -> None:
        raise MaitredError("this local session serves nothing", ErrorCode.INTERNAL)


class LocalClient(_Base):
    """Call services, publish and subscribe from inside the broker's process."""

    def __init__(
        self,
        broker: Broker,
        identity: Identity = ANONYMOUS,
        label: str = "",
        max_events: int = 10_000,
    ) -> None:
        super().__init__(broker, identity, label)
        #: publications for this client's subscriptions: (topic, body, headers)
        self.events: asyncio.Queue[tuple[str, list[bytes], dict[str, str]]] = asyncio.Queue(
            max_events
        )
        self.dropped_events = 0

    async def stream(
        self, service: str, *body: bytes, timeout: float | None = None
    ) -> AsyncIterator[tuple[bool, list[bytes]]]:
        """Yield ``(final, body)`` for each partial reply and then the final one.
        Raises :class:`MaitredError` when the request fails (its code says why)."""
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        request = self._router.submit(
            self.session, service, list(body), queue, self._clock(), timeout=timeout
        )
        try:
            while True:
                item = await queue.get()
                if isinstance(item, MaitredError):
                    raise item
                yield item
                if item[0]:
                    return
        finally:
            if request is not None:
                self._router.cancel(request, self._clock())

    async def request(
        self, service: str, *body: bytes, timeout: float | None = None
    ) -> list[bytes]:
        """The final reply's body (partials are skipped)."""
        async for final, frames in self.stream(service, *body, timeout=timeout):
            if final:
                return frames
        raise MaitredError("no final reply", ErrorCode.INTERNAL)  # pragma: no cover

    def subscribe(self, pattern: str) -> bool:
        return self._router.subscribe(self.session, pattern)

    def unsubscribe(self, pattern: str) -> bool:
        return self._router.unsubscribe(self.session, pattern)

    def publish(self, topic: str, *body: bytes, headers: dict[str, str] | None = None) -> int:
        return self._router.publish(self.session, topic, list(body), headers)

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        queue: asyncio.Queue[_Item] = request.correlation
        queue.put_nowait((kind is ReplyKind.FINAL, list(body)))

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        queue: asyncio.Queue[_Item] = request.correlation
        queue.put_nowait(error)

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        try:
            self.events.put_nowait((topic, list(body), dict(headers)))
        except asyncio.QueueFull:
            self.dropped_events += 1


class LocalWorker(_Base):
    """Serve ``service`` with an async ``handler(body) -> body``; an async generator handler
    sends every yielded body but the last as a partial reply and the last as the final one.
    An exception in the handler answers the caller with an INTERNAL error."""

    def __init__(
        self,
        broker: Broker,
        service: str,
        handler: Handler,
        *,
        credit: int = 1,
        identity: Identity = ANONYMOUS,
        label: str = "",
    ) -> None:
        super().__init__(broker, identity, label)
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self.worker = self._router.add_worker(
            self.session, service, self._clock(), credit=credit, idle_timeout=0, busy_timeout=0
        )

    def deliver_request(self, worker: Worker, request: Request) -> None:
        task = asyncio.get_running_loop().create_task(self._run(worker, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, worker: Worker, request: Request) -> None:
        router, clock = self._router, self._clock
        try:
            result = self._handler(list(request.body))
            if inspect.isasyncgen(result):
                previous: Sequence[bytes] | None = None
                parts = cast(AsyncIterator[Sequence[bytes]], result)
                async for body in parts:
                    if previous is not None:
                        router.reply(worker, request.id, previous, clock(), final=False)
                    previous = body
                router.reply(worker, request.id, previous or [], clock(), final=True)
            elif inspect.isawaitable(result):
                router.reply(worker, request.id, await result, clock(), final=True)
            else:
                raise TypeError("a LocalWorker handler must be async (or an async generator)")
        except MaitredError as exc:
            router.reply_error(worker, request.id, exc, clock())
        except Exception as exc:
            log.exception("local worker for %s failed", worker.service.name)
            router.reply_error(
                worker,
                request.id,
                MaitredError(f"worker failed: {exc}", ErrorCode.INTERNAL),
                clock(),
            )

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        super().close()
