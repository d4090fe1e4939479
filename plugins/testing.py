"""pytest fixtures and helpers for people who write maitred plugins (and for maitred's own tests).

Enable them in a ``conftest.py`` or a test module::

    pytest_plugins = ["maitred.plugins.testing"]

No pytest-asyncio is needed. There are two ways to run a broker in a test:

- from blocking test code (sockets, pyzmq, subprocesses): the ``maitred_broker`` fixture starts
  a broker on its own event loop in a background thread and stops it after the test::

      def test_echo(maitred_broker):
          running = maitred_broker(transports=["mdp"], plugins=[MyPlugin()])
          endpoint = running.endpoint("mdp")              # tcp://127.0.0.1:<free port>
          ...                                             # blocking clients and workers
          n = running.call(lambda: len(running.broker.router.services))  # on the loop thread

- from async code, inside ``asyncio.run(...)`` in the test: :func:`running_broker`::

      def test_async():
          async def main() -> None:
              async with running_broker(transports=["mdp"], plugins=[MyPlugin()]) as broker:
                  ...
          asyncio.run(main())

Other fixtures: ``maitred_config`` (build a :class:`~maitred.core.config.Config` from TOML text
or a dict) and ``maitred_plugin_manager`` (a plugin manager with extra plugin objects).

A test config has **no transports unless it names them** (the embedded defaults would bind MDP
on 127.0.0.1:5555). ``transports=["mdp", "line"]`` binds each named transport on 127.0.0.1 with
a free port (:data:`EPHEMERAL_ADDRESSES`, or the ``"ephemeral_address"`` a plugin puts in its
:attr:`TransportSpec.extra <maitred.core.transport.TransportSpec.extra>`); a mapping
``{"mdp": ["ipc:///tmp/x"]}`` gives the addresses explicitly.

Importing this module has no side effects beyond defining the fixtures and helpers.
"""

from __future__ import annotations

import asyncio
import threading
import tomllib
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeAlias, TypeVar

import pluggy
import pytest

from maitred.core.app import build_broker, transport_specs
from maitred.core.clock import Clock, monotonic
from maitred.core.config import Config, convert_section, load_config
from maitred.core.errors import ConfigError
from maitred.core.runtime import Broker
from maitred.plugins.manager import ENTRY_POINT_GROUP, make_plugin_manager

__all__ = [
    "EPHEMERAL_ADDRESSES",
    "BrokerStarter",
    "BrokerThread",
    "ConfigFactory",
    "ConfigSource",
    "PluginManagerFactory",
    "Transports",
    "config_from",
    "ephemeral_addresses",
    "maitred_broker",
    "maitred_config",
    "maitred_plugin_manager",
    "make_broker",
    "plugin_manager",
    "running_broker",
]

T = TypeVar("T")

#: a Config, TOML text, a dict of sections, a Path to a TOML file, or None (no transports)
ConfigSource: TypeAlias = Config | str | Path | Mapping[str, Any] | None
#: transport names (bound to a free port on 127.0.0.1) or ``{name: [addresses]}``
Transports: TypeAlias = Mapping[str, Sequence[str]] | Iterable[str] | None

#: where the built-in transports listen in tests (a plugin's own transports say it in
#: ``TransportSpec.extra["ephemeral_address"]``)
EPHEMERAL_ADDRESSES: Mapping[str, str] = {"mdp": "tcp://127.0.0.1:0"}

#: seconds the threaded broker may take to start or to stop
DEFAULT_TIMEOUT = 10.0


# -- configs ------------------------------------------------------------------------------------


def config_from(source: ConfigSource = None, *, name: str = "<test config>") -> Config:
    """A checked :class:`Config` from TOML text, a dict of sections, a TOML file or None.

    Unlike a config file, TOML text and dicts without a ``transports`` table give a config
    **without transports** (not the embedded default MDP on port 5555). A :class:`Path` is
    loaded exactly like ``maitred serve -c`` would. Raises :class:`ConfigError` like the
    broker does.
    """
    if source is None:
        source = {}
    if isinstance(source, Config):
        return source
    if isinstance(source, Path):
        return load_config(source)
    if isinstance(source, str):
        try:
            data: dict[str, Any] = tomllib.loads(source)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    else:
        data = dict(source)
    if "source" in data:
        raise ConfigError(f"{name}: source: not a configuration key")
    data.setdefault("transports", {})
    config = convert_section(data, Config, "", name)
    config.source = name
    config.check()
    return config


# -- plugin managers ----------------------------------------------------------------------------


def plugin_manager(
    *plugins: object,
    disabled: Iterable[str] = (),
    load_entry_points: bool = True,
) -> pluggy.PluginManager:
    """A plugin manager with maitred's hook specs, ``plugins`` registered first, then (unless
    ``load_entry_points`` is false) every installed plugin not named in ``disabled``.

    A plugin object that is also an installed entry point (your own plugin module, installed
    in development mode) is registered once, not twice.
    """
    disabled = list(disabled)
    pm = make_plugin_manager(disabled=disabled, plugins=plugins, load_entry_points=False)
    if load_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            plugin = ep.load()
            if not pm.is_registered(plugin):
                pm.register(plugin, name=ep.name)
    return pm


# -- brokers ------------------------------------------------------------------------------------


def ephemeral_addresses(pm: pluggy.PluginManager, names: Iterable[str]) -> dict[str, list[str]]:
    """``{name: [a local address with a free port]}`` for each transport in ``names``."""
    specs = transport_specs(pm)
    out: dict[str, list[str]] = {}
    for name in names:
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            raise ConfigError(f"no transport named {name!r} is registered (registered: {known})")
        address = spec.extra.get("ephemeral_address") or EPHEMERAL_ADDRESSES.get(name)
        if not isinstance(address, str):
            raise ConfigError(
                f"transport {name!r} has no ephemeral test address: give one explicitly, "
                f"transports={{{name!r}: ['ADDRESS']}}"
            )
        out[name] = [address]
    return out


def make_broker(
    config: ConfigSource = None,
    *,
    plugins: Iterable[object] = (),
    transports: Transports = None,
    pm: pluggy.PluginManager | None = None,
    load_entry_points: bool = True,
    clock: Clock = monotonic,
) -> Broker:
    """A broker (not started) as :func:`maitred.core.app.build_broker` builds it.

    ``pm`` defaults to :func:`plugin_manager` with ``plugins`` and the config's
    ``[plugins] disable`` list. ``transports`` enables transports on top of the config's.
    """
    cfg = config_from(config)
    if pm is None:
        pm = plugin_manager(
            *plugins, disabled=cfg.plugins.disable, load_entry_points=load_entry_points
        )
    elif plugins:
        for plugin in plugins:
            pm.register(plugin)
    addresses: dict[str, list[str]]
    if transports is None:
        addresses = {}
    elif isinstance(transports, Mapping):
        addresses = {name: list(addrs) for name, addrs in transports.items()}
    else:
        names = [transports] if isinstance(transports, str) else list(transports)
        addresses = ephemeral_addresses(pm, names)
    return build_broker(cfg, pm=pm, addresses=addresses, clock=clock)


@asynccontextmanager
async def running_broker(
    config: ConfigSource = None,
    *,
    plugins: Iterable[object] = (),
    transports: Transports = None,
    pm: pluggy.PluginManager | None = None,
    load_entry_points: bool = True,
    clock: Clock = monotonic,
    drain_timeout: float | None = 0.0,
) -> AsyncIterator[Broker]:
    """``async with running_broker(...) as broker``: started on entry, stopped on exit.

    The arguments are :func:`make_broker`'s. ``drain_timeout`` is passed to
    :meth:`Broker.stop` (default 0: requests still in flight fail at once; None: the config's
    ``[broker] drain_timeout``).
    """
    broker = make_broker(
        config,
        plugins=plugins,
        transports=transports,
        pm=pm,
        load_entry_points=load_entry_points,
        clock=clock,
    )
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop(drain_timeout)


class BrokerThread:
    """A broker running on its own event loop in a background thread, for blocking test code.

    The router is not thread-safe: look at or change broker state only through :meth:`call`
    or :meth:`run`, which execute on the broker's loop.
    """

    def __init__(
        self,
        factory: Callable[[], Broker],
        *,
        drain_timeout: float | None = 0.0,
        name: str = "maitred-test-broker",
    ) -> None:
        self._factory = factory
        self._drain_timeout = drain_timeout
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Broker | None = None
        self._stop_requested: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop_error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> BrokerThread:
        """Start the broker; returns when every transport listens (or raises its error)."""
        if self._thread is not None:
            raise RuntimeError("this BrokerThread was already started")
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"the broker did not start within {timeout}s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Drain and stop the broker, and end its thread (idempotent)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        loop, event = self._loop, self._stop_requested
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the broker did not stop within {timeout}s")
        if self._stop_error is not None:
            raise self._stop_error

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    async def _serve(self) -> None:
        try:
            self._stop_requested = asyncio.Event()
            broker = self._broker = self._factory()
            await broker.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop_requested.wait()
        try:
            await broker.stop(self._drain_timeout)
        except BaseException as exc:
            self._stop_error = exc

    def __enter__(self) -> BrokerThread:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access -------------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The broker (read its state through :meth:`call`)."""
        if self._broker is None:
            raise RuntimeError("the broker has not been started")
        return self._broker

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the broker has not been started")
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = DEFAULT_TIMEOUT) -> T:
        """Run ``coro`` on the broker's loop and return its result (or raise its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = DEFAULT_TIMEOUT) -> T:
        """Call ``fn(*args)`` on the broker's loop and return its result."""

        async def invoke() -> T:
            return fn(*args)

        return self.run(invoke(), timeout)

    def endpoints(self) -> dict[str, list[str]]:
        """Where each transport listens, as bound (``{"mdp": ["tcp://127.0.0.1:40123"]}``)."""
        return self.call(self.broker.endpoints)

    def endpoint(self, transport: str) -> str:
        """The first endpoint of ``transport``."""
        found = self.endpoints().get(transport)
        if not found:
            raise KeyError(f"transport {transport!r} is not running")
        return found[0]


class BrokerStarter(Protocol):
    """The ``maitred_broker`` fixture: call it to start a broker (stopped after the test)."""

    def __call__(
        self,
        config: ConfigSource = None,
        *,
        plugins: Iterable[object] = (),
        transports: Transports = None,
        pm: pluggy.PluginManager | None = None,
        load_entry_points: bool = True,
        clock: Clock = monotonic,
        drain_timeout: float | None = 0.0,
    ) -> BrokerThread: ...


class PluginManagerFactory(Protocol):
    """The ``maitred_plugin_manager`` fixture (see :func:`plugin_manager`)."""

    def __call__(
        self,
        *plugins: object,
        disabled: Iterable[str] = (),
        load_entry_points: bool = True,
    ) -> pluggy.PluginManager: ...


class ConfigFactory(Protocol):
    """The ``maitred_config`` fixture (see :func:`config_from`)."""

    def __call__(self, source: ConfigSource = None, *, name: str = "<test config>") -> Config: ...


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def maitred_config() -> ConfigFactory:
    """:func:`config_from`: ``maitred_config('[broker]\\nname = "t"')`` or
    ``maitred_config({"transports": {"mdp": {"endpoints": ["inproc://t"]}}})``."""
    return config_from


@pytest.fixture
def maitred_plugin_manager() -> PluginManagerFactory:
    """:func:`plugin_manager`: ``maitred_plugin_manager(MyPlugin(), load_entry_points=False)``."""
    return plugin_manager


@pytest.fixture
def maitred_broker() -> Iterator[BrokerStarter]:
    """Start brokers in background threads (:class:`BrokerThread`); all stop after the test.

    ``maitred_broker(config, plugins=[...], transports=["mdp"])`` takes :func:`make_broker`'s
    arguments and returns the started :class:`BrokerThread`.
    """
    started: list[BrokerThread] = []

    def start(
        config: ConfigSource = None,
        *,
        plugins: Iterable[object] = (),
        transports: Transports = None,
        pm: pluggy.PluginManager | None = None,
        load_entry_points: bool = True,
        clock: Clock = monotonic,
        drain_timeout: float | None = 0.0,
    ) -> BrokerThread:
        plugins = list(plugins)

        def factory() -> Broker:
            return make_broker(
                config,
                plugins=plugins,
                transports=transports,
                pm=pm,
                load_entry_points=load_entry_points,
                clock=clock,
            )

        thread = BrokerThread(factory, drain_timeout=drain_timeout)
        started.append(thread)
        return thread.start()

    yield start
    errors: list[BaseException] = []
    for thread in reversed(started):
        try:
            thread.stop()
        except BaseException as exc:  # stop the others before reporting
            errors.append(exc)
    if errors:
        raise errors[0]
