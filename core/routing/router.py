"""The routing core: services and their workers, requests and replies, topics, liveness.

No I/O, no awaits, no clock: every method that depends on time takes ``now`` (monotonic seconds)
from the runtime. Deliveries go out through each session's :class:`SessionSink`, synchronously.

Dispatch pairs the oldest waiting request of a service with its least recently used worker that
has credit left. Deadlines sit in a coarse timing wheel (buckets of ``resolution`` seconds, never
early); liveness keeps workers in insertion-ordered lists by their last activity, so both cost
O(1) per message and ``tick`` only looks at what is due.

The router is a facade: each job lives in a module of its own (``state`` holds the shared state
and the byte budget, ``grants`` access checks, ``workers`` services, workers and liveness,
``requests`` requests and replies, ``expiry`` deadlines, ``topics`` publications and ``$sys.``
events, ``mmi`` the broker's own services); sessions, drain and introspection are here.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from maitred.core.access import AccessPolicy, Action, AllowAll, Grants, Identity, is_open
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.expiry import ExpiryMixin
from maitred.core.routing.grants import GrantsMixin
from maitred.core.routing.liveness import Liveness, LivenessLists
from maitred.core.routing.mmi import MmiMixin
from maitred.core.routing.model import (
    Body,
    Headers,
    Journal,
    Request,
    Service,
    ServicePolicy,
    Session,
    SessionSink,
    TransportStats,
    Worker,
)
from maitred.core.routing.patterns import SubjectTree
from maitred.core.routing.requests import RequestsMixin
from maitred.core.routing.state import (
    _CANCELLED,
    _DISPATCHED,
    _QUEUED,
    CLIENT_SYS_TOPICS,
    MMI_PREFIX,
    SYS_PREFIX,
    EventHook,
    MmiHandler,
    Tracer,
)
from maitred.core.routing.throttle import PeerThrottle
from maitred.core.routing.topics import TopicsMixin
from maitred.core.routing.wheel import DeadlineWheel
from maitred.core.routing.workers import WorkersMixin

__all__ = [
    "CLIENT_SYS_TOPICS",
    "MMI_PREFIX",
    "SYS_PREFIX",
    "EventHook",
    "Liveness",
    "MmiHandler",
    "Router",
    "Tracer",
]


class Router(RequestsMixin, ExpiryMixin, WorkersMixin, TopicsMixin, GrantsMixin, MmiMixin):
    """The transport-neutral routing core: a facade over the mixins of each job (see
    :mod:`maitred.core.routing.state`). See the module docstring."""

    def __init__(
        self,
        *,
        policy_for: Callable[[str], ServicePolicy] | None = None,
        liveness: Liveness | None = None,
        access: AccessPolicy | None = None,
        on_event: EventHook | None = None,
        mmi: MmiHandler | None = None,
        resolution: float = 0.05,
        max_subscriptions: int = 10_000,
        max_subscriptions_total: int = 100_000,
        max_services: int = 10_000,
        max_name_length: int = 255,
        max_memory: int = 1 << 30,
    ) -> None:
        self._policy_for = policy_for or (lambda _name: ServicePolicy())
        self.liveness = liveness or Liveness()
        self.access: AccessPolicy = access or AllowAll()
        self.grants = Grants()
        #: (role, action, pattern) of each run-time grant -> the sessions that made it (0: the
        #: broker itself, e.g. a plugin calling grant() without ``by``); revoked when none is left
        self._grant_holders: dict[tuple[str, Action, str], set[int]] = {}
        #: session id -> the patterns it subscribed to with ``check=False`` (delivered unasked)
        self._unchecked: dict[int, set[str]] = {}
        #: open sessions with a restricted identity (deliveries to them are always checked)
        self._restricted = 0
        self._access_open = is_open(self.access)
        self.auth_throttle = PeerThrottle()
        self._on_event = on_event
        self.node_name = ""
        self._mmi = mmi
        self._mmi_extra = {}
        self._pattern_watchers = []
        self._cancel_watchers = []
        self._pattern_refs = Counter()
        #: most patterns one session may subscribe to (a flood of SUBs must not grow the
        #: broker without bound)
        self.max_subscriptions = max_subscriptions
        #: most subscriptions of all sessions together
        self.max_subscriptions_total = max_subscriptions_total
        #: most services known at once (a service is forgotten when it has no worker and
        #: nothing queued); a request or worker for one more is refused with QUEUE_FULL
        self.max_services = max_services
        #: longest service name or subscription pattern, in UTF-8 bytes (BAD_REQUEST beyond)
        self.max_name_length = max_name_length
        #: bytes the broker may hold in queues and transport outboxes (0: no limit); past it
        #: new requests are refused with NO_WORKER (503) and ``$sys.broker.overload`` is
        #: published once, ``$sys.broker.recovered`` when ``held`` is back under 90 % of it
        self.max_memory = max_memory  # (a property: sets ``_cap`` too)
        #: bytes held now: waiting requests (``Request.size``) plus what transports report
        #: with :meth:`hold` / :meth:`release` (their outboxes)
        self.held = 0
        self.overloaded = False
        self.services: dict[str, Service] = {}
        self.sessions: dict[int, Session] = {}
        self.topics: SubjectTree[Session] = SubjectTree()
        self.stats: Counter[str] = Counter()
        #: per transport name: what its sessions submitted and what its workers served
        self.transports: dict[str, TransportStats] = {}
        #: called for each step of every request (see :data:`Tracer`); empty costs nothing
        self.tracers: list[Tracer] = []
        #: the durable store of ``on_no_worker = "store"`` services (set by the runtime; without
        #: one such services behave like ``wait``)
        self.journal: Journal | None = None
        self._orphans: Session | None = None
        self._next_request = 0
        self._next_session = 0
        self._next_worker = 0
        #: request deadlines (see :mod:`maitred.core.routing.wheel`)
        self._deadlines = DeadlineWheel(resolution)
        #: workers by last activity (see :mod:`maitred.core.routing.liveness`)
        self._lists = LivenessLists()
        self.draining = False

    # -- sessions ---------------------------------------------------------------------------

    def open_session(
        self,
        transport: str,
        sink: SessionSink,
        identity: Identity,
        now: float,
        label: str = "",
        *,
        quiet: bool = False,
        local_only: bool = False,
    ) -> Session:
        """Register a connection. ``quiet`` sessions (e.g. an endpoint's shared client session)
        publish no join/leave events; the requests of ``local_only`` sessions go to local
        workers only (see :attr:`Worker.remote`)."""
        self._next_session += 1
        session = Session(self._next_session, transport, sink, identity, label, now)
        session.quiet = quiet
        session.local_only = local_only
        counters = self.transports.get(transport)
        if counters is None:
            counters = self.transports[transport] = TransportStats()
        session.counters = counters
        self.sessions[session.id] = session
        self._restricted += identity.restricted
        if not quiet:
            self._emit(
                "$sys.session.join",
                {"session": session.label, "transport": transport, "identity": identity.name},
            )
        return session

    def close_session(self, session: Session, now: float, reason: str = "closed") -> None:
        """Forget a connection: its workers leave (their requests are redelivered or failed),
        its subscriptions end, replies still due to it are dropped."""
        if session.closed:
            return
        session.closed = True
        if session.queued:
            self._drop_queued(session, now)
        # take every worker of the session out of dispatch first, so a request redelivered
        # while the first one is dropped cannot land on a sibling that is about to go too
        for worker in session.workers:
            worker.service.free.pop(worker, None)
        for worker in list(session.workers):
            self._drop_worker(worker, now, reason, notify=False)
        for pattern in session.patterns:
            self.topics.remove(pattern, session)
            if self._pattern_watchers and not session.local_only:
                self._pattern_ref(pattern, -1)
        session.patterns.clear()
        self._unchecked.pop(session.id, None)
        del self.sessions[session.id]
        self._restricted -= session.identity.restricted
        self._release_grants(session.id)
        if session.quiet:
            return
        self._emit(
            "$sys.session.leave",
            {"session": session.label, "transport": session.transport, "reason": reason},
        )

    def _drop_queued(self, session: Session, now: float) -> None:
        """The requests a closing session left waiting in service queues: nobody waits for
        their replies, so they leave the queues (stored ones stay, without their caller)."""
        touched: dict[Service, None] = {}
        for request in list(session.queued.values()):
            if request.state is not _QUEUED:
                continue
            if request.stored >= 0:
                self._detach(request)
                continue
            request.state = _CANCELLED
            self._disarm(request)
            if self.tracers:
                self._trace("cancelled", request, "", now)
            service = self.services.get(request.service)
            if service is not None:
                service.queued -= 1
                touched[service] = None
            self.stats["requests.dropped_caller_gone"] += 1
        session.queued.clear()
        for service in touched:
            if not service.queued:
                service.queue.clear()
            elif len(service.queue) > 2 * service.queued + 64:
                service.queue = deque(r for r in service.queue if r.state is _QUEUED)
            self._maybe_forget(service)

    def set_identity(self, session: Session, identity: Identity) -> None:
        """Change who a session is (e.g. after a late login); clears its permission cache."""
        if not session.closed:
            self._restricted += identity.restricted - session.identity.restricted
        session.identity = identity
        session.allow_cache.clear()
        self._recheck_grants(session.id)

    # -- time -------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Expire what is due at ``now``: request deadlines and silent workers."""
        self._tick_deadlines(now)
        self._tick_workers(now)

    # -- shutdown -----------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Refuse new requests and workers from now on; in-flight requests may still finish."""
        self.draining = True

    def inflight_count(self) -> int:
        """Requests a worker is serving whose caller still waits (what a drain waits for)."""
        return sum(
            1
            for worker in self.iter_workers()
            for request in worker.inflight.values()
            if request.state is _DISPATCHED
        )

    def shutdown(self, now: float) -> None:
        """Fail everything still pending and drop every worker (telling each peer)."""
        self.draining = True
        for service in list(self.services.values()):
            self._fail_queue(service, ErrorCode.SHUTTING_DOWN, "broker is shutting down")
            for worker in list(service.workers):
                for request in worker.inflight.values():
                    if request.state is _DISPATCHED:
                        self._fail(
                            request,
                            MaitredError("broker is shutting down", ErrorCode.SHUTTING_DOWN),
                        )
                self._drop_worker(worker, now, "shutdown", notify=True)

    # -- stored requests ---------------------------------------------------------------------

    def restore(
        self,
        service_name: str,
        body: Body,
        headers: Headers | None,
        stored: int,
        deliveries: int,
        now: float,
    ) -> Request:
        """Queue a request brought back from the durable store (after a restart). It has no
        caller any more (its replies are dropped) and no deadline; the journal has it already."""
        self._next_request += 1
        service = self.service(service_name)
        caller = self._orphan_session(now)
        request = self._new_request(caller, service_name, body, None, now, headers)
        request.deliveries = deliveries
        request.stored = stored
        request.size = len(service_name) + sum(map(len, body))
        service.requests += 1
        return self._enqueue(service, request, now)

    def resume_stored(self, request: Request, now: float) -> None:
        """Queue a stored request the journal held back (a store shared by several brokers
        keeps it until one of them pulls it): this node pulled it, it is served here."""
        if request.state is not _QUEUED:
            return
        self._size(request)
        self._enqueue(self.service(request.service), request, now)

    def unqueue_stored(self, request: Request) -> bool:
        """Take a stored request out of its service's queue again (its worker died and no
        other worker here is free for it): the journal hands it back to the shared store and
        holds it as before this node pulled it (still queued, for :meth:`resume_stored`).
        False: it is not waiting in the queue (a worker took it meanwhile)."""
        service = self.services.get(request.service)
        if request.state is not _QUEUED or request.stored < 0 or service is None:
            return False
        queue = deque(r for r in service.queue if r is not request)  # (by identity)
        if len(queue) == len(service.queue):
            return False
        service.queue = queue
        self._unqueued(service, request)
        request.caller.queued.pop(request.id, None)
        self._maybe_forget(service)
        return True

    def set_backlog(self, name: str, waiting: int) -> None:
        """What waits for service ``name`` in a shared store, not pulled by any node yet (as
        its pulling journal last heard): ``mmi.queues`` counts it among the queued requests,
        and the service is known while it is above 0, with or without a worker."""
        service = self.services.get(name)
        if service is None:
            if waiting <= 0 or len(self.services) >= self.max_services:
                return
            service = self.service(name)
        service.backlog = max(0, waiting)
        self._maybe_forget(service)

    # -- introspection (MMI, metrics) ----------------------------------------------------------

    def iter_workers(self) -> Iterator[Worker]:
        for service in self.services.values():
            yield from service.workers

    def snapshot(self) -> Mapping[str, Any]:
        snap: dict[str, Any] = {
            "services": len(self.services),
            "sessions": len(self.sessions),
            "workers": sum(len(s.workers) for s in self.services.values()),
            "held_bytes": self.held,
            "overloaded": self.overloaded,
            "stats": dict(self.stats),
            # per transport name (mmi.info's "transports" lists the endpoints)
            "traffic": {name: t.as_dict() for name, t in sorted(self.transports.items())},
        }
        nodes = self.cluster_nodes()
        if nodes is not None:  # on a cluster node: this node and its peers (mmi.nodes' rows)
            snap["nodes"] = nodes
        return snap
