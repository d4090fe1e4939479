"""The contract between the core and a transport (a front end that speaks one wire protocol).

A plugin declares a transport with a :class:`TransportSpec` (returned from the
``maitred_transports`` hook). When the broker starts it decodes ``[transports.NAME]`` into the
spec's ``config_type`` and calls ``factory(config, port)``; the result must satisfy
:class:`Transport`. The transport talks to the core only through the :class:`BrokerPort` it is
given: a dozen verbs (sessions, requests and replies, workers, topics, access, management,
tracing, stop) and a few runtime services (clock, authentication, counters). Transports never
import the router (an import-linter contract says so).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, Unpack

import msgspec

from maitred.core.access import Action, Identity
from maitred.core.clock import Clock
from maitred.core.errors import MaitredError
from maitred.core.preflight import Problem
from maitred.core.routing.liveness import Liveness
from maitred.core.routing.model import (
    Body,
    Headers,
    Request,
    Service,
    ServicePolicy,
    Session,
    SessionSink,
    Worker,
    WorkerOptions,
)
from maitred.core.routing.state import Tracer

if TYPE_CHECKING:
    from maitred.core.durable import StoreHint, StoreJournal


class Transport(Protocol):
    """A running front end. ``start`` binds and listens; ``stop_accepting`` begins the drain
    (no new connections or requests; replies still flow); ``close`` says goodbye to every peer
    and releases the sockets."""

    name: str

    async def start(self) -> None: ...

    def endpoints(self) -> list[str]:
        """Where it listens, as actually bound (an ephemeral port shows its real number)."""
        ...

    async def stop_accepting(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class ReloadPlan:
    """What a running transport would do with a new config, checked and not yet applied
    (see :class:`Reloadable`)."""

    #: the keys of ``[transports.NAME]`` that :attr:`apply` changes in the running transport
    applied: list[str]
    #: the keys that changed but cannot change while running (left as they were)
    restart: list[str]
    #: makes :attr:`applied` take effect; called only once every transport's plan and the rest
    #: of the new config were checked, and must not fail
    apply: Callable[[], None]


class Reloadable(Protocol):
    """A transport that takes part in reload (optional: one without ``plan_reload`` has every
    changed key of its table reported as needing a restart). ``plan_reload`` gets the new
    ``[transports.NAME]`` decoded into the spec's config type and checks it (raising
    :class:`~maitred.core.errors.ConfigError` for anything it cannot apply, e.g. a certificate
    that does not load) without changing anything; the broker applies the plans together, so a
    bad file changes nothing. Connections stay open: what is applied holds for new ones."""

    def plan_reload(self, config: Any) -> ReloadPlan: ...


class BrokerPort(Protocol):
    """What a transport may use of the broker: the plugin API. Built once by the runtime (the
    core's implementation is :class:`maitred.core.port.CorePort`) and handed to each
    transport's factory.

    The core has no clock of its own: every verb that depends on time takes ``now``, read from
    :attr:`clock`. Deliveries come back through the :class:`SessionSink` given to
    :meth:`open_session`, synchronously; every verb returns at once (no awaits).
    """

    # -- runtime services -------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """Monotonic seconds: the ``now`` of every verb below."""
        ...

    @property
    def liveness(self) -> Liveness:
        """The ``[liveness]`` defaults (heartbeat interval, liveness, busy timeout)."""
        ...

    @property
    def max_message_size(self) -> int: ...

    @property
    def max_name_length(self) -> int:
        """Longest service name or topic pattern, in UTF-8 bytes."""
        ...

    @property
    def stats(self) -> Counter[str]:
        """Counters shared by the core and transports (``transport.reason`` keys)."""
        ...

    @property
    def journal(self) -> StoreJournal | None:
        """The durable store of ``on_no_worker = "store"`` services, when one is open: a
        transport awaits ``journal.committed()`` before it tells a caller "accepted"."""
        ...

    @property
    def draining(self) -> bool:
        """The broker is stopping: no new requests or workers."""
        ...

    def authenticate(
        self, transport: str, credentials: Mapping[str, Any], default: Identity | None
    ) -> Identity | None:
        """Ask the authenticator plugins who presents ``credentials``; ``default`` when none
        of them has an opinion (None means: refuse)."""
        ...

    def info(self) -> dict[str, Any]:
        """What ``mmi.info`` answers (version, endpoints, stats)."""
        ...

    def request_stop(self) -> None:
        """Begin a graceful stop of the whole broker (returns at once)."""
        ...

    # -- sessions -----------------------------------------------------------------------------

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
        """A connection (or a transport's shared session); ``quiet``: no join/leave events;
        ``local_only``: its requests go to local workers only, never to a ``remote`` one (a
        cluster fabric's session for the requests other nodes forwarded here)."""
        ...

    def close_session(self, session: Session, now: float, reason: str = "closed") -> None:
        """Its workers leave, its subscriptions end, its queued requests are dropped."""
        ...

    def set_identity(self, session: Session, identity: Identity) -> None: ...

    # -- requests -----------------------------------------------------------------------------

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
        """A request; its reply or error comes back through the session's sink (perhaps
        before this returns). None when it was refused at once."""
        ...

    def cancel(self, request: Request, now: float) -> None:
        """The caller gave up: nothing more is delivered for ``request``."""
        ...

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
        """``worker`` answers request ``token``, with ``headers`` for the caller (broker-owned
        names dropped, ``stamp`` added). False when it holds no such request."""
        ...

    def reply_error(self, worker: Worker, token: int, error: MaitredError, now: float) -> bool:
        """``worker`` answers request ``token`` with an error."""
        ...

    def held_by_worker(self, request: Request) -> Worker | None:
        """The worker that still holds ``request`` (its reply token is open), else None."""
        ...

    def can_accept(self, service_name: str) -> bool:
        """Whether a request to ``service_name`` would be taken now (not QUEUE_FULL)."""
        ...

    def service_exists(self, service_name: str) -> bool:
        """Whether the broker knows ``service_name`` now (a worker, or requests waiting)."""
        ...

    def service_policy(self, service_name: str) -> ServicePolicy:
        """The configured policy of ``service_name`` (whether or not it exists now)."""
        ...

    # -- workers ------------------------------------------------------------------------------

    def register_worker(
        self, session: Session, service_name: str, now: float, **options: Unpack[WorkerOptions]
    ) -> Worker:
        """Make ``session`` a worker of ``service_name`` (raises ``Denied`` or
        ``MaitredError``). The options (:class:`~maitred.core.routing.model.WorkerOptions`):
        ``credit``, ``tag``, ``label``; ``address``, where the worker is, for people (shown by
        ``mmi.workers`` and the dashboard); ``idle_timeout``/``busy_timeout`` (0: the
        transport watches its liveness); ``max_credit``/``pipeline_below`` (adaptive credit);
        ``remote``: it stands for another node's workers (dispatch prefers local workers and
        uses it only when none is free; it publishes no ``$sys.worker.*`` events)."""
        ...

    def set_credit(self, worker: Worker, credit: int, now: float) -> None:
        """Change how many requests ``worker`` may hold at once (at least 1), e.g. a cluster
        proxy following the free credit its node announces."""
        ...

    def unregister_worker(self, worker: Worker, now: float, reason: str = "disconnect") -> None:
        """The worker leaves; its requests are redelivered or failed."""
        ...

    def touch(self, worker: Worker, now: float) -> None:
        """A sign of life from ``worker`` (a heartbeat, any command)."""
        ...

    # -- topics -------------------------------------------------------------------------------

    def subscribe(self, session: Session, pattern: str, *, check: bool = True) -> bool: ...

    def unsubscribe(self, session: Session, pattern: str) -> bool: ...

    def watch_patterns(self, watcher: Callable[[str, bool], None]) -> Callable[[], None]:
        """``watcher(pattern, True)`` when a pattern gets its first subscriber, ``(pattern,
        False)`` when it loses its last (``local_only`` sessions do not count); at once for
        those in use. The result stops it."""
        ...

    def publish(
        self,
        session: Session | None,
        topic: str,
        body: Body,
        headers: Headers | None = None,
        *,
        stamp: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Deliver to every subscriber allowed to receive it; the number reached."""
        ...

    # -- access -------------------------------------------------------------------------------

    def allowed(self, session: Session, action: Action, name: str) -> bool:
        """Ask the access policy (a denial is counted and published)."""
        ...

    def report_denied(self, session: Session, action: Action, name: str) -> None:
        """Count and publish a refusal the transport's protocol made itself."""
        ...

    def report_auth_failure(self, transport: str, peer: str, reason: str, who: str = "") -> None:
        """Count and publish (``$sys.auth.denied``, action ``authenticate``) a peer that was
        refused before it had a session: no credentials, wrong ones, an unknown key."""
        ...

    def permits(self, session: Session, action: Action, name: str) -> bool:
        """The policy's answer without counting a denial (e.g. to filter a listing)."""
        ...

    def may_grant(self, session: Session, action: Action, pattern: str) -> bool: ...

    def grant(
        self, role: str, action: Action, pattern: str, *, by: Session | None = None
    ) -> bool: ...

    def revoke(
        self, role: str, action: Action, pattern: str, *, by: Session | None = None
    ) -> bool: ...

    # -- memory -------------------------------------------------------------------------------

    def hold(self, nbytes: int) -> None:
        """The transport queued ``nbytes`` in a buffer of its own (counted in ``max_memory``)."""
        ...

    def release(self, nbytes: int) -> None:
        """Bytes counted with :meth:`hold` left the transport's buffer."""
        ...

    # -- management and observation -------------------------------------------------------------

    def snapshot(self) -> Mapping[str, Any]:
        """Plain data: counts of services, sessions and workers, held bytes, stats, traffic per
        transport."""
        ...

    def services(self) -> list[Service]:
        """The services known now (read them, never change them)."""
        ...

    def add_mmi(self, name: str, handler: Callable[[Body], bytes]) -> Callable[[], None]:
        """Answer the management service ``name`` (``mmi.…``) with ``handler(body)``, the last
        frame of the reply (e.g. the cluster's ``mmi.nodes``). The result removes it."""
        ...

    def watch_cancels(self, watcher: Callable[[Request, float], None]) -> Callable[[], None]:
        """``watcher(request, now)`` when a caller cancels a request a worker holds (a cluster
        fabric tells the node serving it). The result stops it."""
        ...

    def set_node_name(self, name: str) -> None:
        """This broker is the node ``name`` of a cluster (the cluster fabric says so at start):
        every ``$sys`` event payload it publishes then carries ``"node": name``."""
        ...

    def trace(self, tracer: Tracer) -> Callable[[], None]:
        """Call ``tracer(event, request, detail, now)`` for every step of every request; the
        result stops it (calling it twice is harmless)."""
        ...


@dataclass(frozen=True)
class TransportSpec:
    """A transport as a plugin declares it."""

    #: the name of its ``[transports.NAME]`` table and of its CLI flag (``--NAME ADDR``)
    name: str
    #: a msgspec Struct with the transport's settings; must have an ``enabled: bool`` field
    config_type: type[msgspec.Struct]
    #: builds the transport from its decoded config and the broker port
    factory: Callable[[Any, BrokerPort], Transport]
    #: one line for ``maitred --help`` and the docs
    description: str = ""
    #: turns the addresses given as ``--NAME ADDR`` (repeatable) into config keys
    cli_addresses: Callable[[Sequence[str]], dict[str, Any]] | None = None
    #: metavar for the CLI flag
    cli_metavar: str = "ADDR"
    #: what ``serve`` would fail on that the config type cannot see (addresses that cannot be
    #: bound, TLS material that does not load, store files that cannot be written); run by
    #: ``maitred check`` and before ``serve`` binds anything (see :mod:`maitred.core.preflight`)
    preflight: Callable[[Any], Sequence[Problem]] | None = None
    #: the files of the transport's config that hold secrets (TLS private keys, key files,
    #: CURVE secret keys, token files), as (config key, path) pairs: ``maitred check`` and
    #: ``serve`` refuse each one that anyone but its owner may read, naming the file and the fix
    #: (:func:`maitred.core.preflight.check_secret_files`)
    secret_files: Callable[[Any], Sequence[tuple[str, str]]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: whether the transport, so configured, keeps messages in the broker's one durable store
    #: (a hint: the store is opened at start), with the settings of its deprecated store keys
    store_hint: Callable[[Any], StoreHint | None] | None = None


#: what ``maitred worker`` serves a service with (:meth:`BrokerClient.serve`): a request's
#: frames in, the reply's frames out
FrameHandler = Callable[[list[bytes]], list[bytes]]


class BrokerClient(Protocol):
    """A blocking client the CLI uses (``maitred call``, ``worker``, ``services``), provided by
    the transport plugin that understands the broker URL (hook ``maitred_connect``)."""

    def request(self, service: str, body: Sequence[bytes], timeout: float) -> list[bytes]:
        """Call ``service``; the final reply's body. Raises TimeoutError or MaitredError."""
        ...

    def serve(
        self, service: str, handler: FrameHandler, *, max_requests: int | None = None
    ) -> None:
        """Serve ``service`` with ``handler`` until interrupted (or ``max_requests`` served)."""
        ...

    def close(self) -> None: ...
