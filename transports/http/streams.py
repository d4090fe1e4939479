"""Where replies and events wait for a REST or SSE handler: the sinks of the transport's
sessions, bounded in events and bytes (counted toward ``[broker] max_memory``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import BaseSink, Body, Headers, ReplyKind, Request
from maitred.core.transport import BrokerPort

_FINAL = ReplyKind.FINAL


class _Stream:
    """The replies of one SSE call waiting for its handler to write them: ``(kind, value,
    bytes)`` items, bounded in bytes. Partials past the bound end the stream: what is queued is
    dropped, an error (429) takes its place and the request is cancelled."""

    __slots__ = ("broker", "bytes", "items", "limit", "overflow")

    def __init__(self, broker: BrokerPort, limit: int) -> None:
        self.items: asyncio.Queue[tuple[Any, Any, int]] = asyncio.Queue()
        self.broker = broker
        self.limit = limit
        self.bytes = 0
        self.overflow = False

    def put(self, kind: Any, value: Any, size: int) -> None:
        self.items.put_nowait((kind, value, size))
        self.bytes += size
        self.broker.hold(size)

    def taken(self, size: int) -> None:
        self.bytes -= size
        self.broker.release(size)

    def drop_all(self) -> None:
        while not self.items.empty():
            self.items.get_nowait()
        if self.bytes:
            self.broker.release(self.bytes)
            self.bytes = 0


class _Call:
    """One REST call in flight: its correlation in the router."""

    __slots__ = ("fut", "queue")

    def __init__(self, fut: asyncio.Future[Any] | None, queue: _Stream | None):
        self.fut = fut
        self.queue = queue


class _RestSink(BaseSink):
    """The sink of the quiet session all REST callers share."""

    def __init__(self, broker: BrokerPort, clock: Callable[[], float]) -> None:
        self.broker = broker
        self.clock = clock
        self.stats = broker.stats

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        call: _Call = request.correlation
        stream = call.queue
        if stream is not None:
            if stream.overflow:
                return
            size = sum(map(len, body))
            if kind is not _FINAL and stream.bytes + size > stream.limit:
                # the caller does not read its partials: end the stream, keep nothing
                stream.overflow = True
                self.stats["http.sse_overflow"] += 1
                stream.drop_all()
                error = MaitredError("caller too slow: stream buffer full", ErrorCode.QUEUE_FULL)
                stream.put("error", error, 0)
                self.broker.cancel(request, self.clock())
                return
            stream.put(kind, list(body), size)
        elif kind is _FINAL and call.fut is not None and not call.fut.done():
            call.fut.set_result((True, list(body)))

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        call: _Call = request.correlation
        if call.queue is not None:
            if not call.queue.overflow:
                call.queue.put("error", error, 0)
        elif call.fut is not None and not call.fut.done():
            call.fut.set_result((False, error))


class _TopicSink(BaseSink):
    """One SSE subscriber: events into a queue bounded in events and bytes; overflow ends the
    stream."""

    def __init__(self, size: int, broker: BrokerPort, limit_bytes: int) -> None:
        self.queue: asyncio.Queue[tuple[str, list[bytes], dict[str, str]] | None] = asyncio.Queue(
            size
        )
        self.overflow = False
        self.broker = broker
        self.limit_bytes = limit_bytes
        #: body bytes queued (counted in the router's ``held``)
        self.bytes = 0

    def taken(self, frames: list[bytes]) -> None:
        size = sum(map(len, frames))
        self.bytes -= size
        self.broker.release(size)

    def release_all(self) -> None:
        if self.bytes:
            self.broker.release(self.bytes)
            self.bytes = 0

    def close(self) -> None:
        self.overflow = True
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                item = self.queue.get_nowait()
                if item is not None:
                    self.taken(item[1])

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        if self.overflow:
            return
        size = sum(map(len, body))
        if self.bytes + size > self.limit_bytes:
            self.overflow = True
            return
        try:
            self.queue.put_nowait((topic, list(body), dict(headers)))
        except asyncio.QueueFull:
            self.overflow = True
            return
        self.bytes += size
        self.broker.hold(size)
