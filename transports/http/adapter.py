"""The ``http`` transport: maitred's REST API (``/v1/``), metrics and health, and the xapi
message switch (Gen 3), on the same aiohttp listeners (TCP and/or Unix sockets).

REST callers share one quiet router session; each call's correlation is a small object holding
an asyncio future (or, for SSE, a queue), so a reply costs no task. A client that disconnects
cancels its handler (aiohttp ``handler_cancellation``) and so its router request. Topic
subscriptions (SSE) get one router session per stream. The switch lives in
:mod:`maitred.transports.http.switch`; durable queues in :mod:`maitred.core.store`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web

from maitred.core.access import Identity
from maitred.core.durable import StoreJournal
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.logs import RejectionLog
from maitred.core.routing.model import ReplyKind, Request, Session
from maitred.core.tracing import trace_in
from maitred.core.transport import BrokerPort
from maitred.transports.http import codec, tls
from maitred.transports.http.admin import add_admin_routes
from maitred.transports.http.auth import HttpAuth, Secured
from maitred.transports.http.config import HttpConfig
from maitred.transports.http.examples import add_example_routes
from maitred.transports.http.listings import ListingRoutes
from maitred.transports.http.openapi import openapi_document
from maitred.transports.http.server import (
    _NO_LIMIT,
    REFUSE_GRACE,
    _busy_response,
    _error,
    _json,
    _peer,
    _plain,
    _remove_stale_socket,
    _ServerLog,
    _TooLarge,
    set_socket_permissions,
)
from maitred.transports.http.streams import _Call, _RestSink, _Stream, _TopicSink
from maitred.transports.http.switch import Switch
from maitred.transports.http.switch_routes import SwitchRoutes
from maitred.transports.http.topic_routes import TopicRoutes

log = logging.getLogger("maitred.transports.http")

_FINAL = ReplyKind.FINAL
#: what ``GET /metrics`` asks the policy about (``observe``)
_OCTETS = "application/octet-stream"


__all__ = ["REFUSE_GRACE", "HttpConfig", "HttpTransport", "cli_addresses"]


class HttpTransport(ListingRoutes, TopicRoutes, Secured):
    """The ``http`` transport (see the module docstring)."""

    name = "http"

    def __init__(self, config: HttpConfig, port: BrokerPort) -> None:
        self.config = config
        self.port = port
        self.stats = port.stats
        self.identity = Identity(config.identity, frozenset(config.roles))
        self._runner: web.AppRunner | None = None
        self._bound: list[str] = []
        self._unix_paths: list[str] = []
        self._session = None
        self._accepting = False
        self._closed = False
        self._topic_sinks: set[_TopicSink] = set()
        self.switch: Switch | None = None
        self.switch_routes: SwitchRoutes | None = None
        #: peer-caused rejections: DEBUG each, a WARNING summary every 10 s
        self.rejections = RejectionLog(
            log,
            {
                "malformed": "malformed HTTP requests",
                "slow": "HTTP connections closed as too slow",
                "refused": "HTTP connections refused (max_connections)",
            },
        )
        #: connections that have not sent a complete request head yet -> their deadline
        self._head_timers: dict[Any, asyncio.TimerHandle] = {}
        #: connections past ``max_connections`` -> when they are answered 503 at the latest
        self._refused: dict[Any, asyncio.TimerHandle] = {}
        self.auth = HttpAuth(config, port, self.rejections, self.identity)
        #: the REST session of each identity other than the default one (``_rest``)
        self._sessions: dict[Identity, Session] = {}
        #: the TLS listeners' contexts (a reload loads a new certificate into them)
        self._contexts: list[ssl.SSLContext] = []
        self._tls_loaded = ""
        self._handshaking: dict[Any, asyncio.TimerHandle] = {}
        self._tls_unclaimed = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        now = self.port.clock()
        self._rest = self.port.open_session(
            "http",
            _RestSink(self.port, self.port.clock),
            self.identity,
            now,
            label="http:rest",
            quiet=True,
        )
        if cfg.switch:
            secret = cfg.shutdown_secret()
            journal = self.port.journal
            if journal is None:  # the runtime opens the store for a transport's store_hint
                raise MaitredError("http: the switch needs the broker's store", ErrorCode.INTERNAL)
            if cfg.max_deliveries:
                log.warning(
                    "[transports.http] max_deliveries is deprecated and ignored: persistent"
                    " switch queues follow their service policy's max_deliveries"
                )
            self.switch = Switch(
                self.port,
                journal,
                identity=self.identity,
                credit=cfg.switch_credit,
                trace_size=cfg.trace_size,
                shutdown_tokens=cfg.shutdown_tokens,
                shutdown_secret=secret,
                max_queue=cfg.switch_max_queue,
                max_queue_bytes=cfg.switch_max_queue_bytes,
                max_queues=cfg.switch_max_queues,
                max_queues_per_token=cfg.switch_max_queues_per_token,
                diagnostics_messages=cfg.diagnostics_messages,
            )
            self.switch.open()
            self.switch_routes = SwitchRoutes(self.switch, self._read_body, self.port.request_stop)
        app = web.Application(
            client_max_size=cfg.max_body_size,
            middlewares=[self._front],
        )
        r = app.router
        r.add_get("/v1/openapi.json", self._openapi)
        r.add_post("/v1/services/{name}", self._call)
        self.add_listing_routes(r)
        self.add_topic_routes(r)
        add_example_routes(r)  # GET /examples/: the example pages (package data)
        if cfg.admin:  # GET /admin/: the live dashboard (before the switch's /admin page)
            add_admin_routes(r, self.port, self._session_of)
        r.add_route("*", "/v1/{tail:.*}", self._v1_not_found)
        r.add_route("*", "/{tail:.*}", self._switch_route)
        runner = self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
            # aiohttp closes a connection that has no request in progress (none yet, between
            # requests, or an incomplete head) after this long
            keepalive_timeout=cfg.idle_timeout or _NO_LIMIT,
            # how long aiohttp reads (and drops) the rest of a body a handler left unread
            # before it closes the connection
            lingering_time=min(10.0, cfg.body_timeout or 10.0),
            logger=_ServerLog(self),
        )
        await runner.setup()
        server = runner.server
        assert server is not None
        made = server.connection_made
        lost = server.connection_lost
        loop = asyncio.get_running_loop()

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._tls_done(handler)
            accepted = len(server.connections) - len(self._refused)
            if cfg.max_connections and accepted > cfg.max_connections:
                # answered 503 as soon as its request head is read (_front), or after
                # REFUSE_GRACE if it sends none: closing at once, with the request unread,
                # would make the kernel reset the connection before the client reads the 503
                self.stats["http.connections_refused"] += 1
                self.rejections.note("refused", _peer(transport), f"{accepted - 1} open")
                self._refused[handler] = loop.call_later(
                    REFUSE_GRACE, self._refuse_now, handler, transport
                )
                return
            if cfg.header_timeout:
                self._head_timers[handler] = loop.call_later(
                    cfg.header_timeout, self._head_late, handler, transport
                )

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            for timers in (self._head_timers, self._refused):
                timer = timers.pop(handler, None)
                if timer is not None:
                    timer.cancel()
            if self.switch is not None:
                self.switch.connection_closed(handler)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        try:
            for addr in cfg.listen:
                await self._bind(runner, addr)
        except MaitredError:
            await self.close()
            raise
        except OSError as exc:
            await self.close()
            raise MaitredError(
                f"http: cannot listen on {addr}: {exc.strerror or exc}", ErrorCode.BAD_REQUEST
            ) from None
        self._accepting = True

    def _head_late(self, handler: Any, transport: asyncio.Transport) -> None:
        """A connection sent no complete request head within ``header_timeout``: close it."""
        self._head_timers.pop(handler, None)
        self.stats["http.header_timeout"] += 1
        self.rejections.note("slow", _peer(transport), "no request head in time")
        handler.force_close()

    def _refuse_now(self, handler: Any, transport: asyncio.Transport) -> None:
        """A connection past ``max_connections`` sent no request head in REFUSE_GRACE."""
        self._refused.pop(handler, None)
        transport.write(_busy_response())
        handler.force_close()  # the transport closes once the 503 is written

    @web.middleware
    async def _front(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """What every request goes through, in this order (one middleware, not three: each
        layer costs a coroutine per request):

        1. a request head arrived: the connection's ``header_timeout`` is over; on a connection
           past ``max_connections``, the request is answered 503 and the connection closed;
        2. the caller is authenticated (:meth:`HttpAuth.admit`: its identity, or a 401);
        3. a :class:`MaitredError` the handler lets through (e.g. the MMI refused by
           ``[access]``) is answered with its status and the JSON error body, not a 500."""
        if self._refused:
            refused = self._refused.pop(request.protocol, None)
            if refused is not None:
                refused.cancel()
                busy = _error(ErrorCode.NO_WORKER, "too many connections")
                busy.headers["Retry-After"] = "1"
                busy.force_close()
                return busy
        if self._head_timers:
            timer = self._head_timers.pop(request.protocol, None)
            if timer is not None:
                timer.cancel()
        refusal = self.auth.admit(request)
        if refusal is not None:
            return refusal
        try:
            response: web.StreamResponse = await handler(request)
        except MaitredError as exc:
            return _error(exc.code, exc.reason)
        return response

    async def _bind(self, runner: web.AppRunner, addr: str) -> None:
        cfg = self.config
        if addr.startswith("unix:"):
            path = addr[5:]
            _remove_stale_socket(path)
            site: web.BaseSite = web.UnixSite(runner, path)
            await site.start()
            self._unix_paths.append(path)
            set_socket_permissions(path, cfg.unix_mode, cfg.unix_group)
            self._bound.append(f"unix:{path}")
            return
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        where = [addr]
        if cfg.tls_cert:
            context = tls.server_context(
                cfg.tls_cert,
                cfg.tls_key,
                cfg.tls_client_ca,
                lambda exc: self._tls_failed(where[0], exc),
            )
            self._contexts.append(context)
            self._tls_loaded = tls.fingerprint(cfg.tls_cert, cfg.tls_key)
            site = tls.TlsSite(
                runner,
                host,
                int(port),
                ssl_context=context,
                handshake_timeout=cfg.tls_handshake_timeout,
                on_accept=self._tls_accepted,
                reuse_port=self.config.reuse_port,
            )
        else:
            site = web.TCPSite(
                runner,
                host,
                int(port),
                reuse_address=True,
                reuse_port=self.config.reuse_port or None,
            )
        await site.start()
        scheme = "https" if cfg.tls_cert else "http"
        # the asyncio (or uvloop) server: its sockets know the real port
        sockets: Sequence[Any] = getattr(site._server, "sockets", None) or ()
        for n, sock in enumerate(sockets):
            real = sock.getsockname()
            shown = f"[{real[0]}]" if ":" in real[0] else real[0]
            self._bound.append(f"{scheme}://{shown}:{real[1]}")
            if n == 0 and cfg.tls_cert:
                where[0] = f"{shown}:{real[1]}"
                self._watch_tls(where[0])

    def endpoints(self) -> list[str]:
        return list(self._bound)

    async def stop_accepting(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        # end what would keep a connection busy: SSE streams and switch long polls
        for sink in self._topic_sinks:
            sink.close()
        if self.switch is not None:
            self.switch.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for timers in (self._head_timers, self._refused, self._handshaking):
            for timer in timers.values():
                timer.cancel()
            timers.clear()
        self.rejections.close()
        now = self.port.clock()
        rest = getattr(self, "_rest", None)
        if rest is not None:
            self.port.close_session(rest, now, "closing")
        for session in self._sessions.values():
            self.port.close_session(session, now, "closing")
        self._sessions.clear()
        for path in self._unix_paths:
            _remove_stale_socket(path)

    # -- helpers --------------------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, or _TooLarge as soon as it is known to exceed the limit."""
        limit = self.config.max_body_size
        length = request.content_length
        if length is not None and length > limit:
            raise _TooLarge("the request body is too large")
        content = request.content
        if content.is_eof():
            # the whole body came with the head (the usual small request): no timer, no wait
            body = content.read_nowait()
            if len(body) > limit:
                raise _TooLarge("the request body is too large")
            return body
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.config.body_timeout or None):
                while True:
                    chunk = await request.content.readany()
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise _TooLarge("the request body is too large")
                    chunks.append(chunk)
        except TimeoutError:
            self.stats["http.body_timeout"] += 1
            self.rejections.note("slow", request.remote or "?", f"body incomplete ({size} B)")
            reason = "the request body came too slowly"
            late = web.HTTPRequestTimeout(
                text=codec.error_body(ErrorCode.TIMEOUT, reason).decode(),
                content_type="application/json",
            )
            late.force_close()
            raise late from None
        return b"".join(chunks)

    def _too_large(self, response: web.Response) -> web.Response:
        self.stats["http.too_large"] += 1
        response.force_close()
        return response

    def _timeout(self, request: web.Request) -> float | None:
        raw = request.headers.get(self.config.timeout_header)
        if raw is None:
            return self.config.request_timeout or None
        value = float(raw)  # ValueError: 400
        if not (0 < value < math.inf):
            raise ValueError("the deadline must be a number of seconds > 0")
        return value

    # -- REST ----------------------------------------------------------------------------------

    async def _openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def _v1_not_found(self, request: web.Request) -> web.Response:
        return _error(ErrorCode.NOT_FOUND, f"no such resource: {request.method} {request.path}")

    def _submit(
        self,
        request: web.Request,
        name: str,
        frames: list[bytes],
        call: _Call,
        timeout: float | None,
    ) -> Request | None:
        """Submit a REST call as the request's identity, its trace context passed on."""
        self.stats["http.calls"] += 1
        return self.port.submit(
            self._session_of(request),
            name,
            frames,
            call,
            self.port.clock(),
            timeout=timeout,
            headers=trace_in(request.headers),
        )

    async def _call(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not self._accepting:
            return _error(ErrorCode.SHUTTING_DOWN, "broker is shutting down")
        try:
            timeout = self._timeout(request)
        except ValueError as exc:
            return _error(ErrorCode.BAD_REQUEST, f"{self.config.timeout_header}: {exc}")
        try:
            body = await self._read_body(request)
        except _TooLarge:
            return self._too_large(_error(ErrorCode.TOO_LARGE, "the request body is too large"))
        if (
            request.content_type == "application/json"
            and request.headers.get("X-Maitred-Frames-Json") != "0"
        ):
            try:
                frames = codec.parse_frames_json(body)
            except ValueError as exc:
                return _error(ErrorCode.BAD_REQUEST, str(exc))
        else:
            frames = [body]
        accept = request.headers.get("Accept", "")
        loop = asyncio.get_running_loop()
        if "text/event-stream" in accept:
            return await self._call_stream(request, name, frames, timeout)
        call = _Call(loop.create_future(), None)
        assert call.fut is not None
        submitted = self._submit(request, name, frames, call, timeout)
        journal = self.port.journal
        if (
            submitted is not None
            and submitted.stored >= 0
            and journal is not None
            and "respond-async" in request.headers.get("Prefer", "")
        ):
            accepted = await self._accept_stored(submitted, call, journal)
            if accepted is not None:
                return accepted
        try:
            ok, value = await call.fut
        except asyncio.CancelledError:
            if submitted is not None:
                self.stats["http.calls_cancelled"] += 1
                self.port.cancel(submitted, self.port.clock())
            raise
        if not ok:
            err: MaitredError = value
            response = _error(err.code, err.reason)
        else:
            reply: list[bytes] = value
            if "application/json" in accept:
                response = web.Response(
                    body=codec.frames_json_body(reply), content_type="application/json"
                )
            else:
                response = web.Response(
                    body=b"".join(reply),
                    content_type=_OCTETS,
                    headers={"X-Maitred-Frames": ",".join(str(len(f)) for f in reply)},
                )
        if submitted is not None and submitted.trace is not None:
            response.headers["traceparent"] = submitted.trace  # the broker's span
        return response

    async def _accept_stored(
        self, submitted: Request, call: _Call, journal: StoreJournal
    ) -> web.Response | None:
        """``Prefer: respond-async`` to a service with ``on_no_worker = "store"``: answer 202
        once the request is committed to the store, and let it go on without this caller (its
        reply is dropped). None when the answer came first (then it is sent as usual)."""
        try:
            await journal.committed()
        except MaitredError as exc:  # the store refused it (JetStream unavailable: 503)
            log.warning("http: the store could not commit a request: %s", exc.reason)
            self.port.cancel(submitted, self.port.clock())
            return _error(exc.code, exc.reason)
        except Exception:
            log.exception("http: the store could not commit a request")
            self.port.cancel(submitted, self.port.clock())
            return _error(ErrorCode.INTERNAL, "the request could not be stored")
        assert call.fut is not None
        if call.fut.done():
            return None
        self.port.cancel(submitted, self.port.clock())
        self.stats["http.calls_stored"] += 1
        return web.Response(
            status=202,
            body=msgspec.json.encode({"service": submitted.service, "id": submitted.stored}),
            content_type="application/json",
            headers={"Preference-Applied": "respond-async"},
        )

    async def _call_stream(
        self, request: web.Request, name: str, frames: list[bytes], timeout: float | None
    ) -> web.StreamResponse:
        stream = _Stream(self.port, self.config.sse_buffer_bytes)
        queue = stream.items
        call = _Call(None, stream)
        submitted = self._submit(request, name, frames, call, timeout)
        if submitted is None and not queue.empty():
            # refused at once: a plain error response (the status says what went wrong)
            kind, value, size = queue.get_nowait()
            if kind == "error":
                stream.drop_all()
                return _error(value.code, value.reason)
            queue.put_nowait((kind, value, size))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        if submitted is not None and submitted.trace is not None:
            response.headers["traceparent"] = submitted.trace
        try:
            await response.prepare(request)
            while True:
                kind, value, size = await queue.get()
                stream.taken(size)
                if kind == "error":
                    err: MaitredError = value
                    await response.write(
                        codec.sse_event("error", codec.error_body(err.code, err.reason))
                    )
                    break
                event = "final" if kind is _FINAL else "partial"
                await response.write(codec.sse_event(event, codec.frames_json_body(value)))
                if kind is _FINAL:
                    break
        except (asyncio.CancelledError, ConnectionResetError):
            if submitted is not None:
                self.port.cancel(submitted, self.port.clock())
            raise
        finally:
            stream.drop_all()
        await response.write_eof()
        return response

    # -- message switch -----------------------------------------------------------------------

    async def _switch_route(self, request: web.Request) -> web.StreamResponse:
        routes = self.switch_routes
        if routes is None:
            uri = request.raw_path
            return _error(ErrorCode.NOT_FOUND, f"no such resource: {request.method} {uri}")
        try:
            return await routes.handle(request)
        except _TooLarge:
            return self._too_large(_plain(b"Request Entity Too Large", 413))


def cli_addresses(addresses: Sequence[str]) -> dict[str, Any]:
    return {"listen": list(addresses)}
