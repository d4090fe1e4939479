"""The asyncio driver around the router: transports, the tick timer, start-up and drain.

Use it embedded in an asyncio program (see :func:`maitred.core.app.embedded`)::

    async with embedded(mdp=["inproc://broker"]) as broker:
        ...  # clients and workers in the same process

or let ``maitred serve`` run it. ``stop()`` drains: new requests and workers are refused, the
transports stop accepting, in-flight requests get ``drain_timeout`` seconds to finish, the rest
fail with SHUTTING_DOWN, workers are told DISCONNECT, sockets close.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from maitred.core import __version__
from maitred.core.access import Action, HookedPolicy, Identity
from maitred.core.clock import Clock, monotonic
from maitred.core.config import Config, convert_section, load_config
from maitred.core.durable import StoreHint, StoreJournal
from maitred.core.errors import BrokerError, ConfigError, ErrorCode, MaitredError
from maitred.core.management import Management
from maitred.core.port import CorePort
from maitred.core.routing.router import Router
from maitred.core.store import (
    SCHEMA_VERSION,
    SQLiteStore,
    Store,
    StoreLocked,
    StoreTooNew,
    default_store_path,
    open_store,
)
from maitred.core.tracing import SpanTracer, open_tracer
from maitred.core.transport import ReloadPlan, Transport, TransportSpec

log = logging.getLogger("maitred.core.runtime")

LifecycleHook = Callable[["Broker"], list[Any]]


@dataclass
class Hooks:
    """Plugin hooks bound once at start-up into plain callables (None: nobody implements it)."""

    authenticate: Callable[[str, Mapping[str, Any]], Identity | None] | None = None
    authorize: Callable[[Identity, Action, str], bool | None] | None = None
    system_event: Callable[[str, dict[str, Any]], None] | None = None
    started: LifecycleHook | None = None
    stopping: LifecycleHook | None = None


async def _await_all(results: list[Any], what: str, *, raise_first: bool) -> None:
    """Await every awaitable a lifecycle hook returned; each failure is logged, and with
    ``raise_first`` the first one is raised after all the others were awaited."""
    first: BaseException | None = None
    for result in results:
        if inspect.isawaitable(result):
            try:
                await result
            except Exception as exc:
                log.exception("a %s hook failed", what)
                first = first or exc
    if first is not None and raise_first:
        raise first


@dataclass(frozen=True)
class StoreChoice:
    """Which store the broker opens, and which config key chose its file."""

    backend: str
    #: the SQLite file (empty: the default path)
    path: str
    sync: str
    #: whose a schema-0 file at ``path`` is ("" services, "switch"), None: ask the file
    owner: str | None
    #: the key that set ``path`` (``store.path`` when none did), for messages
    path_key: str


def store_choice(config: Config, hints: Sequence[StoreHint | tuple[str, StoreHint]]) -> StoreChoice:
    """``[store]`` where it differs from its defaults, else the deprecated ``[broker]`` keys,
    else a transport's deprecated keys (``[transports.http] store``...), else the defaults.
    ``hints`` may carry the transport's name (for :attr:`StoreChoice.path_key`)."""
    named = [h if isinstance(h, tuple) else ("", h) for h in hints]
    s, b = config.store, config.broker
    first_name, first = named[0] if named else ("", StoreHint())
    backend = s.backend if s.backend != "sqlite" else (b.store or first.backend or "sqlite")
    sync = s.sync if s.sync != "normal" else (b.store_sync or first.sync or "normal")
    owner: str | None = None  # [store] path: a schema-0 file there says whose it is
    path, key = s.path, "store.path"
    if not path and b.store_path:
        path, owner, key = b.store_path, "", "broker.store_path"
    elif not path and first.path:
        path, owner = first.path, "switch"
        key = f"transports.{first_name}.store_path" if first_name else key
    elif not path:
        owner = "switch"  # the default file is the old switch's default file
    return StoreChoice(backend, path, sync, owner, key)


def changed_fields(old: msgspec.Struct, new: msgspec.Struct) -> list[str]:
    """The names of the fields whose values differ between two structs of one type."""
    return [f for f in old.__struct_fields__ if getattr(old, f) != getattr(new, f)]


class Broker:
    """One broker: a router, its transports and its timers."""

    def __init__(
        self,
        config: Config,
        transports: Mapping[str, tuple[TransportSpec, msgspec.Struct]],
        hooks: Hooks | None = None,
        clock: Clock = monotonic,
    ) -> None:
        self.config = config
        self.hooks = hooks or Hooks()
        self.clock = clock
        self._specs = dict(transports)
        #: the transports this broker runs (enabled in config, plugin installed)
        self.transport_names = list(self._specs)
        self._policies = config.policies()
        access = config.access.policy()
        if self.hooks.authorize is not None:
            access = HookedPolicy(self.hooks.authorize, access)
        self.router = Router(
            policy_for=self._policies.for_service,
            liveness=config.liveness,
            access=access,
            on_event=self.hooks.system_event,
            mmi=Management(self.info, clock, config.broker.mmi_max_items),
            resolution=config.broker.tick_interval,
            max_subscriptions=config.broker.max_subscriptions,
            max_subscriptions_total=config.broker.max_subscriptions_total,
            max_services=config.broker.max_services,
            max_name_length=config.broker.max_name_length,
            max_memory=config.broker.max_memory,
        )
        self.port = CorePort(
            self.router,
            clock,
            config.liveness,
            authenticate=self.hooks.authenticate,
            info=self.info,
            request_stop=self.request_stop,
        )
        self.transports: dict[str, Transport] = {}
        #: the durable store of ``on_no_worker = "store"`` services (None when no service uses
        #: it); opened by :meth:`start`
        self.journal: StoreJournal | None = None
        self.started_at: float | None = None
        #: the span tracer of ``[tracing]`` (None when it is off); set up by :meth:`start`
        self.spans: SpanTracer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self._drained = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self.state = "new"

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.state != "new":
            raise MaitredError(f"broker already {self.state}")
        self.state = "starting"
        self.started_at = self.clock()
        try:
            self._open_spans()
            self._open_journal(await self._open_jetstream())
            for name, (spec, tconfig) in self._specs.items():
                transport = spec.factory(tconfig, self.port)
                await transport.start()
                self.transports[name] = transport
        except BaseException:
            await self._close_transports()
            self._close_journal()
            await self._close_spans()
            self.state = "stopped"
            raise
        # only once every transport is up: a failed start must not read as half a broker listening
        for name, transport in self.transports.items():
            for endpoint in transport.endpoints():
                log.info("%s listening on %s", name, endpoint)
        self._schedule_tick()
        self.state = "running"
        if self.hooks.started is not None:
            try:
                await _await_all(
                    self.hooks.started(self), "maitred_broker_started", raise_first=True
                )
            except BaseException:
                await self.stop(0)
                raise
        log.info(
            "%s %s running with %s",
            self.config.broker.name,
            __version__,
            ", ".join(self.transports) or "no transports",
        )

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Drain and stop (idempotent; concurrent callers wait for the same drain)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(drain_timeout))
        await asyncio.shield(self._stopping)

    def request_stop(self) -> None:
        """Begin :meth:`stop` from a signal handler or callback (returns at once)."""
        if self._stopping is None and self.state in ("running", "starting"):
            self._stopping = asyncio.ensure_future(self._stop(None))

    async def _stop(self, drain_timeout: float | None) -> None:
        if self.state not in ("running", "starting"):
            self._stopped.set()
            return
        self.state = "draining"
        timeout = self.config.broker.drain_timeout if drain_timeout is None else drain_timeout
        if self.hooks.stopping is not None:
            try:
                await _await_all(
                    self.hooks.stopping(self), "maitred_broker_stopping", raise_first=False
                )
            except Exception:
                log.exception("a maitred_broker_stopping hook failed")
        self.router.begin_drain()
        for transport in self.transports.values():
            try:
                await transport.stop_accepting()
            except Exception:
                log.exception("transport %s failed to stop accepting", transport.name)
        inflight = self.router.inflight_count()
        if inflight and timeout > 0:
            log.info("draining: waiting up to %.1fs for %d in-flight requests", timeout, inflight)
            self._check_drained()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except TimeoutError:
                log.warning(
                    "drain timeout: %d requests still in flight fail with SHUTTING_DOWN",
                    self.router.inflight_count(),
                )
        self.router.shutdown(self.clock())
        await self._close_transports()
        drain = getattr(self.journal, "drain", None) or getattr(
            self.journal.store if self.journal is not None else None, "drain", None
        )
        if drain is not None:  # an asynchronous store (JetStream) commits the rest first
            try:
                await drain()
            except Exception:
                log.warning("store: closing failed", exc_info=True)
        self._close_journal()
        await self._close_spans()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = "stopped"
        log.info("%s stopped", self.config.broker.name)
        self._stopped.set()

    # -- reload -----------------------------------------------------------------------------

    def request_reload(self) -> None:
        """:meth:`reload` from a signal handler (SIGHUP); a failure is logged, never raised."""
        if self.state != "running":
            log.warning("reload ignored: the broker is %s", self.state)
            return
        try:
            self.reload()
        except ConfigError as exc:
            log.warning("reload refused, the running config stays: %s", exc.reason)

    def reload(self, config: Config | None = None) -> dict[str, list[str]]:
        """Apply a new config (default: the file this broker was started from, read again).

        Service policies (``[services.*]``) and access rules (``[access]``) change at once,
        for services that exist as for those to come; no connection is dropped. A running
        transport that takes part in reload (:class:`~maitred.core.transport.Reloadable`)
        applies what it can of its new ``[transports.NAME]`` (keys, certificates) to new
        connections. What cannot change while running (listen addresses and the other transport
        keys, transports added or removed, ``[broker]``, ``[liveness]``, ``[plugins]``,
        ``[tracing]``) is left
        as it was and reported. Returns ``{"applied": [...], "unchanged": [...]}``: section
        names, ``transports.NAME.KEY`` for a transport's keys (``transports.NAME`` for a whole
        transport added or removed). Everything is checked before anything is applied: raises
        :class:`ConfigError` and changes nothing."""
        if config is None:
            source = self.config.source
            if source.startswith("<"):
                raise ConfigError(f"{source}: there is no config file to read again (serve -c)")
            config = load_config(source)
        policies = config.policies()
        if policies.uses_store() and self.journal is None:
            raise ConfigError(
                f'{config.source}: services: on_no_worker = "store" needs the service store, '
                "which opens only at start; restart the broker for it"
            )
        access = config.access.policy()
        if self.hooks.authorize is not None:
            access = HookedPolicy(self.hooks.authorize, access)
        plans, unchanged = self._plan_transports(config)
        applied: list[str] = []
        if config.services != self.config.services:
            self._policies = policies
            self.router.set_policies(policies.for_service)
            applied.append("services")
        if config.access != self.config.access:
            self.router.set_access(access)
            applied.append("access")
        for name, plan in plans:
            plan.apply()
            applied.extend(f"transports.{name}.{key}" for key in plan.applied)
        for section in ("broker", "liveness", "plugins", "tracing"):
            if getattr(config, section) != getattr(self.config, section):
                unchanged.append(section)
        self.config = msgspec.structs.replace(
            self.config, services=config.services, access=config.access
        )
        log.info(
            "reloaded %s: applied %s",
            self.config.source,
            ", ".join(f"[{s}]" for s in applied) or "nothing (no change)",
        )
        if unchanged:
            log.warning(
                "reload: %s changed in %s but cannot change while running (left as they "
                "were; restart to apply)",
                ", ".join(f"[{s}]" for s in unchanged),
                self.config.source,
            )
        return {"applied": applied, "unchanged": unchanged}

    def _plan_transports(self, config: Config) -> tuple[list[tuple[str, ReloadPlan]], list[str]]:
        """Decode and check each running transport's new table and ask it for a plan; the
        plans and what cannot change (``transports.NAME[.KEY]``). Applies nothing."""
        plans: list[tuple[str, ReloadPlan]] = []
        restart: list[str] = []
        tables = config.transport_tables()
        for name, (spec, old) in self._specs.items():
            table = tables.get(name)
            if table is None:
                restart.append(f"transports.{name}")  # no longer configured
                continue
            new = convert_section(table, spec.config_type, f"transports.{name}", config.source)
            problems = getattr(new, "problems", None)
            for problem in problems() if callable(problems) else ():
                raise ConfigError(f"{config.source}: transports.{name}: {problem}")
            if not getattr(new, "enabled", True):
                restart.append(f"transports.{name}")  # disabled: it keeps running until restart
                continue
            transport = self.transports.get(name)
            planner = getattr(transport, "plan_reload", None)
            if planner is None:
                restart.extend(f"transports.{name}.{key}" for key in changed_fields(old, new))
                continue
            try:
                plan: ReloadPlan = planner(new)
            except ConfigError as exc:
                raise ConfigError(f"{config.source}: transports.{name}: {exc.reason}") from None
            restart.extend(f"transports.{name}.{key}" for key in plan.restart)
            plans.append((name, plan))
        for name, table in config.transports.items():
            if name in self._specs:
                continue
            if name in self.config.transports and table == self.config.transports[name]:
                continue  # configured and not running before as now (disabled, no plugin)
            restart.append(f"transports.{name}")
        return plans, restart

    def _store_hints(self) -> list[StoreHint] | None:
        """The transports' store hints; None when nothing needs the store."""
        hints = [
            hint
            for spec, tconfig in self._specs.values()
            if spec.store_hint is not None and (hint := spec.store_hint(tconfig)) is not None
        ]
        if not self._policies.uses_store() and not hints:
            return None
        return hints

    async def _open_jetstream(self) -> Store | None:
        """Connect the JetStream store when it is the one chosen and needed (else None)."""
        hints = self._store_hints()
        if hints is None or store_choice(self.config, hints).backend != "jetstream":
            return None
        from maitred.core.store_jetstream import open_jetstream, settings_from

        s = self.config.store
        try:
            settings = settings_from(
                s.jetstream_nats, s.jetstream_stream, s.jetstream_replicas, s.jetstream_timeout
            )
            return await open_jetstream(settings)
        except BrokerError as exc:
            raise MaitredError(f"cannot open the store: {exc.reason}", ErrorCode.INTERNAL) from None

    def _open_journal(self, ready: Store | None = None) -> None:
        """Open the one durable store (when a service or a transport needs it), take in the
        files of the old two-file layout, and queue what it holds again. ``ready``: a store
        opened already (JetStream, connected by :meth:`_open_jetstream`)."""
        hints = self._store_hints()
        if hints is None:
            return
        if ready is not None:
            self._attach(ready)
            return
        backend, path, sync, owner, legacy = self._store_settings(hints)
        shown = path or str(default_store_path())
        try:
            store = open_store(backend, path, sync, legacy_owner=owner)  # type: ignore[arg-type]
            if isinstance(store, SQLiteStore):
                for old, old_owner in legacy:
                    self._import_legacy(store, old, old_owner)
        except StoreLocked as exc:
            raise MaitredError(
                f"cannot open the store: {exc.reason} (each broker needs a store of its own:"
                " set [store] path, or XDG_STATE_HOME)",
                ErrorCode.INTERNAL,
            ) from None
        except (OSError, sqlite3.Error, StoreTooNew) as exc:
            raise MaitredError(
                f"cannot open the store {shown}: {getattr(exc, 'reason', exc)}",
                ErrorCode.INTERNAL,
            ) from None
        if isinstance(store, SQLiteStore):
            log.info("store: %s (schema %d)", store.path, SCHEMA_VERSION)
        self._attach(store)

    def _attach(self, store: Store) -> None:
        from maitred.core.store_jetstream import JetStreamStore

        journal: StoreJournal
        if isinstance(store, JetStreamStore):  # brokers on one stream pull by free credit
            from maitred.core.jetstream_pull import PullingJournal

            journal = PullingJournal(store, self.config.liveness.busy_timeout, self.clock)
        else:
            journal = StoreJournal(store)
        self.journal = journal
        self.router.journal = journal
        self.port.journal = journal
        journal.recover(self.router, self.clock())

    def _store_settings(
        self, hints: list[StoreHint]
    ) -> tuple[str, str, str, str | None, list[tuple[Path, str]]]:
        """(backend, path, sync, owner of a schema-0 file there, old files to take in); see
        :func:`store_choice`. Warns about the deprecated keys in use."""
        b = self.config.broker
        if b.store or b.store_path or b.store_sync:
            log.warning(
                "[broker] store, store_path and store_sync are deprecated: set [store] backend,"
                " path and sync"
            )
        for hint in hints:
            if hint.backend or hint.path or hint.sync:
                log.warning("%s are deprecated: set [store] backend, path and sync", hint.where)
        choice = store_choice(self.config, hints)
        s_path = Path(choice.path or default_store_path()).resolve()
        # the files the two-file layout would have used, other than the chosen one
        candidates = [(Path(b.store_path or default_store_path(name="services.sqlite3")), "")]
        candidates += [
            (Path(h.path or default_store_path()), "switch") for h in hints if h.backend != "memory"
        ]
        legacy: list[tuple[Path, str]] = []
        if choice.backend == "sqlite":
            for old, old_owner in candidates:
                if old.resolve() != s_path and old.is_file() and old not in {p for p, _ in legacy}:
                    legacy.append((old, old_owner))
        return choice.backend, choice.path, choice.sync, choice.owner, legacy

    @staticmethod
    def _import_legacy(store: SQLiteStore, old: Path, owner: str) -> None:
        """Take in a store file of the two-file layout and rename it ``*.imported``."""
        try:
            n = store.import_legacy(old, owner)
        except StoreTooNew:
            log.warning("store: %s is not a store of the old layout: left alone", old)
            return
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StoreLocked(f"{old}: the old store is in use by another process") from None
            raise
        done = old.with_name(old.name + ".imported")
        old.rename(done)
        log.warning("store: took in %d messages from %s (renamed %s)", n, old, done.name)

    def _close_journal(self) -> None:
        if self.journal is not None:
            self.router.journal = None
            self.journal.close()

    def _open_spans(self) -> None:
        """Start the span tracer of ``[tracing]`` (when configured) as one of the router's
        tracers."""
        self.spans = open_tracer(self.config.tracing, self.clock)
        if self.spans is not None:
            self.router.tracers.append(self.spans)
            log.info("tracing: spans exported to %s", self.config.tracing.otlp_endpoint)

    async def _close_spans(self) -> None:
        """Stop tracing and export the spans still buffered (in a thread: an unreachable
        collector must not stall the event loop)."""
        spans, self.spans = self.spans, None
        if spans is None:
            return
        if spans in self.router.tracers:
            self.router.tracers.remove(spans)
        try:
            await asyncio.to_thread(spans.shutdown)
        except Exception:
            log.exception("tracing: the span exporter failed to shut down")

    async def _close_transports(self) -> None:
        for transport in reversed(list(self.transports.values())):
            try:
                await transport.close()
            except Exception:
                log.exception("transport %s failed to close", transport.name)

    async def serve_forever(self) -> None:
        """Wait until the broker has stopped (after :meth:`stop` or :meth:`request_stop`)."""
        await self._stopped.wait()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- timers ---------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.config.broker.tick_interval, self._tick)

    def _tick(self) -> None:
        try:
            self.router.tick(self.clock())
        except Exception:  # never let the timer die; the failure is a bug worth a traceback
            log.exception("router tick failed")
        if self.state == "draining":
            self._check_drained()
        if self.state in ("running", "draining"):
            self._schedule_tick()

    def _check_drained(self) -> None:
        if not self.router.inflight_count():
            self._drained.set()

    # -- introspection ----------------------------------------------------------------------

    def transport(self, name: str) -> Transport:
        """A running transport by name (KeyError when not running)."""
        return self.transports[name]

    def endpoints(self) -> dict[str, list[str]]:
        return {name: t.endpoints() for name, t in self.transports.items()}

    def info(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "name": self.config.broker.name,
            "version": __version__,
            "uptime": round(now - self.started_at, 3) if self.started_at is not None else 0.0,
            "state": self.state,
            "transports": self.endpoints(),
            "config": self.config.source,
            **({"store": self.journal.snapshot()} if self.journal is not None else {}),
        }
