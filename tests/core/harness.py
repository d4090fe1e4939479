"""A socket-free harness for the routing core: a fake clock, recording sinks, one router.

Import it as ``from tests.core.harness import ...`` (the same way tests/e2e imports its helpers).

:class:`FakeSink` records every call the router makes on a session's sink, and notes any call
made while the session is closed (``violations``): the router must never deliver to a closed
session. :class:`Harness` owns a :class:`~maitred.core.clock.FakeClock` and a
:class:`~maitred.core.routing.router.Router` and keeps the test code short.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from maitred.core.access import ANONYMOUS, AccessPolicy, Identity
from maitred.core.clock import FakeClock
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import (
    Body,
    Headers,
    ReplyKind,
    Request,
    ServicePolicy,
    Session,
    Worker,
)
from maitred.core.routing.router import Liveness, MmiHandler, Router

START = 1000.0


class FakeSink:
    """Records what the router hands a session; every method returns at once."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.session: Session | None = None
        self.calls: list[tuple[Any, ...]] = []
        self.requests: list[tuple[Worker, Request]] = []
        self.replies: list[tuple[Request, ReplyKind, list[bytes]]] = []
        #: the headers of each reply in :attr:`replies` (None: the worker sent none)
        self.reply_headers: list[dict[str, str] | None] = []
        self.errors: list[tuple[Request, MaitredError]] = []
        self.events: list[tuple[str, list[bytes], dict[str, str]]] = []
        self.removed: list[tuple[Worker, str]] = []
        #: calls made while the session was already closed (must stay empty)
        self.violations: list[tuple[Any, ...]] = []
        #: optional callbacks to make a sink misbehave (e.g. raise)
        self.on_error: Callable[[Request, MaitredError], None] | None = None
        self.on_event: Callable[[str], None] | None = None

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        if self.session is not None and self.session.closed:
            self.violations.append(call)

    # -- the SessionSink protocol ---------------------------------------------------------------

    def deliver_request(self, worker: Worker, request: Request) -> None:
        self._record("request", worker, request)
        self.requests.append((worker, request))

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        self._record("reply", request, kind, list(body))
        self.replies.append((request, kind, list(body)))
        self.reply_headers.append(None if headers is None else dict(headers))

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        self._record("error", request, error)
        self.errors.append((request, error))
        if self.on_error is not None:
            self.on_error(request, error)

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        self._record("event", topic, list(body), dict(headers))
        self.events.append((topic, list(body), dict(headers)))
        if self.on_event is not None:
            self.on_event(topic)

    def worker_removed(self, worker: Worker, reason: str) -> None:
        self._record("removed", worker, reason)
        self.removed.append((worker, reason))

    # -- conveniences ---------------------------------------------------------------------------

    def finals(self) -> list[list[bytes]]:
        return [body for _, kind, body in self.replies if kind is ReplyKind.FINAL]

    def reply_bodies(self, request: Request | int) -> list[tuple[ReplyKind, list[bytes]]]:
        rid = request if isinstance(request, int) else request.id
        return [(kind, body) for r, kind, body in self.replies if r.id == rid]

    def error_codes(self) -> list[ErrorCode]:
        return [error.code for _, error in self.errors]

    def error_for(self, request: Request | int) -> MaitredError | None:
        rid = request if isinstance(request, int) else request.id
        found = [error for r, error in self.errors if r.id == rid]
        assert len(found) <= 1, f"more than one error for request {rid}: {found}"
        return found[0] if found else None

    def code_for(self, request: Request | int) -> ErrorCode | None:
        error = self.error_for(request)
        return None if error is None else error.code

    def tokens(self) -> list[int]:
        """Ids of the requests delivered to this session's workers, in order."""
        return [request.id for _, request in self.requests]

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.events]

    def event_payloads(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(body[0]) for t, body, _ in self.events if t == topic]


class Harness:
    """One router on a fake clock, with helpers that open sessions with recording sinks."""

    def __init__(
        self,
        *,
        policy: ServicePolicy | None = None,
        policies: Mapping[str, ServicePolicy] | None = None,
        liveness: Liveness | None = None,
        access: AccessPolicy | None = None,
        mmi: MmiHandler | None = None,
        resolution: float = 0.05,
        start: float = START,
        clock: FakeClock | None = None,
        **router_kw: Any,
    ) -> None:
        self.clock = clock or FakeClock(start)
        self.default_policy = policy or ServicePolicy()
        self.policies = dict(policies or {})
        #: every system event the router emitted, through its on_event hook
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.sinks: list[FakeSink] = []
        self.router = Router(
            policy_for=self._policy_for,
            liveness=liveness,
            access=access,
            on_event=lambda topic, payload: self.events.append((topic, payload)),
            mmi=mmi,
            resolution=resolution,
            **router_kw,
        )

    def _policy_for(self, name: str) -> ServicePolicy:
        return self.policies.get(name, self.default_policy)

    @property
    def now(self) -> float:
        return self.clock.now

    # -- building blocks -------------------------------------------------------------------------

    def session(
        self,
        name: str = "",
        identity: Identity = ANONYMOUS,
        *,
        transport: str = "test",
        quiet: bool = False,
    ) -> Session:
        sink = FakeSink(name)
        session = self.router.open_session(transport, sink, identity, self.now, name, quiet=quiet)
        sink.session = session
        self.sinks.append(sink)
        return session

    def worker(
        self, service: str, session: Session | None = None, *, credit: int = 1, **kw: Any
    ) -> Worker:
        if session is None:
            session = self.session(f"w-{service}-{len(self.sinks)}")
        return self.router.add_worker(session, service, self.now, credit=credit, **kw)

    def call(
        self,
        session: Session,
        service: str,
        body: Body = (b"hello",),
        correlation: Any = None,
        **kw: Any,
    ) -> Request | None:
        return self.router.submit(session, service, body, correlation, self.now, **kw)

    def req(self, session: Session, service: str, body: Body = (b"hello",), **kw: Any) -> Request:
        """Like :meth:`call`, for a request that must be accepted."""
        request = self.call(session, service, body, **kw)
        assert request is not None, f"request to {service} refused: {sink_of(session).errors}"
        return request

    def reply(
        self, worker: Worker, request: Request | int, body: Body = (b"ok",), *, final: bool = True
    ) -> bool:
        token = request if isinstance(request, int) else request.id
        return self.router.reply(worker, token, body, self.now, final=final)

    def advance(self, seconds: float) -> float:
        """Move the clock and tick the router."""
        self.clock.advance(seconds)
        self.router.tick(self.now)
        return self.now

    def tick(self) -> None:
        self.router.tick(self.now)

    def close(self, session: Session, reason: str = "closed") -> None:
        self.router.close_session(session, self.now, reason)

    # -- inspection -------------------------------------------------------------------------------

    def event_topics(self) -> list[str]:
        return [topic for topic, _ in self.events]

    def payloads(self, topic: str) -> list[dict[str, Any]]:
        return [payload for t, payload in self.events if t == topic]

    def violations(self) -> list[tuple[Any, ...]]:
        return [v for sink in self.sinks for v in sink.violations]


def sink_of(session: Session) -> FakeSink:
    sink = session.sink
    assert isinstance(sink, FakeSink)
    return sink
