"""The switch's read side and its access checks: listings, diagnostics (``GET /``), the trace
(``GET /trace``, with every request of the other protocols while someone reads it), and the
shutdown check. A mixin of :class:`~maitred.transports.http.switch.Switch`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from itertools import islice
from typing import Any, NoReturn

from maitred.core.access import Action
from maitred.core.routing.model import Request, Session
from maitred.core.transport import BrokerPort
from maitred.transports.http import codec
from maitred.transports.http.codec import Kind
from maitred.transports.http.switch_model import (
    DIAGNOSTICS,
    FORBIDDEN,
    LIST,
    SHUTDOWN,
    TOO_MANY,
    TRACE,
    Msg,
    Queue,
    QueueSink,
    Refused,
    Token,
    TokenSink,
    by_id,
    token_name,
    woken,
)

log = logging.getLogger("maitred.transports.http.switch")

#: seconds a diagnostics build may hold the event loop before it yields
_SLICE = 0.002

#: see ``Switch.trace``
_TraceRecord = tuple[
    int, float, str, int, "tuple[bytes, Kind] | None", str | None, str | None, int | None
]


#: seconds without a trace reader after which requests of other protocols stop being traced
ROUTER_TRACE_IDLE = 60.0


class _RouterMsg:
    """What the trace keeps of a request that did not cross the switch (payload and kind)."""

    __slots__ = ("kind", "payload")

    def __init__(self, payload: bytes, kind: Kind) -> None:
        self.payload = payload
        self.kind = kind


class SwitchViews:
    """Access checks, listings, diagnostics and the trace of a :class:`Switch`."""

    queues: dict[str, Queue]
    qsession: Session | None
    stats: Counter[str]
    closing: bool
    diagnostics_messages: int
    shutdown_tokens: list[str]
    shutdown_secret: bytes | None
    trace: deque[_TraceRecord]
    trace_next: int
    trace_waiters: set[asyncio.Future[None]]
    _trace_read_at: float
    _trace_stop: Callable[[], None] | None
    port: BrokerPort
    start: float

    def now_ns(self) -> int:
        """Nanoseconds since the switch started (the diagnostics' and trace's clock)."""
        return int((self.port.clock() - self.start) * 1e9)

    # -- access -----------------------------------------------------------------------------

    def session_of(self, token: Token | None) -> Session:
        """The router session a request is asked about: its token's, or before a login the
        transport's own (its identity)."""
        if token is not None and token.session is not None:
            return token.session
        assert self.qsession is not None
        return self.qsession

    def permits(self, session: Session, action: Action, name: str) -> bool:
        """The policy's answer without counting a denial (for filtering what a view shows)."""
        return self.port.permits(session, action, name)

    def check(self, session: Session, action: Action, name: str) -> None:
        """Raise :class:`Refused` (counted and published by the router) unless allowed."""
        if not self.port.allowed(session, action, name):
            raise Refused(FORBIDDEN, f"{session.identity.name} may not {action.value} {name}")

    def refuse(self, session: Session, action: Action, name: str, reason: str) -> NoReturn:
        """A refusal the switch decides itself (a lease, a missing secret): counted as
        ``denied.<action>`` and published like the policy's own."""
        self.port.report_denied(session, action, name)
        raise Refused(FORBIDDEN, reason)

    def _full(self, what: str, reason: str) -> NoReturn:
        self.stats[f"http.switch.refused.{what}"] += 1
        log.info("switch: refused: %s", reason)
        raise Refused(TOO_MANY, reason)

    # -- listing, diagnostics, trace ----------------------------------------------------------

    def list_queues(self, prefix: str, alive: bool) -> list[str]:
        now_ns = self.now_ns()
        return sorted(
            name
            for name, q in self.queues.items()
            if name.startswith(prefix)
            and (not alive or (q.expected_ns is not None and q.expected_ns > now_ns))
        )

    def list_names(self, token: Token | None, prefix: str, alive: bool) -> list[str]:
        """GET /list: ``observe`` on ``$switch.list``."""
        self.check(self.session_of(token), Action.OBSERVE, LIST)
        return self.list_queues(prefix, alive)

    def _payload_filter(self, session: Session) -> Callable[[str], bool]:
        """Whether ``session`` may see the payloads of a queue: it may ``call`` it, or it is
        its own transient queue (answers cached for one read)."""
        seen: dict[str, bool] = {}

        def visible(queue: str) -> bool:
            verdict = seen.get(queue)
            if verdict is None:
                q = self.queues.get(queue)
                own = q is not None and q.owner is not None and q.owner == token_name(session)
                verdict = seen[queue] = own or self.permits(session, Action.CALL, queue)
            return verdict

        return visible

    async def diagnostics(self, token: Token | None) -> bytes:
        """GET /: ``observe`` on ``$switch.diagnostics``. At most ``diagnostics_messages`` per
        queue (the oldest), payloads cut to a preview and shown only where the reader may
        ``call`` the queue; built in slices that yield to the event loop."""
        session = self.session_of(token)
        self.check(session, Action.OBSERVE, DIAGNOSTICS)
        visible = self._payload_filter(session)
        limit = self.diagnostics_messages
        loop = asyncio.get_running_loop()
        sections: dict[bool, list[bytes]] = {True: [], False: []}
        slice_start = loop.time()
        for name in sorted(self.queues):
            q = self.queues.get(name)
            if q is None:
                continue  # destroyed while this was built
            show = visible(name)
            entries = [
                codec.queue_entry(
                    name,
                    m.n,
                    m.origin,
                    m.time_ns,
                    m.payload[: codec.TRACE_PAYLOAD_LIMIT] if show else b"",
                    m.kind,
                )
                for m in sorted(islice(q.messages.values(), limit), key=by_id)
            ]
            sections[q.persistent].append(codec.diagnostics_queue(name, q.expected_ns, entries))
            if loop.time() - slice_start > _SLICE:
                await asyncio.sleep(0)
                slice_start = loop.time()
        return codec.diagnostics_document(self.now_ns(), sections[True], sections[False])

    def _trace(
        self,
        queue: str,
        n: int,
        message: Msg | _RouterMsg | None,
        *,
        input: str | None = None,
        output: str | None = None,
        processing_time: int | None = None,
    ) -> None:
        if self.trace.maxlen == 0:
            return
        record = (
            self.trace_next,
            time.time(),  # noqa: TID251 - the trace's wire format is a Unix time
            queue,
            n,
            None
            if message is None
            else (message.payload[: codec.TRACE_PAYLOAD_LIMIT], message.kind),
            input,
            output,
            processing_time,
        )
        self.trace.append(record)
        self.trace_next += 1
        if self.trace_waiters:
            for fut in self.trace_waiters:
                if not fut.done():
                    fut.set_result(None)
            self.trace_waiters.clear()

    @staticmethod
    def _trace_event(
        record: _TraceRecord, visible: Callable[[str], bool]
    ) -> tuple[int, dict[str, Any]]:
        i, unix, queue, n, message, input, output, processing_time = record
        if message is None:
            body = codec.trace_ack(queue, n)
        else:
            payload = message[0] if visible(queue) else b""
            body = codec.trace_message(queue, n, payload, message[1])
        event = codec.trace_event(
            unix, queue, body, input=input, output=output, processing_time=processing_time
        )
        return i, event

    def _router_trace(self, event: str, request: Request, detail: str, now: float) -> None:
        """Router tracer: every request that does not cross the switch (MDP, WebSocket, REST
        callers and workers) goes into the trace too, so ``maitred tail`` shows all traffic
        with the router's request id as the message id. The switch's own queue traffic is
        traced where it happens. Detaches itself when no reader came for a while."""
        if (
            not self.trace_waiters
            and asyncio.get_running_loop().time() - self._trace_read_at > ROUTER_TRACE_IDLE
        ):
            self._detach_router_trace()
            return
        caller = request.caller
        if isinstance(caller.sink, (QueueSink, TokenSink)):
            return
        worker = request.worker
        if worker is not None and isinstance(worker.session.sink, TokenSink):
            return
        service, rid = request.service, request.id
        if event == "accepted":
            payload = request.body[-1] if request.body else b""
            self._trace(service, rid, _RouterMsg(payload, codec.request_kind(detail)), input=detail)
        elif event == "dispatched":
            payload = request.body[-1] if request.body else b""
            self._trace(
                service, rid, _RouterMsg(payload, codec.request_kind(caller.label)), output=detail
            )
        elif event == "replied":
            self._trace(
                caller.label,
                rid,
                _RouterMsg(b"", codec.response_kind(service, rid)),
                input=detail,
                output=caller.label,
                processing_time=int((now - request.accepted) * 1e9),
            )
        elif event == "failed":
            self._trace(
                caller.label,
                rid,
                _RouterMsg(f"error {detail}".encode(), codec.response_kind(service, rid)),
                input="maitred",
                output=caller.label,
            )

    def _attach_router_trace(self) -> None:
        self._trace_read_at = asyncio.get_running_loop().time()
        if self.trace.maxlen and self._trace_stop is None:
            self._trace_stop = self.port.trace(self._router_trace)

    def _detach_router_trace(self) -> None:
        if self._trace_stop is not None:
            self._trace_stop()
            self._trace_stop = None

    async def get_trace(self, token: Token | None, start: int, timeout: float) -> bytes:
        """GET /trace: ``observe`` on ``$switch.trace``; payloads only of queues (services) the
        reader may ``call``."""
        session = self.session_of(token)
        self.check(session, Action.OBSERVE, TRACE)
        loop = asyncio.get_running_loop()
        self._attach_router_trace()
        deadline = loop.time() + timeout
        while True:
            visible = self._payload_filter(session)
            events = [self._trace_event(r, visible) for r in self.trace if r[0] > start]
            remaining = deadline - loop.time()
            if events or remaining <= 0 or self.closing:
                return codec.trace_body(events)
            await woken([self.trace_waiters], remaining)

    def shutdown(self, token: Token, secret: bytes | None) -> None:
        """POST /shutdown: ``manage`` on ``$sys.shutdown``, and the shutdown secret (compared in
        constant time); with ``shutdown_tokens``, also a token matching one of them. A token
        name alone is never enough: any client may log in with any name."""
        session = self.session_of(token)
        self.check(session, Action.MANAGE, SHUTDOWN)
        expected = self.shutdown_secret
        if expected is None:
            self.refuse(session, Action.MANAGE, SHUTDOWN, "no shutdown secret is configured")
        if secret is None or not hmac.compare_digest(secret, expected):
            self.refuse(session, Action.MANAGE, SHUTDOWN, "wrong or missing shutdown secret")
        if self.shutdown_tokens and not any(
            fnmatch.fnmatchcase(token.name, p) for p in self.shutdown_tokens
        ):
            self.refuse(
                session, Action.MANAGE, SHUTDOWN, f"token {token.name} is not in shutdown_tokens"
            )
