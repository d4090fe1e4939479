"""The router's shared state, its constants, and the byte budget (``max_memory``).

:class:`~maitred.core.routing.router.Router` is a facade over mixins that each do one job
(sessions in ``router``, access in ``grants``, workers in ``workers``, requests in ``requests``,
deadlines in ``expiry``, topics and ``$sys.`` events in ``topics``, ``mmi.`` in ``mmi``); they
share the state declared here. Methods one mixin calls on another are declared here for the
type checker only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from maitred.core.access import AccessPolicy, Action, Grants
from maitred.core.errors import MaitredError
from maitred.core.routing.model import (
    NO_DEADLINE,
    Body,
    Headers,
    Journal,
    ReplyKind,
    Request,
    RequestState,
    Service,
    ServicePolicy,
    Session,
    TransportStats,
    Worker,
)
from maitred.core.routing.patterns import SubjectTree
from maitred.core.routing.throttle import PeerThrottle

if TYPE_CHECKING:
    from maitred.core.routing.liveness import Liveness, LivenessLists
    from maitred.core.routing.router import Router
    from maitred.core.routing.wheel import DeadlineWheel

log = logging.getLogger("maitred.core.router")

MMI_PREFIX = "mmi."
SYS_PREFIX = "$sys."
#: system topics a client may publish on (everything else under ``$sys.`` is the broker's)
CLIENT_SYS_TOPICS = frozenset({"$sys.broadcast"})

_QUEUED = RequestState.QUEUED
_DISPATCHED = RequestState.DISPATCHED
_DONE = RequestState.DONE
_EXPIRED = RequestState.EXPIRED
_CANCELLED = RequestState.CANCELLED
_FINAL = ReplyKind.FINAL
_PARTIAL = ReplyKind.PARTIAL

_json = msgspec.json.Encoder()

EventHook = Callable[[str, dict[str, Any]], None]
#: ``tracer(event, request, detail, now)`` with event ``accepted`` (detail: the caller's label),
#: ``dispatched`` (the worker's label), ``replied`` (the worker's label) or ``failed`` (the
#: error code and reason) or ``cancelled`` (the caller gave up or went away; detail empty): every
#: request's life, for traces and logs (``Router.tracers``)
Tracer = Callable[[str, Request, str, float], None]
MmiHandler = Callable[["Router", str, Body], list[bytes]]
#: ``watcher(pattern, added)``: a pattern got its first subscriber (True) or lost its last one
#: (False); see ``Router.watch_patterns``
PatternWatcher = Callable[[str, bool], None]


class RouterState:
    """The state every part of the router shares (set up by ``Router.__init__``)."""

    _policy_for: Callable[[str], ServicePolicy]
    liveness: Liveness
    access: AccessPolicy
    grants: Grants
    _grant_holders: dict[tuple[str, Action, str], set[int]]
    _unchecked: dict[int, set[str]]
    _restricted: int
    _access_open: bool
    #: one ``$sys.auth.denied`` event per transport and peer address per interval
    auth_throttle: PeerThrottle
    _on_event: EventHook | None
    #: this broker's node name in a cluster (``""``: none), added to its ``$sys`` events
    node_name: str
    _mmi: MmiHandler | None
    #: ``mmi.NAME`` services a plugin answers (see ``Router.add_mmi``)
    _mmi_extra: dict[str, Callable[[Body], bytes]]
    _pattern_watchers: list[PatternWatcher]
    #: told when a caller cancels a request a worker holds (``Router.watch_cancels``)
    _cancel_watchers: list[Callable[[Request, float], None]]
    #: subscribers per pattern, not counting ``local_only`` sessions (kept while watched)
    _pattern_refs: Counter[str]
    max_subscriptions: int
    max_subscriptions_total: int
    max_services: int
    max_name_length: int
    _max_memory: int
    _cap: int
    _calm: int
    held: int
    overloaded: bool
    services: dict[str, Service]
    sessions: dict[int, Session]
    topics: SubjectTree[Session]
    stats: Counter[str]
    transports: dict[str, TransportStats]
    tracers: list[Tracer]
    journal: Journal | None
    _orphans: Session | None
    _next_request: int
    _next_session: int
    _next_worker: int
    _deadlines: DeadlineWheel
    _lists: LivenessLists
    draining: bool

    if TYPE_CHECKING:
        # implemented by the mixins (see the module docstring)
        def _emit(self, topic: str, payload: dict[str, Any]) -> None: ...
        def allowed(self, session: Session, action: Action, name: str) -> bool: ...
        def report_denied(self, session: Session, action: Action, name: str) -> None: ...
        def may_receive(self, session: Session, topic: str) -> bool: ...
        def _release_grants(self, session_id: int) -> None: ...
        def _recheck_grants(self, session_id: int | None = None) -> None: ...
        def service(self, name: str) -> Service: ...
        def touch(self, worker: Worker, now: float) -> None: ...
        def _drop_worker(self, worker: Worker, now: float, reason: str, notify: bool) -> None: ...
        def _revive(self, worker: Worker, now: float, *, dispatch: bool) -> None: ...
        def _unpipeline(self, worker: Worker) -> None: ...
        def _live_move(self, worker: Worker, timeout: float) -> None: ...
        def _maybe_forget(self, service: Service) -> None: ...
        def _dispatch(self, service: Service, now: float) -> None: ...
        def _fail(self, request: Request, error: MaitredError) -> None: ...
        def _fail_queue(self, service: Service, code: Any, reason: str) -> None: ...
        def _count_error(
            self, service: Service | None, request: Request, error: MaitredError
        ) -> None: ...
        def _detach(self, request: Request) -> None: ...
        def _unhandled(self, request: Request, reason: str) -> None: ...
        def _orphan_session(self, now: float = 0.0) -> Session: ...

        # the long signature, as a callable (its definition carries the parameters)
        open_session: Callable[..., Session]

        def _submit_mmi(self, request: Request) -> Request | None: ...

        def _arm(self, request: Request) -> None: ...
        def _disarm(self, request: Request) -> None: ...
        def _tell_error(self, request: Request, error: MaitredError) -> None: ...
        @staticmethod
        def _size(request: Request) -> int: ...

    def _new_request(
        self,
        session: Session,
        name: str,
        body: Body,
        correlation: Any,
        now: float,
        headers: Headers | None = None,
        deadline: float = NO_DEADLINE,
        state: RequestState = _QUEUED,
    ) -> Request:
        """The one place the router makes a :class:`Request`: ``session``'s request to the
        service ``name``, accepted at ``now``, with the id ``_next_request``. A request done as
        it is made (refused at once, or answered by the broker itself: ``mmi.``) has the state
        DONE and no deadline."""
        return Request(
            id=self._next_request,
            service=name,
            body=body,
            caller=session,
            correlation=correlation,
            deadline=deadline,
            accepted=now,
            headers=headers,
            state=state,
        )

    # -- memory -----------------------------------------------------------------------------

    @property
    def max_memory(self) -> int:
        return self._max_memory

    @max_memory.setter
    def max_memory(self, value: int) -> None:
        self._max_memory = value
        #: what the hot path compares ``held`` with (no limit: never reached)
        self._cap = value if value > 0 else 1 << 62
        #: ``held`` at or under this ends an overload episode
        self._calm = value * 9 // 10

    def name_too_long(self, name: str) -> bool:
        """Whether ``name`` is longer than ``max_name_length`` UTF-8 bytes."""
        limit = self.max_name_length
        if len(name) > limit:
            return True
        return len(name) * 4 > limit and not name.isascii() and len(name.encode()) > limit

    def hold(self, nbytes: int) -> None:
        """A transport queued ``nbytes`` in a buffer of its own (an outbox): count them in
        ``held``. Every :meth:`hold` is matched by a :meth:`release` when they leave."""
        self.held += nbytes
        if self.held > self._cap and not self.overloaded:
            self._overload()

    def release(self, nbytes: int) -> None:
        """Bytes counted with :meth:`hold` left the transport's buffer (sent or dropped)."""
        self.held -= nbytes
        if self.overloaded and self.held <= self._calm:
            self._recovered()

    def _queued(self, service: Service, nbytes: int) -> None:
        service.queued_bytes += nbytes
        self.held += nbytes
        if self.held > self._cap and not self.overloaded:
            self._overload()

    def _unqueued(self, service: Service, request: Request) -> None:
        """``request`` left ``service``'s queue (dispatched, expired, cancelled, dropped)."""
        service.queued -= 1
        size = request.size
        service.queued_bytes -= size
        self.held -= size
        if self.overloaded and self.held <= self._calm:
            self._recovered()

    def _overload(self) -> None:
        self.overloaded = True
        self.stats["broker.overload_episodes"] += 1
        log.warning(
            "broker over its memory limit: %d bytes held, max_memory %d; new requests get 503",
            self.held,
            self.max_memory,
        )
        self._emit(
            "$sys.broker.overload", {"held": str(self.held), "max_memory": str(self.max_memory)}
        )

    def _recovered(self) -> None:
        self.overloaded = False
        log.warning("broker back under its memory limit: %d bytes held", self.held)
        self._emit(
            "$sys.broker.recovered", {"held": str(self.held), "max_memory": str(self.max_memory)}
        )
