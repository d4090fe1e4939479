"""The HTTP transport's topic routes: ``POST /v1/topics/{topic}`` publishes,
``GET /v1/topics/{pattern}`` subscribes as a server-sent event stream (one router session per
stream, bounded by ``sse_buffer`` and ``sse_buffer_bytes``). A mixin of
:class:`~maitred.transports.http.adapter.HttpTransport`, which owns the state named below."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from maitred.core.access import Identity
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import Session
from maitred.core.transport import BrokerPort
from maitred.transports.http import codec
from maitred.transports.http.config import HttpConfig
from maitred.transports.http.server import IDENTITY, _error, _json, _TooLarge
from maitred.transports.http.streams import _TopicSink


class TopicRoutes:
    """Publish and subscribe over REST."""

    config: HttpConfig
    port: BrokerPort
    identity: Identity
    stats: Counter[str]
    _closed: bool
    _topic_sinks: set[_TopicSink]
    _session_of: Callable[[web.Request], Session]
    _read_body: Callable[[web.Request], Coroutine[Any, Any, bytes]]
    _too_large: Callable[[web.Response], web.Response]

    def add_topic_routes(self, r: web.UrlDispatcher) -> None:
        """``POST /v1/topics/{topic}`` publishes, ``GET /v1/topics/{pattern}`` subscribes (SSE)."""
        r.add_post("/v1/topics/{topic}", self._publish)
        r.add_get("/v1/topics/{pattern}", self._subscribe)

    async def _publish(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        try:
            body = await self._read_body(request)
        except _TooLarge:
            return self._too_large(_error(ErrorCode.TOO_LARGE, "the request body is too large"))
        try:
            n = self.port.publish(self._session_of(request), topic, [body])
        except MaitredError as exc:
            return _error(exc.code, exc.reason)
        return _json({"delivered": n})

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        pattern = request.match_info["pattern"]
        sink = _TopicSink(self.config.sse_buffer, self.port, self.config.sse_buffer_bytes)
        self._topic_sinks.add(sink)
        now = self.port.clock()
        identity = request.get(IDENTITY) or self.identity
        session = self.port.open_session(
            "http", sink, identity, now, label=f"http:sse:{id(sink):x}"
        )
        try:
            try:
                self.port.subscribe(session, pattern)
            except MaitredError as exc:
                return _error(exc.code, exc.reason)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            await response.write(b": subscribed to " + pattern.encode() + b"\n\n")
            seq = 0
            while not self._closed:
                item = await sink.queue.get()
                if item is None:
                    break
                topic, frames, headers = item
                sink.taken(frames)
                await response.write(
                    codec.sse_event("message", codec.topic_event_data(topic, frames, headers), seq)
                )
                seq += 1
                if sink.overflow and sink.queue.empty() and not self._closed:
                    self.stats["http.sse_overflow"] += 1
                    await response.write(
                        codec.sse_event(
                            "error",
                            codec.error_body(ErrorCode.QUEUE_FULL, "subscriber too slow"),
                        )
                    )
                    break
            return response
        finally:
            self._topic_sinks.discard(sink)
            self.port.close_session(session, self.port.clock(), "stream closed")
            sink.release_all()
