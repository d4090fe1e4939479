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
          n = running.call(lambda: len(running.broker.port.services()))  # on the loop thread

- from async code, inside ``asyncio.run(...)`` in the test: :func:`running_broker`::

      def test_async():
          async def main() -> None:
              async with running_broker(transports=["mdp"], plugins=[MyPlugin()]) as broker:
                  ...
          asyncio.run(main())

To test ``maitred serve`` itself with your plugin installed (a system test), the
``maitred_serve`` fixture runs it in a subprocess and returns once every transport listens::

    def test_serve(maitred_serve, tmp_path):
        served = maitred_serve("-c", str(config_file))      # a ServeProcess
        endpoint = served.endpoint("line")                   # every transport is up by now
        ...
        assert served.stop() == 0                            # SIGTERM, drain, exit code

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
import json
import os
import signal
import subprocess
import sys
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
from typing import Any, Protocol, TypeAlias, TypedDict, TypeVar, Unpack

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
    "BrokerOptions",
    "BrokerStarter",
    "BrokerThread",
    "ConfigFactory",
    "ConfigSource",
    "PluginManagerFactory",
    "ServeProcess",
    "ServeStarter",
    "Transports",
    "config_from",
    "ephemeral_addresses",
    "maitred_broker",
    "maitred_config",
    "maitred_plugin_manager",
    "maitred_serve",
    "make_broker",
    "plugin_manager",
    "running_broker",
]

T = TypeVar("T")

#: a Config, TOML text, a dict of sections, a Path to a TOML file, or None (no transports)
ConfigSource: TypeAlias = Config | str | Path | Mapping[str, Any] | None
#: transport names (bound to a free port on 127.0.0.1) or ``{name: [addresses]}``
Transports: TypeAlias = Mapping[str, Sequence[str]] | Iterable[str] | None


class BrokerOptions(TypedDict, total=False):
    """How :func:`make_broker` builds a broker (the keyword options it, :func:`running_broker`
    and the ``maitred_broker`` fixture take), each optional; the default follows each name."""

    #: ``()``: plugin objects, registered before the installed ones
    plugins: Iterable[object]
    #: ``None``: transports enabled on top of the config's
    transports: Transports
    #: ``None``: the plugin manager (by default :func:`plugin_manager` with ``plugins`` and the
    #: config's ``[plugins] disable`` list)
    pm: pluggy.PluginManager | None
    #: ``True``: register the installed plugins too
    load_entry_points: bool
    #: ``monotonic``: the broker's clock
    clock: Clock


#: where the built-in transports listen in tests (a plugin's own transports say it in
#: ``TransportSpec.extra["ephemeral_address"]``)
EPHEMERAL_ADDRESSES: Mapping[str, str] = {"mdp": "tcp://127.0.0.1:0"}

#: seconds the threaded broker may take to start or to stop
DEFAULT_TIMEOUT = 10.0
#: seconds a ``maitred serve`` subprocess may take to start (generous: a loaded CI machine)
SERVE_START_TIMEOUT = 60.0
#: the command that runs maitred in a subprocess (the interpreter running the tests)
MAITRED_COMMAND: tuple[str, ...] = (sys.executable, "-m", "maitred.core")


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


def make_broker(config: ConfigSource = None, **options: Unpack[BrokerOptions]) -> Broker:
    """A broker (not started) as :func:`maitred.core.app.build_broker` builds it, with
    ``options`` (:class:`BrokerOptions`).

    ``pm`` defaults to :func:`plugin_manager` with ``plugins`` and the config's
    ``[plugins] disable`` list. ``transports`` enables transports on top of the config's.
    """
    unknown = sorted(options.keys() - BrokerOptions.__optional_keys__)
    if unknown:
        raise TypeError(f"make_broker() got an unexpected keyword argument {unknown[0]!r}")
    plugins = options.get("plugins", ())
    transports = options.get("transports")
    pm = options.get("pm")
    cfg = config_from(config)
    if pm is None:
        pm = plugin_manager(
            *plugins,
            disabled=cfg.plugins.disable,
            load_entry_points=options.get("load_entry_points", True),
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
    return build_broker(cfg, pm=pm, addresses=addresses, clock=options.get("clock", monotonic))


@asynccontextmanager
async def running_broker(
    config: ConfigSource = None,
    *,
    drain_timeout: float | None = 0.0,
    **options: Unpack[BrokerOptions],
) -> AsyncIterator[Broker]:
    """``async with running_broker(...) as broker``: started on entry, stopped on exit.

    The arguments are :func:`make_broker`'s. ``drain_timeout`` is passed to
    :meth:`Broker.stop` (default 0: requests still in flight fail at once; None: the config's
    ``[broker] drain_timeout``).
    """
    broker = make_broker(config, **options)
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

    def __exit__(self, *exc_info: object) -> None:
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


class ServeProcess:
    """``maitred serve ARGS`` in a subprocess, for system tests.

    The constructor returns once the process printed ``maitred: ready {JSON}``, the line
    ``serve`` prints after every transport listens, with all the bound endpoints (never at the
    first ``listening`` line: with several transports that one names only the first). It raises
    ``RuntimeError`` with the process's standard error if the process exits first or is not
    ready within ``timeout`` seconds. Threads read standard output and standard error as they
    come (``stdout_lines``, ``stderr_lines``), so the pipes never fill up.

    ``command`` replaces the program run before ``serve`` (default ``python -m maitred.core``
    with the interpreter running the tests); ``env`` adds environment variables.
    """

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = SERVE_START_TIMEOUT,
        command: Sequence[str] = MAITRED_COMMAND,
    ) -> None:
        self.args = [*command, "serve", *args]
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env} if env else None,
        )
        #: ``{transport: [endpoints as bound]}`` from the ready line
        self.endpoints: dict[str, list[str]] = {}
        #: the ready line was printed
        self.ready = False
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._settled = threading.Event()  # ready, or standard output closed
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True, name="serve-stdout"),
            threading.Thread(target=self._read_stderr, daemon=True, name="serve-stderr"),
        ]
        for reader in self._readers:
            reader.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.close()
            raise

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        prefix = "maitred: ready "
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            self.stdout_lines.append(line)
            if line.startswith(prefix) and not self.ready:
                self.endpoints = json.loads(line[len(prefix) :])
                self.ready = True
                self._settled.set()
        self._settled.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def _wait_ready(self, timeout: float) -> None:
        if not self._settled.wait(timeout):
            raise RuntimeError(
                f"maitred serve was not ready within {timeout}s; stderr:\n{self.log()}"
            )
        if not self.ready:
            code = self.proc.wait(DEFAULT_TIMEOUT)
            raise RuntimeError(f"maitred serve exited with {code} before ready:\n{self.log()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def endpoint(self, transport: str) -> str:
        """The first endpoint of ``transport`` (KeyError naming the running ones if absent)."""
        found = self.endpoints.get(transport)
        if not found:
            raise KeyError(f"transport {transport!r} is not running (running: {self.endpoints})")
        return found[0]

    def log(self) -> str:
        """Standard error so far (all of it once the process has exited)."""
        if self.proc.poll() is not None:
            self._readers[1].join(DEFAULT_TIMEOUT)
        return "".join(self.stderr_lines)

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` (a drain), wait for the exit and return its code; if the process does
        not exit within ``timeout`` it is killed and ``RuntimeError`` says so."""
        self.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise RuntimeError(
                f"maitred serve did not stop on signal {sig} within {timeout}s; stderr:\n"
                f"{self.log()}"
            ) from None
        self.close()
        return code

    def kill(self) -> None:
        """SIGKILL (a crash) and wait for the exit."""
        self.send_signal(signal.SIGKILL)
        self.proc.wait(DEFAULT_TIMEOUT)

    def close(self) -> None:
        """Kill the process if it still runs, join the reader threads, close the pipes
        (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(DEFAULT_TIMEOUT)
        for reader in self._readers:
            reader.join(DEFAULT_TIMEOUT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ServeStarter(Protocol):
    """The ``maitred_serve`` fixture: call it to start ``maitred serve`` (closed after the
    test)."""

    def __call__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = SERVE_START_TIMEOUT,
        command: Sequence[str] = MAITRED_COMMAND,
    ) -> ServeProcess: ...


class BrokerStarter(Protocol):
    """The ``maitred_broker`` fixture: call it to start a broker (stopped after the test)."""

    def __call__(
        self,
        config: ConfigSource = None,
        *,
        drain_timeout: float | None = 0.0,
        **options: Unpack[BrokerOptions],
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
        drain_timeout: float | None = 0.0,
        **options: Unpack[BrokerOptions],
    ) -> BrokerThread:
        if "plugins" in options:  # built on the broker's thread: an iterator is read here
            options["plugins"] = list(options["plugins"])

        def factory() -> Broker:
            return make_broker(config, **options)

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


@pytest.fixture
def maitred_serve() -> Iterator[ServeStarter]:
    """Start ``maitred serve`` subprocesses (:class:`ServeProcess`); each one still running
    after the test is killed. ``maitred_serve("-c", path)`` returns once every transport
    listens."""
    started: list[ServeProcess] = []

    def start(
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = SERVE_START_TIMEOUT,
        command: Sequence[str] = MAITRED_COMMAND,
    ) -> ServeProcess:
        served = ServeProcess(*args, env=env, timeout=timeout, command=command)
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()
