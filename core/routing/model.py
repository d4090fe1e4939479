"""The objects the router keeps: sessions, workers, services, requests; and the sink contract.

Transports implement :class:`SessionSink` (non-blocking: queue bytes, never await) and hold the
:class:`Session` and :class:`Worker` handles the router gives them. Everything else here belongs
to the router; transports read these objects but never change them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any, Literal, Protocol, TypedDict

import msgspec

from maitred.core.access import Action, Identity
from maitred.core.errors import MaitredError

#: A message body: opaque frames, never decoded by the core.
Body = Sequence[bytes]
Headers = Mapping[str, str]

NO_DEADLINE = math.inf


class ReplyKind(IntEnum):
    PARTIAL = 1
    FINAL = 2


class RequestState(IntEnum):
    QUEUED = 1
    DISPATCHED = 2
    DONE = 3
    EXPIRED = 4
    CANCELLED = 5


#: upper bounds (seconds) of the request latency histogram buckets (plus +Inf)
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Histogram:
    """Request latencies (acceptance to final reply) in fixed buckets, Prometheus style:
    ``counts[i]`` holds the observations ``<= LATENCY_BOUNDS[i]`` and above the bound before;
    the last count is the ``+Inf`` bucket."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (None when empty; ``inf``
        when it lies beyond the last bound)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, n in zip(LATENCY_BOUNDS, self.counts, strict=False):
            seen += n
            if seen >= rank:
                return bound
        return math.inf


class TransportStats:
    """Counters of one transport as seen by the router: ``requests``, ``replies`` (final) and
    ``errors`` of the requests its sessions submitted, and ``served``: requests handed to its
    workers."""

    __slots__ = ("errors", "replies", "requests", "served")

    def __init__(self) -> None:
        self.requests = 0
        self.replies = 0
        self.errors = 0
        self.served = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "replies": self.replies,
            "errors": self.errors,
            "served": self.served,
        }


class ServicePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a service treats its requests (``[services.default]`` / ``[services.NAME]``)."""

    #: with no worker connected: ``wait`` queues until the deadline, ``fail`` answers 503 at
    #: once, ``store`` keeps every request in the broker's durable store until a worker answers
    #: it (across restarts; the caller's deadline only ends its wait)
    on_no_worker: Literal["wait", "fail", "store"] = "wait"
    #: seconds from acceptance to the final reply; 0 means no deadline. It is also the
    #: deadline of a request whose caller asks for none (a timeout of 0, negative or missing)
    request_timeout: float = 30.0
    #: the longest deadline a caller may ask for (seconds); a longer one is cut to this.
    #: 0: no limit
    max_request_timeout: float = 3600.0
    #: requests waiting for a worker (not counting those being served)
    max_queue: int = 10_000
    #: bytes the waiting requests may hold (their body frames and service name); a request
    #: that would pass it is treated like one past ``max_queue`` (see ``overflow``), and one
    #: larger than this on its own is always refused
    max_queue_bytes: int = 64 << 20
    #: when the queue is full (``max_queue`` or ``max_queue_bytes``): ``reject`` the new
    #: request, or ``drop_oldest`` waiting ones until it fits
    overflow: Literal["reject", "drop_oldest"] = "reject"
    #: re-dispatch an in-flight request when its worker dies (for idempotent services)
    redeliver: bool = False
    #: with ``redeliver``: how many times a request is handed to a worker before it fails
    max_deliveries: int = 3

    def problems(self) -> list[str]:
        out = []
        if not (0 <= self.request_timeout < math.inf):
            out.append("request_timeout must be a finite number >= 0")
        if not (0 <= self.max_request_timeout < math.inf):
            out.append("max_request_timeout must be a finite number >= 0 (0: no limit)")
        if self.max_queue < 0:
            out.append("max_queue must be >= 0")
        if self.max_queue_bytes < 0:
            out.append("max_queue_bytes must be >= 0")
        if self.max_deliveries < 1:
            out.append("max_deliveries must be >= 1")
        return out


class Journal(Protocol):
    """Where the router keeps the requests of ``on_no_worker = "store"`` services (the runtime's
    durable store). Calls return at once: writes are buffered and committed in batches."""

    #: True when the journal holds the requests it is given (``append``) instead of the
    #: router's queue: a store shared by several brokers, from which each one pulls only what
    #: its free workers can take and hands it back with ``Router.resume_stored``
    pulls: bool

    def append(self, request: Request) -> None:
        """A request was accepted: store it and set ``request.stored`` to its id."""

    def done(self, request: Request) -> None:
        """Its worker answered it (a final reply or an error reply): forget it."""

    def redelivered(self, request: Request) -> None:
        """Its worker died and it waits for another one (``request.deliveries`` so far)."""

    def dead(self, request: Request, reason: str) -> None:
        """It was handed to workers ``max_deliveries`` times without an answer: move it to the
        dead letters with ``reason``."""

    def refusal(self, size: int) -> MaitredError | None:
        """Why a new request of ``size`` bytes cannot be stored now (too large for the store,
        or the store is unavailable), checked before it is accepted; None: it can."""


class SessionSink(Protocol):
    """What a transport implements for each session. Every method must return at once."""

    def deliver_request(self, worker: Worker, request: Request) -> None:
        """Hand ``request`` to ``worker`` (a worker of this session); reply with its id."""

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        """A partial or final reply to ``request``, which this session submitted, with the
        headers its worker sent with this reply (broker-owned names dropped, the worker's
        transport's own stamped; None: it sent none)."""

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        """``request`` (submitted by this session) failed; no more replies follow."""

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        """A publication on ``topic`` matching one of this session's subscriptions."""

    def worker_removed(self, worker: Worker, reason: str) -> None:
        """The router dropped ``worker`` on its own (expired, shutdown): tell the peer."""


class BaseSink:
    """A :class:`SessionSink` that ignores everything: a transport's sink subclasses it and
    overrides only what its sessions receive (a client session gets no requests, a worker
    session no replies, ...)."""

    __slots__ = ()

    def deliver_request(self, worker: Worker, request: Request) -> None:
        return None

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        return None

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        return None

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        return None

    def worker_removed(self, worker: Worker, reason: str) -> None:
        return None


class Session:
    """One connection (or one logical peer) of a transport."""

    __slots__ = (
        "allow_cache",
        "closed",
        "counters",
        "id",
        "identity",
        "label",
        "local_only",
        "opened",
        "patterns",
        "queued",
        "quiet",
        "sink",
        "transport",
        "workers",
    )

    def __init__(
        self,
        sid: int,
        transport: str,
        sink: SessionSink,
        identity: Identity,
        label: str,
        now: float,
    ) -> None:
        self.id = sid
        self.transport = transport
        self.sink = sink
        self.identity = identity
        self.label = label or f"{transport}:{sid}"
        self.opened = now
        self.closed = False
        self.quiet = False
        #: its requests go to local workers only, never to a remote node's (a cluster node's
        #: session for the requests other nodes forwarded here: they must not travel on)
        self.local_only = False
        self.workers: dict[Worker, None] = {}
        self.patterns: set[str] = set()
        self.allow_cache: dict[tuple[Action, str], bool] = {}
        #: its requests waiting in a service queue (not yet handed to a worker), by id: dropped
        #: from their queues when the session closes
        self.queued: dict[int, Request] = {}
        #: shared by every session of the transport (the router sets it)
        self.counters = TransportStats()

    def __repr__(self) -> str:
        return f"<Session {self.label} {self.identity.name}>"


class WorkerOptions(TypedDict, total=False):
    """The keyword options of registering a worker (``BrokerPort.register_worker``), each one
    optional; the default follows each name."""

    #: ``1``: how many requests it holds at once (at least 1)
    credit: int
    #: ``None``: the transport's own note on the worker (the router never looks inside it)
    tag: Any
    #: ``""``: its name in logs, events and listings
    label: str
    #: ``""``: where the worker is, for people (``mmi.workers``, the dashboard): the peer's
    #: address, an ipc path, a login; "" when the transport knows none
    address: str
    #: ``None`` (the ``[liveness]`` default): seconds idle before it expires; 0: the transport
    #: watches its liveness itself (the router never expires it)
    idle_timeout: float | None
    #: ``None`` (the ``[liveness]`` default): seconds busy without a sign of life; 0: never
    busy_timeout: float | None
    #: ``0``: adaptive credit up to this many requests (see ``pipeline_below``)
    max_credit: int
    #: ``0.002``: while the service has requests waiting and the worker answers each one within
    #: this many seconds of its dispatch, its credit grows by one per reply up to
    #: ``max_credit``; the first slower answer sets it back to ``credit``
    pipeline_below: float
    #: ``False``: it stands for another node's workers (a cluster fabric's proxy): dispatch
    #: hands it a request only when no local worker is free; it publishes no ``$sys.worker.*``
    #: events (the node that has the real worker does)
    remote: bool


class Worker:
    """A worker of one service, owned by a session. ``tag`` is the transport's own handle."""

    __slots__ = (
        "address",
        "alive",
        "base_credit",
        "busy_timeout",
        "credit",
        "id",
        "idle_timeout",
        "inflight",
        "label",
        "live_key",
        "max_credit",
        "pipeline_below",
        "progress",
        "remote",
        "served",
        "service",
        "session",
        "since",
        "suspect",
        "tag",
        "touched",
    )

    def __init__(
        self,
        wid: int,
        session: Session,
        service: Service,
        credit: int,
        tag: Any,
        label: str,
        now: float,
        idle_timeout: float,
        busy_timeout: float,
        address: str = "",
    ) -> None:
        self.id = wid
        self.session = session
        self.service = service
        self.credit = credit
        self.base_credit = credit
        #: adaptive credit (0: off): see ``Router.add_worker``
        self.max_credit = 0
        self.pipeline_below = 0.0
        self.tag = tag
        self.label = label or f"{session.label}/w{wid}"
        #: where the worker is, for people: the peer's address (``127.0.0.1:PORT``, an ipc
        #: path, a WebSocket remote address and name, a switch login); "" when none is known
        self.address = address
        self.inflight: dict[int, Request] = {}
        self.since = now
        self.touched = now
        self.served = 0
        self.alive = True
        self.idle_timeout = idle_timeout
        self.busy_timeout = busy_timeout
        self.live_key = 0.0  # which liveness list the worker is in (its current timeout)
        #: silent past its liveness window while holding requests: it gets no new ones until it
        #: speaks again (``Router.tick``)
        self.suspect = False
        #: when it last answered a request (or got one while idle): adaptive credit falls back
        #: to ``base_credit`` when it makes no progress for its liveness window
        self.progress = now
        #: it stands for the workers of another node (a cluster fabric's proxy): dispatch
        #: prefers local workers and hands it a request only when none of them is free
        self.remote = False

    def __repr__(self) -> str:
        return f"<Worker {self.label} of {self.service.name}>"


class Service:
    """A named service: its workers, its waiting requests and its policy."""

    __slots__ = (
        "backlog",
        "error_codes",
        "errors",
        "free",
        "latency",
        "name",
        "policy",
        "queue",
        "queued",
        "queued_bytes",
        "replies",
        "requests",
        "timeouts",
        "workers",
    )

    def __init__(self, name: str, policy: ServicePolicy) -> None:
        self.name = name
        self.policy = policy
        self.workers: dict[Worker, None] = {}
        #: workers with credit left, least recently used first
        self.free: OrderedDict[Worker, None] = OrderedDict()
        #: waiting requests, oldest first; entries no longer QUEUED are skipped lazily
        self.queue: deque[Request] = deque()
        self.queued = 0  # live entries in ``queue``
        self.queued_bytes = 0  # the ``size`` of those entries, summed
        #: requests waiting for this service elsewhere (a shared store's stream, as its pulling
        #: journal last heard): adaptive credit grows for them as for ``queued`` ones
        self.backlog = 0
        self.requests = 0
        self.replies = 0
        self.errors = 0
        self.timeouts = 0
        #: failed requests by error code (deadline expiries included, as 504)
        self.error_codes: Counter[int] = Counter()
        self.latency = Histogram()

    def inflight(self) -> int:
        return sum(len(w.inflight) for w in self.workers)

    def __repr__(self) -> str:
        return f"<Service {self.name} workers={len(self.workers)} queued={self.queued}>"


class Request(msgspec.Struct, kw_only=True):
    """A request the router has accepted, from acceptance to its final reply or error.

    ``correlation`` is the caller's transport's own note of whom to answer (an MDP routing id, a
    middleman Rid, a JSON id, an HTTP future); the router never looks inside it. Workers see only
    ``id`` (their reply token).
    """

    id: int
    service: str
    body: Body
    caller: Session
    correlation: Any
    deadline: float
    accepted: float
    headers: Headers | None = None
    state: RequestState = RequestState.QUEUED
    worker: Worker | None = None
    deliveries: int = 0
    #: when it was last handed to a worker
    dispatched: float = 0.0
    #: its id in the durable store (services with ``on_no_worker = "store"``), else -1
    stored: int = -1
    #: bytes it holds while it waits in a queue: its body frames and its service name (set
    #: when it first has to wait; 0 for a request handed to a worker at once)
    size: int = 0
    bucket: dict[int, Request] | None = None
    #: the ``traceparent`` of the broker's span for this request, when it is traced
    #: (``[tracing]``): what a transport with response headers hands back to the caller
    trace: str | None = None
    #: the span tracer's own handle of this request's span (None: not traced, or ended)
    span: Any = None
