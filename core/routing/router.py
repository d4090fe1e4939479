"""The routing core: services and their workers, requests and replies, topics, liveness.

No I/O, no awaits, no clock: every method that depends on time takes ``now`` (monotonic seconds)
from the runtime. Deliveries go out through each session's :class:`SessionSink`, synchronously.

Dispatch pairs the oldest waiting request of a service with its least recently used worker that
has credit left. Deadlines sit in a coarse timing wheel (buckets of ``resolution`` seconds, never
early); liveness keeps workers in insertion-ordered lists by their last activity, so both cost
O(1) per message and ``tick`` only looks at what is due.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import msgspec

from maitred.core.access import (
    ANONYMOUS,
    AccessPolicy,
    Action,
    AllowAll,
    Grants,
    Identity,
    decide,
    decide_pattern,
    is_open,
    refusal,
)
from maitred.core.errors import Denied, ErrorCode, MaitredError
from maitred.core.routing.headers import client_headers
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
    SessionSink,
    TransportStats,
    Worker,
)
from maitred.core.routing.patterns import SubjectTree, is_pattern, matches, validate_pattern

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
#: error code and reason): every request's life, for traces and logs (``Router.tracers``)
Tracer = Callable[[str, Request, str, float], None]
MmiHandler = Callable[["Router", str, Body], list[bytes]]


class Liveness(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Worker liveness defaults (``[liveness]``).

    A worker's liveness window is ``heartbeat_interval * liveness``: silence is measured from
    the last thing the worker sent (a heartbeat, a reply, any command), never from what the
    broker sent it. An idle worker silent for its window is dead and dropped. A busy worker
    (one holding requests) silent for its window gets no new request, its pipelined credit
    falls back to its base credit, and it is dropped once silent for ``busy_timeout`` (its
    requests are then redelivered or failed by the service's policy); a word from it before
    then puts it back in dispatch. Workers that heartbeat while busy are never suspected.
    """

    heartbeat_interval: float = 2.5
    liveness: int = 3
    #: seconds of silence after which a worker holding requests is dropped (for workers that
    #: do not heartbeat while they work, e.g. zguide's or majortomo's; majortomo's default).
    #: It gets no new request from its liveness window on. At most the window: a busy worker
    #: is dropped at its window like an idle one. 0: never drop a busy worker for silence
    busy_timeout: float = 900.0

    @property
    def idle_timeout(self) -> float:
        return self.heartbeat_interval * self.liveness

    def problems(self) -> list[str]:
        out = []
        if not (0 < self.heartbeat_interval < math.inf):
            out.append("heartbeat_interval must be a finite number > 0")
        if self.liveness < 1:
            out.append("liveness must be >= 1")
        if not (0 <= self.busy_timeout < math.inf):
            out.append("busy_timeout must be a finite number >= 0 (0: never expire busy workers)")
        return out


class _DropSink:
    """The sink of the orphan session (stored requests whose caller is gone): drops all."""

    def deliver_request(self, worker: Worker, request: Request) -> None:
        return None

    def deliver_reply(self, request: Request, kind: ReplyKind, body: Body) -> None:
        return None

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        return None

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        return None

    def worker_removed(self, worker: Worker, reason: str) -> None:
        return None


_DROP = _DropSink()


class Router:
    """The transport-neutral routing core. See the module docstring."""

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
        self._on_event = on_event
        self._mmi = mmi
        self._res = resolution
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
        # deadline wheel: bucket index -> {request id: request}; heap of bucket indices
        self._wheel: dict[int, dict[int, Request]] = {}
        self._wheel_heap: list[int] = []
        # liveness lists: timeout -> workers ordered by last activity (oldest first)
        self._live: dict[float, OrderedDict[Worker, None]] = {}
        # busy workers silent past their window: (idle_timeout, busy_timeout) -> workers in
        # the order they fell silent (see ``tick``)
        self._suspects: dict[tuple[float, float], OrderedDict[Worker, None]] = {}
        # workers whose adaptive credit grew past their base credit (with a liveness window):
        # their credit falls back when they stop answering (checked by ``tick`` now and then)
        self._pipelined: dict[Worker, None] = {}
        self._pipeline_check = 0.0
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
    ) -> Session:
        """Register a connection. ``quiet`` sessions (e.g. an endpoint's shared client session)
        publish no join/leave events."""
        self._next_session += 1
        session = Session(self._next_session, transport, sink, identity, label, now)
        session.quiet = quiet
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
            self._drop_queued(session)
        # take every worker of the session out of dispatch first, so a request redelivered
        # while the first one is dropped cannot land on a sibling that is about to go too
        for worker in session.workers:
            worker.service.free.pop(worker, None)
        for worker in list(session.workers):
            self._drop_worker(worker, now, reason, notify=False)
        for pattern in session.patterns:
            self.topics.remove(pattern, session)
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

    def _drop_queued(self, session: Session) -> None:
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

    # -- access -----------------------------------------------------------------------------

    def allowed(self, session: Session, action: Action, name: str) -> bool:
        """Ask the access policy (cached per session); a denial is counted and published."""
        if self._access_open and not session.identity.restricted:
            return True
        key = (action, name)
        verdict = session.allow_cache.get(key)
        if verdict is None:
            # a pattern (a subscription) is allowed only if every name it matches is
            verdict = decide_pattern(self.access, self.grants, session.identity, action, name)
            if len(session.allow_cache) > 4096:
                session.allow_cache.clear()
            session.allow_cache[key] = verdict
        if not verdict:
            self.report_denied(session, action, name)
        return verdict

    def report_denied(self, session: Session, action: Action, name: str) -> None:
        """Count a denial and publish it on ``$sys.auth.denied``. The router calls it for what
        it refuses itself; a transport calls it for what its protocol refuses before asking the
        router (e.g. middleman's EREQ from an untrusted key)."""
        self.stats[f"denied.{action.value}"] += 1
        self._emit(
            "$sys.auth.denied",
            {
                "identity": session.identity.name,
                "session": session.label,
                "transport": session.transport,
                "action": action.value,
                "name": name,
            },
        )

    def may_grant(self, session: Session, action: Action, pattern: str) -> bool:
        """Whether ``session`` may grant ``action`` on ``pattern``: only what its identity may
        do itself, on every name the pattern matches (asked again when the rules change)."""
        return decide_pattern(self.access, self.grants, session.identity, action, pattern)

    def grant(self, role: str, action: Action, pattern: str, *, by: Session | None = None) -> bool:
        """Let restricted identities with ``role`` perform ``action`` on names matching
        ``pattern`` (run-time grants, e.g. middleman EPUB/EREQ/ESUB). True when the grant is
        new. Raises ValueError for a bad pattern.

        ``by`` is the session that grants: the grant must be within what it may do itself
        (:meth:`may_grant`; else a denial, counted and published, and ``Denied``), it is
        withdrawn when that session closes (or when the rules change and no longer let it),
        and lasts while any session that made it remains. Without ``by``, the broker grants
        (until :meth:`revoke`)."""
        problem = validate_pattern(pattern)
        if problem:
            raise ValueError(problem)
        holder = 0
        if by is not None:
            if by.closed:
                raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
            if not self.may_grant(by, action, pattern):
                self.report_denied(by, action, pattern)
                raise Denied(refusal(by.identity, action, pattern))
            holder = by.id
        self._grant_holders.setdefault((role, action, pattern), set()).add(holder)
        added = self.grants.grant(role, action, pattern)
        if added:
            self._clear_caches()
        return added

    def revoke(self, role: str, action: Action, pattern: str, *, by: Session | None = None) -> bool:
        """Withdraw a grant: ``by``'s share of it (the grant ends with its last holder), or,
        without ``by``, the grant whoever made it. True when the grant ended."""
        key = (role, action, pattern)
        holders = self._grant_holders.get(key)
        if by is not None:
            if holders is None or by.id not in holders:
                return False
            holders.discard(by.id)
            if holders:
                return False
        self._grant_holders.pop(key, None)
        removed = self.grants.revoke(role, action, pattern)
        if removed:
            self._clear_caches()
        return removed

    def _release_grants(self, session_id: int) -> None:
        """The session is gone: its grants end unless another holder keeps them."""
        ended = 0
        for key, holders in list(self._grant_holders.items()):
            if session_id in holders:
                holders.discard(session_id)
                if not holders:
                    del self._grant_holders[key]
                    ended += self.grants.revoke(*key)
        if ended:
            self.stats["grants.withdrawn"] += ended
            self._clear_caches()

    def _recheck_grants(self, session_id: int | None = None) -> None:
        """Drop each session's share of the grants it may no longer make (after the rules or
        its identity changed); a grant ends with its last holder."""
        ended = False
        for key, holders in list(self._grant_holders.items()):
            role, action, pattern = key
            for sid in list(holders):
                if sid == 0 or (session_id is not None and sid != session_id):
                    continue
                session = self.sessions.get(sid)
                if session is None or not self.may_grant(session, action, pattern):
                    holders.discard(sid)
                    self.stats["grants.dropped"] += 1
                    log.info(
                        "grant of %s on %s to %s dropped: %s no longer may",
                        action.value,
                        pattern,
                        role,
                        session.label if session else sid,
                    )
            if not holders:
                del self._grant_holders[key]
                ended |= self.grants.revoke(role, action, pattern)
        if ended:
            self._clear_caches()

    def _clear_caches(self) -> None:
        for session in self.sessions.values():
            session.allow_cache.clear()

    def set_access(self, access: AccessPolicy) -> None:
        """Replace the policy (e.g. when keys or rules change at run time)."""
        self.access = access
        self._access_open = is_open(access)
        for session in self.sessions.values():
            session.allow_cache.clear()
        self._recheck_grants()

    # -- services and workers -----------------------------------------------------------------

    def service(self, name: str) -> Service:
        """The service called ``name``, created with its configured policy on first use."""
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = Service(name, self._policy_for(name))
        return service

    def add_worker(
        self,
        session: Session,
        service_name: str,
        now: float,
        *,
        credit: int = 1,
        tag: Any = None,
        label: str = "",
        idle_timeout: float | None = None,
        busy_timeout: float | None = None,
        max_credit: int = 0,
        pipeline_below: float = 0.002,
    ) -> Worker:
        """Make ``session`` a worker of ``service_name`` with ``credit`` requests at a time.

        Adaptive credit (``max_credit`` > ``credit``): while the service has requests waiting
        and the worker answers each one within ``pipeline_below`` seconds of its dispatch, its
        credit grows by one per reply up to ``max_credit`` (requests are pipelined to it); the
        first answer that takes longer sets it back to ``credit``. Fast services get pipelining,
        slow ones keep one request per worker (no request waits long behind another).

        ``idle_timeout``/``busy_timeout`` override the liveness defaults; 0 means the transport
        watches liveness itself (the router never expires the worker). Raises
        :class:`~maitred.core.errors.Denied` or a ``BAD_REQUEST`` error.
        """
        if session.closed:
            raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
        if self.draining:
            raise MaitredError("broker is shutting down", ErrorCode.SHUTTING_DOWN)
        if not service_name or service_name.startswith(MMI_PREFIX):
            raise MaitredError(f"cannot serve {service_name!r}", ErrorCode.BAD_REQUEST)
        if credit < 1:
            raise MaitredError("credit must be >= 1", ErrorCode.BAD_REQUEST)
        if max_credit and max_credit < credit:
            raise MaitredError("max_credit must be >= credit", ErrorCode.BAD_REQUEST)
        if self.name_too_long(service_name):
            raise MaitredError(
                f"service name longer than {self.max_name_length} bytes", ErrorCode.BAD_REQUEST
            )
        if not self.allowed(session, Action.SERVE, service_name):
            raise Denied(f"{session.identity.name} may not serve {service_name}")
        if service_name not in self.services and len(self.services) >= self.max_services:
            self.stats["workers.too_many_services"] += 1
            raise MaitredError(
                f"too many services (at most {self.max_services})", ErrorCode.QUEUE_FULL
            )
        service = self.service(service_name)
        self._next_worker += 1
        worker = Worker(
            self._next_worker,
            session,
            service,
            credit,
            tag,
            label,
            now,
            self.liveness.idle_timeout if idle_timeout is None else idle_timeout,
            self.liveness.busy_timeout if busy_timeout is None else busy_timeout,
        )
        if max_credit > credit:
            worker.max_credit = max_credit
            worker.pipeline_below = pipeline_below
        first = not service.workers
        service.workers[worker] = None
        service.free[worker] = None
        session.workers[worker] = None
        self._live_put(worker, worker.idle_timeout)
        if first:
            self._emit("$sys.service.online", {"service": service_name})
        self._emit(
            "$sys.worker.ready",
            {
                "service": service_name,
                "worker": worker.label,
                "transport": session.transport,
                "identity": session.identity.name,
            },
        )
        self._dispatch(service, now)
        return worker

    def remove_worker(self, worker: Worker, now: float, reason: str = "disconnect") -> None:
        """The peer said it leaves (e.g. MDP DISCONNECT). Its requests are redelivered or failed."""
        self._drop_worker(worker, now, reason, notify=False)

    def touch(self, worker: Worker, now: float) -> None:
        """The worker showed a sign of life (a heartbeat, any command)."""
        if worker.alive:
            worker.touched = now
            if worker.suspect:
                self._revive(worker, now, dispatch=True)
                return
            live = self._live.get(worker.live_key)
            if live is not None:
                live.move_to_end(worker)

    def _suspect(self, worker: Worker, now: float) -> None:
        """A busy worker fell silent for its liveness window: no new request goes to it and its
        pipelined credit falls back, until it speaks again or ``busy_timeout`` drops it."""
        worker.suspect = True
        worker.service.free.pop(worker, None)
        self._unpipeline(worker)
        live = self._live.get(worker.live_key)
        if live is not None:
            live.pop(worker, None)
        worker.live_key = 0.0
        if worker.busy_timeout > 0:
            key = (worker.idle_timeout, worker.busy_timeout)
            suspects = self._suspects.get(key)
            if suspects is None:
                suspects = self._suspects[key] = OrderedDict()
            suspects[worker] = None
        self.stats["workers.suspected"] += 1
        log.info(
            "worker %s of %s silent for %.1fs while holding %d request(s): no new requests",
            worker.label,
            worker.service.name,
            now - worker.touched,
            len(worker.inflight),
        )

    def _revive(self, worker: Worker, now: float, *, dispatch: bool) -> None:
        """A suspect worker spoke again: back in its liveness list and in dispatch."""
        worker.suspect = False
        suspects = self._suspects.get((worker.idle_timeout, worker.busy_timeout))
        if suspects is not None:
            suspects.pop(worker, None)
        self._live_put(worker, worker.idle_timeout)
        self.stats["workers.revived"] += 1
        if dispatch and len(worker.inflight) < worker.credit:
            worker.service.free[worker] = None
            self._dispatch(worker.service, now)

    def _unpipeline(self, worker: Worker) -> None:
        """Set an adaptive worker's credit back to its base credit."""
        if worker.credit > worker.base_credit:
            worker.credit = worker.base_credit
            if len(worker.inflight) >= worker.credit:
                worker.service.free.pop(worker, None)
        self._pipelined.pop(worker, None)

    def _live_put(self, worker: Worker, timeout: float) -> None:
        worker.live_key = timeout
        if timeout > 0:
            live = self._live.get(timeout)
            if live is None:
                live = self._live[timeout] = OrderedDict()
            live[worker] = None

    def _live_move(self, worker: Worker, timeout: float) -> None:
        old = self._live.get(worker.live_key)
        if old is not None:
            old.pop(worker, None)
        self._live_put(worker, timeout)

    def _drop_worker(self, worker: Worker, now: float, reason: str, notify: bool) -> None:
        if not worker.alive:
            return
        worker.alive = False
        service = worker.service
        live = self._live.get(worker.live_key)
        if live is not None:
            live.pop(worker, None)
        if worker.suspect:
            suspects = self._suspects.get((worker.idle_timeout, worker.busy_timeout))
            if suspects is not None:
                suspects.pop(worker, None)
        self._unpipeline(worker)
        del service.workers[worker]
        service.free.pop(worker, None)
        worker.session.workers.pop(worker, None)
        requeue: list[Request] = []
        # a worker works on at most its base credit of requests at once, oldest first: those
        # it was sent beyond them (pipelined) were never started, so they go to another
        # worker whatever the redeliver policy says, and the delivery does not count
        started = worker.base_credit
        for request in worker.inflight.values():
            if request.state is not _DISPATCHED:
                started -= 1
                continue  # expired or cancelled while in flight: already answered
            request.worker = None
            journal = self.journal if request.stored >= 0 else None
            started -= 1
            if started < 0:
                request.deliveries -= 1
                if request.caller.closed and journal is None:
                    request.state = _CANCELLED
                    self._disarm(request)
                    continue
                request.state = _QUEUED
                requeue.append(request)
                self.stats["requests.handed_back"] += 1
                if journal is not None:
                    journal.redelivered(request)
            elif (journal is not None or service.policy.redeliver) and (
                request.deliveries < service.policy.max_deliveries
            ):
                request.state = _QUEUED
                requeue.append(request)
                self.stats["requests.redelivered"] += 1
                if journal is not None:
                    journal.redelivered(request)
            else:
                if journal is not None:
                    self.stats["requests.dead_lettered"] += 1
                    journal.dead(
                        request,
                        f"handed to {request.deliveries} workers, none answered ({reason})",
                    )
                self._fail(request, MaitredError(f"worker died ({reason})", ErrorCode.WORKER_DIED))
        worker.inflight.clear()
        if requeue:
            service.queue.extendleft(reversed(requeue))
            service.queued += len(requeue)
            self._queued(service, sum(map(self._size, requeue)))
            for request in requeue:
                if not request.caller.closed:
                    request.caller.queued[request.id] = request
        if notify:
            try:
                worker.session.sink.worker_removed(worker, reason)
            except Exception:  # a transport bug must not corrupt the router's state
                log.exception("worker_removed failed for %s", worker.label)
        expired = reason == "expired"
        self._emit(
            "$sys.worker.expired" if expired else "$sys.worker.gone",
            {"service": service.name, "worker": worker.label, "reason": reason},
        )
        if not service.workers:
            self._emit("$sys.service.offline", {"service": service.name})
            if service.queued and service.policy.on_no_worker == "fail":
                self._fail_queue(service, ErrorCode.NO_WORKER, "no worker left for the service")
        self._dispatch(service, now)
        self._maybe_forget(service)

    def _maybe_forget(self, service: Service) -> None:
        if not service.workers and not service.queued:
            service.queue.clear()
            if self.services.get(service.name) is service:
                del self.services[service.name]

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

    def _refuse_new(
        self, session: Session, name: str, correlation: Any, now: float, error: MaitredError
    ) -> None:
        """Refuse a request before any service object exists for it."""
        request = Request(
            id=self._next_request,
            service=name,
            body=(),
            caller=session,
            correlation=correlation,
            deadline=NO_DEADLINE,
            accepted=now,
            state=_DONE,
        )
        session.counters.requests += 1
        self._count_error(None, request, error)
        session.sink.deliver_error(request, error)

    # -- requests ---------------------------------------------------------------------------

    def submit(
        self,
        session: Session,
        service_name: str,
        body: Body,
        correlation: Any,
        now: float,
        *,
        timeout: float | None = None,
        headers: Headers | None = None,
        on_no_worker: Literal["wait", "fail"] | None = None,
        stamp: Iterable[tuple[str, str]] = (),
    ) -> Request | None:
        """Accept a request from ``session``. Replies and errors come back through its sink
        (an error may come back before this returns); returns the request, or None when it was
        refused at once. ``timeout`` and ``on_no_worker`` override the service's policy for
        this request (e.g. a protocol whose clients expect "no responder" at once).
        ``headers`` are the caller's (broker-owned names dropped, see :meth:`publish`),
        ``stamp`` the transport's own values.

        ``timeout`` is the caller's wish: None, 0, a negative number or NaN mean the service's
        ``request_timeout``; a larger one than the service's ``max_request_timeout`` is cut to
        it. Only ``math.inf`` (never a value read from a client) means no deadline at all, for
        a transport's own queues whose entries live as long as it keeps them."""
        if session.closed:
            raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
        headers = client_headers(headers, stamp)
        self._next_request += 1
        if service_name.startswith(MMI_PREFIX):
            return self._submit_mmi(session, service_name, body, correlation, now, headers)
        service = self.services.get(service_name)
        if service is None:
            if self.name_too_long(service_name):
                self.stats["requests.name_too_long"] += 1
                error = MaitredError(
                    f"service name longer than {self.max_name_length} bytes",
                    ErrorCode.BAD_REQUEST,
                )
                self._refuse_new(session, service_name[:64], correlation, now, error)
                return None
            if len(self.services) >= self.max_services:
                self.stats["requests.too_many_services"] += 1
                error = MaitredError(
                    f"too many services (at most {self.max_services})", ErrorCode.QUEUE_FULL
                )
                self._refuse_new(session, service_name, correlation, now, error)
                return None
            service = self.services[service_name] = Service(
                service_name, self._policy_for(service_name)
            )
        policy = service.policy
        if timeout is None or not timeout > 0:
            timeout = policy.request_timeout
        elif timeout != NO_DEADLINE and policy.max_request_timeout:
            timeout = min(timeout, policy.max_request_timeout)
        request = Request(
            id=self._next_request,
            service=service_name,
            body=body,
            caller=session,
            correlation=correlation,
            deadline=now + timeout if 0 < timeout < NO_DEADLINE else NO_DEADLINE,
            accepted=now,
            headers=headers,
        )
        service.requests += 1
        session.counters.requests += 1
        if self.tracers:
            self._trace("accepted", request, session.label, now)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "req %d: %s called %s",
                request.id,
                session.label,
                service_name,
                extra={"req": request.id, "service": service_name, "transport": session.transport},
            )
        if (not self._access_open or session.identity.restricted) and not self.allowed(
            session, Action.CALL, service_name
        ):
            self._refuse(
                service, request, Denied(f"{session.identity.name} may not call {service_name}")
            )
            return None
        if self.draining:
            self._refuse(
                service, request, MaitredError("broker is shutting down", ErrorCode.SHUTTING_DOWN)
            )
            return None
        if self.overloaded:
            self._overloaded(service, request)
            return None
        journal = self.journal if policy.on_no_worker == "store" else None
        free = service.free
        if free and not service.queued:
            if journal is not None:
                journal.append(request)
            if request.deadline != NO_DEADLINE:
                self._arm(request)
            self._assign(next(iter(free)), request, now)
            return request
        if journal is not None:
            return self._store(service, request, journal, now)
        if not service.workers and (on_no_worker or policy.on_no_worker) == "fail":
            self._unhandled(request, "no worker")
            self._refuse(
                service, request, MaitredError(f"no worker for {service_name}", ErrorCode.NO_WORKER)
            )
            return None
        # only a request that waits is held: its bytes are counted from here on
        size = request.size = len(service_name) + (
            len(body[0]) if len(body) == 1 else sum(map(len, body))
        )
        if self.held + size > self._cap:
            self._overloaded(service, request)
            return None
        if (
            service.queued >= policy.max_queue
            or service.queued_bytes + size > policy.max_queue_bytes
        ):
            if (
                policy.overflow == "reject"
                or policy.max_queue == 0
                or size > policy.max_queue_bytes
            ):
                self._queue_full(service, request)
                return None
            while service.queued >= policy.max_queue or (
                service.queued_bytes + size > policy.max_queue_bytes
            ):
                oldest = self._pop_queued(service)
                if oldest is None:
                    break
                self.stats["requests.dropped_oldest"] += 1
                self._fail(oldest, MaitredError("dropped: queue full", ErrorCode.QUEUE_FULL))
        if request.deadline != NO_DEADLINE:
            self._arm(request)
        service.queue.append(request)
        service.queued += 1
        service.queued_bytes += size
        self.held += size
        if self.held > self._cap and not self.overloaded:
            self._overload()
        session.queued[request.id] = request
        self._dispatch(service, now)
        return request

    def _overloaded(self, service: Service, request: Request) -> None:
        """Refuse ``request`` with 503: the broker holds ``max_memory`` bytes (or would)."""
        self.stats["requests.overload"] += 1
        if not self.overloaded:
            self._overload()
        reason = f"broker overloaded: {self.held} bytes held (max_memory {self.max_memory})"
        self._refuse(service, request, MaitredError(reason, ErrorCode.NO_WORKER))

    @staticmethod
    def _size(request: Request) -> int:
        """The bytes ``request`` holds while it waits (computed once)."""
        size = request.size
        if not size:
            size = request.size = len(request.service) + sum(map(len, request.body))
        return size

    def _queue_full(self, service: Service, request: Request) -> None:
        self.stats["requests.queue_full"] += 1
        policy = service.policy
        if service.queued >= policy.max_queue:
            reason = f"queue is full ({service.queued} requests, max_queue {policy.max_queue})"
        else:
            reason = (
                f"queue is full ({service.queued_bytes} + {request.size} bytes > "
                f"max_queue_bytes {policy.max_queue_bytes})"
            )
        self._refuse(service, request, MaitredError(reason, ErrorCode.QUEUE_FULL))

    def _store(
        self, service: Service, request: Request, journal: Journal, now: float
    ) -> Request | None:
        """Queue a request of a ``store`` service: kept in the journal until a worker answers
        it; never dropped for room (a full queue refuses the new request instead)."""
        policy = service.policy
        size = self._size(request)
        if self.held + size > self._cap:
            self._overloaded(service, request)
            return None
        if (
            service.queued >= policy.max_queue
            or service.queued_bytes + size > policy.max_queue_bytes
        ):
            self._queue_full(service, request)
            return None
        journal.append(request)
        if request.deadline != NO_DEADLINE:
            self._arm(request)
        service.queue.append(request)
        service.queued += 1
        self._queued(service, request.size)
        request.caller.queued[request.id] = request
        self._dispatch(service, now)
        return request

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
        request = Request(
            id=self._next_request,
            service=service_name,
            body=body,
            caller=self._orphan_session(now),
            correlation=None,
            deadline=NO_DEADLINE,
            accepted=now,
            headers=headers,
            deliveries=deliveries,
            stored=stored,
            size=len(service_name) + sum(map(len, body)),
        )
        service.requests += 1
        service.queue.append(request)
        service.queued += 1
        self._queued(service, request.size)
        request.caller.queued[request.id] = request
        self._dispatch(service, now)
        return request

    def _orphan_session(self, now: float = 0.0) -> Session:
        """The session of stored requests whose caller is gone: it drops what it is sent."""
        session = self._orphans
        if session is None or session.closed:
            session = self._orphans = self.open_session(
                "store", _DROP, ANONYMOUS, now, label="store:orphans", quiet=True
            )
        return session

    def _detach(self, request: Request) -> None:
        """A stored request outlives its caller's wait: hand it to the orphan session, so it
        stays queued or with its worker and what comes for it is dropped."""
        self._disarm(request)
        request.deadline = NO_DEADLINE
        request.caller.queued.pop(request.id, None)
        request.caller = self._orphan_session()

    def _refuse(self, service: Service, request: Request, error: MaitredError) -> None:
        request.state = _DONE
        service.errors += 1
        self._count_error(service, request, error)
        self._maybe_forget(service)
        request.caller.sink.deliver_error(request, error)

    def _submit_mmi(
        self,
        session: Session,
        name: str,
        body: Body,
        correlation: Any,
        now: float,
        headers: Headers | None,
    ) -> Request | None:
        request = Request(
            id=self._next_request,
            service=name,
            body=body,
            caller=session,
            correlation=correlation,
            deadline=NO_DEADLINE,
            accepted=now,
            headers=headers,
            state=_DONE,
        )
        if not self.allowed(session, Action.CALL, name):
            session.sink.deliver_error(
                request, Denied(f"{session.identity.name} may not call {name}")
            )
            return None
        self.stats["mmi.requests"] += 1
        if self._mmi is None:
            reply = [*body[:-1], b"501"] if body else [b"501"]
        else:
            reply = self._mmi(self, name, body)
        session.sink.deliver_reply(request, _FINAL, reply)
        return request

    def _pop_queued(self, service: Service) -> Request | None:
        queue = service.queue
        while queue:
            request = queue.popleft()
            if request.state is _QUEUED:
                self._unqueued(service, request)
                request.caller.queued.pop(request.id, None)
                return request
        return None

    def _dispatch(self, service: Service, now: float) -> None:
        free = service.free
        queue = service.queue
        while free and service.queued:
            request = queue.popleft()
            if request.state is not _QUEUED:
                continue
            self._unqueued(service, request)
            request.caller.queued.pop(request.id, None)
            if request.caller.closed:
                if request.stored < 0:
                    request.state = _CANCELLED
                    self._disarm(request)
                    continue
                self._detach(request)
            self._assign(next(iter(free)), request, now)
        if not service.queued and queue:
            queue.clear()

    def _assign(self, worker: Worker, request: Request, now: float) -> None:
        inflight = worker.inflight
        was_idle = not inflight
        inflight[request.id] = request
        request.worker = worker
        request.state = _DISPATCHED
        request.deliveries += 1
        request.dispatched = now
        free = worker.service.free
        if len(inflight) >= worker.credit:
            del free[worker]
        else:
            free.move_to_end(worker)
        if was_idle:
            worker.progress = now
            if not worker.idle_timeout:
                # the transport watches this worker while idle; busy, busy_timeout bounds it
                worker.touched = now
                self._live_move(worker, worker.busy_timeout)
        worker.session.counters.served += 1
        if self.tracers:
            self._trace("dispatched", request, worker.label, now)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "req %d: %s -> worker %s (delivery %d)",
                request.id,
                request.service,
                worker.label,
                request.deliveries,
                extra={
                    "req": request.id,
                    "service": request.service,
                    "transport": worker.session.transport,
                    "worker": worker.label,
                },
            )
        worker.session.sink.deliver_request(worker, request)

    def reply(
        self,
        worker: Worker,
        token: int,
        body: Body,
        now: float,
        final: bool = True,
        headers: Headers | None = None,
        *,
        stamp: Iterable[tuple[str, str]] = (),
    ) -> bool:
        """A reply from ``worker`` to the request whose id is ``token`` (``headers``, if any,
        reach the caller's transport as ``request.reply_headers``, broker-owned names dropped
        and ``stamp`` added, as for :meth:`publish`). False (and counted) when the worker
        holds no such request."""
        request = worker.inflight.get(token)
        if request is None:
            self.stats["replies.unknown"] += 1
            return False
        if headers is not None:
            request.reply_headers = client_headers(headers, stamp)
        worker.touched = now
        if worker.suspect:  # it speaks again: back in dispatch (below for a final reply)
            self._revive(worker, now, dispatch=not final)
        if final:
            del worker.inflight[token]
            worker.served += 1
            worker.progress = now
            if request.stored >= 0 and self.journal is not None:
                self.journal.done(request)
            service = worker.service
            free = service.free
            if worker.max_credit:
                if now - request.dispatched < worker.pipeline_below:
                    if service.queued and worker.credit < worker.max_credit:
                        worker.credit += 1
                        if worker.idle_timeout > 0:  # watched for the moment it stops answering
                            self._pipelined[worker] = None
                elif worker.credit > worker.base_credit:
                    self._unpipeline(worker)
            if worker.alive:
                if len(worker.inflight) < worker.credit:
                    if worker not in free:
                        free[worker] = None
                else:  # its credit was just lowered below what it holds
                    free.pop(worker, None)
            if not worker.inflight:
                self._live_move(worker, worker.idle_timeout)
            else:
                self.touch(worker, now)
            state = request.state
            request.state = _DONE
            # hand the worker its next request before answering the caller: on a busy service
            # the worker's round trip is the critical path, the caller's reply is not
            if service.queued:
                self._dispatch(service, now)
            if state is _DISPATCHED:
                service.replies += 1
                service.latency.observe(now - request.accepted)
                caller = request.caller
                caller.counters.replies += 1
                if self.tracers:
                    self._trace("replied", request, worker.label, now)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "req %d: %s answered by %s in %.1f ms",
                        request.id,
                        request.service,
                        worker.label,
                        (now - request.accepted) * 1000.0,
                        extra={
                            "req": request.id,
                            "service": request.service,
                            "transport": caller.transport,
                            "worker": worker.label,
                        },
                    )
                if request.bucket is not None:
                    del request.bucket[request.id]
                    request.bucket = None
                if not caller.closed:
                    caller.sink.deliver_reply(request, _FINAL, body)
            return True
        self.touch(worker, now)
        if request.state is _DISPATCHED and not request.caller.closed:
            request.caller.sink.deliver_reply(request, _PARTIAL, body)
        return True

    def reply_error(self, worker: Worker, token: int, error: MaitredError, now: float) -> bool:
        """The worker answers ``token`` with an error (for protocols that have error replies)."""
        request = worker.inflight.get(token)
        if request is None:
            self.stats["replies.unknown"] += 1
            return False
        if request.state is _DISPATCHED:
            request.state = _DONE  # so reply() below delivers nothing
            self._disarm(request)
            worker.service.errors += 1
            self._count_error(worker.service, request, error)
            if not request.caller.closed:
                request.caller.sink.deliver_error(request, error)
        return self.reply(worker, token, (), now, final=True)

    def held_by_worker(self, request: Request) -> Worker | None:
        """The worker that still holds ``request`` (its reply token is open), else None."""
        worker = request.worker
        if worker is not None and worker.alive and request.id in worker.inflight:
            return worker
        return None

    def can_accept(self, service_name: str) -> bool:
        """Whether a request to ``service_name`` would be taken now (a free worker, or room in
        its queue) rather than refused as QUEUE_FULL."""
        if self.overloaded:
            return False
        service = self.services.get(service_name)
        if service is None:
            return len(self.services) < self.max_services
        policy = service.policy
        return bool(service.free) or (
            service.queued < policy.max_queue and service.queued_bytes < policy.max_queue_bytes
        )

    def cancel(self, request: Request, now: float) -> None:
        """The caller gave up on ``request``: nothing more is delivered for it. A worker serving
        it keeps its credit until it answers. A stored request stays queued or with its worker
        (it is only detached from the caller)."""
        if request.stored >= 0 and request.state in (_QUEUED, _DISPATCHED):
            self._detach(request)
            return
        if request.state is _QUEUED:
            request.state = _CANCELLED
            request.caller.queued.pop(request.id, None)
            service = self.services.get(request.service)
            if service is not None:
                self._unqueued(service, request)
                self._maybe_forget(service)
        elif request.state is _DISPATCHED:
            request.state = _CANCELLED
        self._disarm(request)

    def _fail(self, request: Request, error: MaitredError) -> None:
        request.state = _DONE
        self._disarm(request)
        service = self.services.get(request.service)
        if service is not None:
            service.errors += 1
        self._count_error(service, request, error)
        if not request.caller.closed:
            request.caller.sink.deliver_error(request, error)

    def _fail_queue(self, service: Service, code: ErrorCode, reason: str) -> None:
        while service.queued:
            request = self._pop_queued(service)
            if request is None:
                break
            self._unhandled(request, reason)
            self._fail(request, MaitredError(reason, code))
        service.queue.clear()

    def _count_error(self, service: Service | None, request: Request, error: MaitredError) -> None:
        """Count a failed request by code (service and caller's transport), trace and log it."""
        code = int(error.code)
        if service is not None:
            service.error_codes[code] += 1
        request.caller.counters.errors += 1
        if self.tracers:
            self._trace("failed", request, f"{code} {error}", math.nan)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "req %d: %s failed: %d %s",
                request.id,
                request.service,
                code,
                error,
                extra={
                    "req": request.id,
                    "service": request.service,
                    "transport": request.caller.transport,
                    "code": code,
                },
            )

    def _trace(self, event: str, request: Request, detail: str, now: float) -> None:
        for tracer in self.tracers:
            try:
                tracer(event, request, detail, now)
            except Exception:  # a tracer must never break routing
                log.exception("tracer %r failed", tracer)

    def _unhandled(self, request: Request, reason: str) -> None:
        self.stats["requests.unhandled"] += 1
        self._emit(
            "$sys.message.unhandled",
            {"service": request.service, "reason": reason, "caller": request.caller.label},
        )

    # -- deadlines ----------------------------------------------------------------------------

    def _arm(self, request: Request) -> None:
        index = -int(-request.deadline // self._res)  # ceil: never expire early
        bucket = self._wheel.get(index)
        if bucket is None:
            bucket = self._wheel[index] = {}
            heapq.heappush(self._wheel_heap, index)
        bucket[request.id] = request
        request.bucket = bucket

    def _disarm(self, request: Request) -> None:
        bucket = request.bucket
        if bucket is not None:
            bucket.pop(request.id, None)
            request.bucket = None

    def tick(self, now: float) -> None:
        """Expire what is due at ``now``: request deadlines and silent workers."""
        current = int(now // self._res)
        heap = self._wheel_heap
        while heap and heap[0] <= current:
            bucket = self._wheel.pop(heapq.heappop(heap), None)
            if bucket:
                for request in list(bucket.values()):
                    request.bucket = None
                    self._expire(request, now)
        # pipelined workers that stopped answering for their window: back to base credit
        # (looked at a few times per heartbeat interval: windows are seconds long)
        if self._pipelined and now >= self._pipeline_check:
            self._pipeline_check = now + self.liveness.heartbeat_interval / 4
            for worker in [w for w in self._pipelined if now - w.progress >= w.idle_timeout]:
                self._unpipeline(worker)  # takes it out of ``_pipelined``
                self.stats["workers.pipeline_stalled"] += 1
        # collect every overdue worker and take it out of dispatch before dropping any, so a
        # request redelivered from one cannot land on another that is overdue too. A busy
        # worker silent for its window is suspected first (no new requests) and dropped only
        # after its busy_timeout of silence, unless that is no longer than its window.
        due: list[Worker] = []
        for timeout, live in list(self._live.items()):
            limit = now - timeout
            for worker in live:
                if worker.touched > limit:
                    break
                due.append(worker)
        for (_idle, busy), suspects in self._suspects.items():
            limit = now - busy
            for worker in suspects:
                if worker.touched > limit:
                    break
                due.append(worker)
        suspected: list[Worker] = []
        for worker in due:
            if (
                worker.inflight
                and not worker.suspect
                and worker.live_key == worker.idle_timeout > 0
                and not 0 < worker.busy_timeout <= now - worker.touched
            ):
                suspected.append(worker)
            else:
                worker.service.free.pop(worker, None)
        if suspected:
            for worker in suspected:
                self._suspect(worker, now)
            just = {id(w) for w in suspected}
            due = [w for w in due if id(w) not in just]
        for worker in due:
            if not worker.alive:
                continue
            self.stats["workers.expired"] += 1
            log.info(
                "worker %s of %s expired after %.1fs of silence",
                worker.label,
                worker.service.name,
                now - worker.touched,
            )
            self._drop_worker(worker, now, "expired", notify=True)
        for timeout in [t for t, live in self._live.items() if not live]:
            del self._live[timeout]
        for key in [k for k, suspects in self._suspects.items() if not suspects]:
            del self._suspects[key]

    def _expire(self, request: Request, now: float) -> None:
        service = self.services.get(request.service)
        if request.stored >= 0 and request.state in (_QUEUED, _DISPATCHED):
            # the caller's wait ends; the request stays in the store until a worker answers it
            if service is not None:
                service.timeouts += 1
            self.stats["requests.expired_stored"] += 1
            where = "waits for a worker" if request.state is _QUEUED else "is with its worker"
            error = MaitredError(
                f"no answer from {request.service} before the deadline; the request is "
                f"stored and {where}",
                ErrorCode.TIMEOUT,
            )
            self._count_error(service, request, error)
            self._tell_error(request, error)
            self._detach(request)
            return
        if request.state is _QUEUED:
            request.state = _EXPIRED
            request.caller.queued.pop(request.id, None)
            if service is not None:
                self._unqueued(service, request)
                service.timeouts += 1
            self.stats["requests.expired_queued"] += 1
            self._unhandled(request, "deadline passed while waiting for a worker")
            error = MaitredError(
                f"no worker answered {request.service} before the deadline", ErrorCode.TIMEOUT
            )
            self._count_error(service, request, error)
            if service is not None:
                self._maybe_forget(service)
            self._tell_error(request, error)
        elif request.state is _DISPATCHED:
            # stays in the worker's inflight until it answers, so its credit stays taken
            request.state = _EXPIRED
            if service is not None:
                service.timeouts += 1
            self.stats["requests.expired_inflight"] += 1
            error = MaitredError(
                f"{request.service} did not answer before the deadline", ErrorCode.TIMEOUT
            )
            self._count_error(service, request, error)
            self._tell_error(request, error)

    def _tell_error(self, request: Request, error: MaitredError) -> None:
        """Deliver an error from the timer path, where one failing sink must not stop the
        expiry of everything else due (the router's state is already updated)."""
        if request.caller.closed:
            return
        try:
            request.caller.sink.deliver_error(request, error)
        except Exception:
            log.exception("deliver_error failed for %s", request.caller.label)

    # -- topics -------------------------------------------------------------------------------

    def subscribe(self, session: Session, pattern: str, *, check: bool = True) -> bool:
        """Subscribe ``session`` to ``pattern``; False when it was already subscribed.
        Raises ``Denied``, a ``BAD_REQUEST`` error for an invalid pattern, or ``QUEUE_FULL``
        past ``max_subscriptions`` (or ``max_subscriptions_total``, which a ``check=False``
        subscription may pass: one per connection).

        A pattern is allowed only if every topic it can match is allowed (see
        :func:`~maitred.core.access.decide_pattern`): ``chat.>`` needs more than an allow on
        ``chat.*``, and ``>`` is refused while a deny rule takes any topic from it.
        ``check=False`` is for channels a transport owns for the session itself (e.g.
        middleman's private ``MSG:<id>``): the access policy is not asked, now or on delivery."""
        if session.closed:
            raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
        problem = validate_pattern(pattern)
        if problem:
            raise MaitredError(problem, ErrorCode.BAD_REQUEST)
        if self.name_too_long(pattern):
            raise MaitredError(
                f"pattern longer than {self.max_name_length} bytes", ErrorCode.BAD_REQUEST
            )
        if check and not self.allowed(session, Action.SUBSCRIBE, pattern):
            raise Denied(refusal(session.identity, Action.SUBSCRIBE, pattern))
        if pattern in session.patterns:
            return False
        if len(session.patterns) >= self.max_subscriptions:
            self.stats["subscriptions.refused"] += 1
            raise MaitredError(
                f"too many subscriptions (at most {self.max_subscriptions} per session)",
                ErrorCode.QUEUE_FULL,
            )
        if check and self.topics.size >= self.max_subscriptions_total:
            self.stats["subscriptions.refused"] += 1
            raise MaitredError(
                f"too many subscriptions (at most {self.max_subscriptions_total} in all)",
                ErrorCode.QUEUE_FULL,
            )
        session.patterns.add(pattern)
        self.topics.add(pattern, session)
        if not check:
            self._unchecked.setdefault(session.id, set()).add(pattern)
        return True

    def unsubscribe(self, session: Session, pattern: str) -> bool:
        if pattern not in session.patterns:
            return False
        session.patterns.discard(pattern)
        self.topics.remove(pattern, session)
        unchecked = self._unchecked.get(session.id)
        if unchecked is not None:
            unchecked.discard(pattern)
            if not unchecked:
                del self._unchecked[session.id]
        return True

    def may_receive(self, session: Session, topic: str) -> bool:
        """Whether a publication on ``topic`` may be delivered to ``session``: it must be a
        topic the session may subscribe to *now* (rules and grants change after a subscription
        was made). Cached per session and topic, like every verdict; never reported as a
        denial (the publisher did nothing wrong)."""
        if self._access_open and not session.identity.restricted:
            return True
        key = (Action.SUBSCRIBE, topic)
        verdict = session.allow_cache.get(key)
        if verdict is None:
            unchecked = self._unchecked.get(session.id)
            if unchecked and any(matches(p, topic) for p in unchecked):
                return True  # the transport's own channel (not cached: not a verdict)
            verdict = decide(self.access, self.grants, session.identity, Action.SUBSCRIBE, topic)
            if len(session.allow_cache) > 4096:
                session.allow_cache.clear()
            session.allow_cache[key] = verdict
        return verdict

    def _deliver(self, targets: set[Session], topic: str, body: Body, headers: Headers) -> int:
        """Hand a publication to each target that may receive it; the number reached."""
        check = not self._access_open
        if not check and not self._restricted:  # nobody to check: the plain loop
            reached = 0
            for target in targets:
                if not target.closed:
                    reached += 1
                    try:
                        target.sink.deliver_event(topic, body, headers)
                    except Exception:
                        log.exception("deliver_event failed for %s", target.label)
            return reached
        key = (Action.SUBSCRIBE, topic)
        reached = 0
        for target in targets:
            if target.closed:
                continue
            if check or target.identity.restricted:
                # the cached verdict inline (the common case); else ask
                verdict = target.allow_cache.get(key)
                if not (verdict or (verdict is None and self.may_receive(target, topic))):
                    self.stats["delivered.withheld"] += 1
                    continue
            reached += 1
            try:
                target.sink.deliver_event(topic, body, headers)
            except Exception:
                log.exception("deliver_event failed for %s", target.label)
        return reached

    def publish(
        self,
        session: Session | None,
        topic: str,
        body: Body,
        headers: Headers | None = None,
        *,
        stamp: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Deliver to every session subscribed to a matching pattern (once per session) that
        may receive ``topic`` (:meth:`may_receive`). ``session`` None is the broker itself.
        Returns the number of sessions reached.

        ``headers`` are the publisher's: any broker-owned name in them (``Cid``, ``Uid``,
        ``Rid``, in any case) is dropped; ``stamp`` is the transport's own values of those
        (added last)."""
        if session is not None:
            if session.closed:
                raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
            problem = validate_pattern(topic)
            if problem or is_pattern(topic):
                raise MaitredError(problem or "cannot publish to a pattern", ErrorCode.BAD_REQUEST)
            if topic.startswith(SYS_PREFIX) and topic not in CLIENT_SYS_TOPICS:
                self.report_denied(session, Action.PUBLISH, topic)
                raise Denied(f"{topic} is reserved for the broker")
            if not self.allowed(session, Action.PUBLISH, topic):
                raise Denied(refusal(session.identity, Action.PUBLISH, topic))
        targets = self.topics.match(topic)
        hdrs = client_headers(headers, stamp) or {}
        reached = self._deliver(targets, topic, body, hdrs) if targets else 0
        self.stats["published"] += 1
        self.stats["delivered"] += reached
        return reached

    def _emit(self, topic: str, payload: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(topic, payload)
            except Exception:
                log.exception("system event hook failed for %s", topic)
        if self.topics:
            targets = self.topics.match(topic)
            if targets:
                self._deliver(targets, topic, (_json.encode(payload),), {})

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

    # -- introspection (MMI, metrics) ----------------------------------------------------------

    def iter_workers(self) -> Iterator[Worker]:
        for service in self.services.values():
            yield from service.workers

    def snapshot(self) -> Mapping[str, Any]:
        return {
            "services": len(self.services),
            "sessions": len(self.sessions),
            "workers": sum(len(s.workers) for s in self.services.values()),
            "held_bytes": self.held,
            "overloaded": self.overloaded,
            "stats": dict(self.stats),
            # per transport name (mmi.info's "transports" lists the endpoints)
            "traffic": {name: t.as_dict() for name, t in sorted(self.transports.items())},
        }
