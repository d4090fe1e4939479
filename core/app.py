"""The composition root: config + plugins → a :class:`~maitred.core.runtime.Broker`.

With :mod:`maitred.core.cli`, the only core module that may import :mod:`maitred.plugins`.

Embedded use (clients and workers in the same asyncio program)::

    from maitred.core.app import embedded

    async with embedded(mdp=["inproc://maitred"]) as broker:
        ctx = broker.transport("mdp").context   # share it for inproc:// clients
        ...
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec
import pluggy

from maitred.core.clock import Clock, monotonic
from maitred.core.config import Config, convert_section, did_you_mean, load_config
from maitred.core.durable import StoreHint
from maitred.core.errors import ConfigError
from maitred.core.runtime import Broker, Hooks, store_choice
from maitred.core.transport import TransportSpec
from maitred.plugins.manager import make_plugin_manager

log = logging.getLogger("maitred.core.app")


def plugin_manager_for(config: Config, plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    return make_plugin_manager(disabled=config.plugins.disable, plugins=plugins)


def transport_specs(pm: pluggy.PluginManager) -> dict[str, TransportSpec]:
    """Every transport the registered plugins provide, by name."""
    specs: dict[str, TransportSpec] = {}
    for provided in pm.hook.maitred_transports():
        for spec in provided or ():
            if spec.name in specs:
                raise ConfigError(f"two plugins provide a transport named {spec.name!r}")
            specs[spec.name] = spec
    return specs


def resolve_transports(
    config: Config, specs: Mapping[str, TransportSpec]
) -> dict[str, tuple[TransportSpec, msgspec.Struct]]:
    """Decode each ``[transports.NAME]`` with its plugin's config type; keep the enabled ones."""
    enabled: dict[str, tuple[TransportSpec, msgspec.Struct]] = {}
    for name, table in config.transport_tables().items():
        spec = specs.get(name)
        if spec is None and (
            name in config.plugins.disable
            or (isinstance(table, dict) and table.get("enabled") is False)
        ):
            if name in config.plugins.disable:
                log.warning("transports.%s is configured but plugin %r is disabled", name, name)
            continue
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            raise ConfigError(
                f"{config.source}: transports.{name}: no such transport (installed: {known})"
                f"{did_you_mean(name, specs)}"
            )
        # [cluster] is the cluster plugin's table: messages name it as the file does
        key = "cluster" if name == "cluster" and config.cluster else f"transports.{name}"
        tconfig = convert_section(table, spec.config_type, key, config.source)
        problems = getattr(tconfig, "problems", None)
        if callable(problems):
            for problem in problems():
                raise ConfigError(f"{config.source}: {key}: {problem}")
        if getattr(tconfig, "enabled", True):
            enabled[name] = (spec, tconfig)
    return enabled


def apply_addresses(
    config: Config, specs: Mapping[str, TransportSpec], addresses: Mapping[str, Sequence[str]]
) -> Config:
    """Override/enable transports from ``--NAME ADDR`` command-line flags."""
    transports = {k: dict(v) for k, v in config.transport_tables().items()}
    for name, addrs in addresses.items():
        if not addrs:
            continue
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(f"transport {name!r} is not installed or its plugin is disabled")
        if spec.cli_addresses is None:
            raise ConfigError(f"transport {name} takes no address on the command line")
        table = transports.setdefault(name, {})
        table.update(spec.cli_addresses(addrs))
        table["enabled"] = True
    return msgspec.structs.replace(config, transports=transports)


def preflight(
    config: Config,
    specs: Mapping[str, TransportSpec],
    addresses: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Everything ``serve`` would fail on, as messages that name the file or the flag, the key
    and the fix (empty: nothing found). Binds, creates and writes nothing.

    Problems with an address given as ``--NAME ADDR`` name the flag; the others name the config
    file and the key. Raises :class:`ConfigError` for what :func:`resolve_transports` refuses."""
    from maitred.core.preflight import check_secret_files, check_writable_file
    from maitred.core.store import default_store_path

    flags = {name: set(addrs) for name, addrs in (addresses or {}).items() if addrs}
    if flags:
        config = apply_addresses(config, specs, addresses or {})
    out: list[str] = []
    hints: list[tuple[str, StoreHint]] = []
    for name, table in config.transport_tables().items():
        spec = specs.get(name)
        if spec is None or not isinstance(table, dict):
            continue
        if spec.preflight is None and spec.store_hint is None and spec.secret_files is None:
            continue
        key = "cluster" if name == "cluster" and config.cluster else f"transports.{name}"
        tconfig = convert_section(table, spec.config_type, key, config.source)
        if not getattr(tconfig, "enabled", True):
            continue
        if spec.store_hint is not None and (hint := spec.store_hint(tconfig)) is not None:
            hints.append((name, hint))
        problems = list(spec.preflight(tconfig)) if spec.preflight is not None else []
        if spec.secret_files is not None:  # files anyone but their owner may read: refused
            found = {problem.key for problem in problems}
            problems += check_secret_files(spec.secret_files(tconfig), skip=found)
        for problem in problems:
            if problem.value is not None and problem.value in flags.get(name, ()):
                out.append(f"--{name}: {problem.text}")
            else:
                out.append(f"{config.source}: {key}.{problem.key}: {problem.text}")
    if config.policies().uses_store() or hints:  # the one store is opened at start
        choice = store_choice(config, hints)
        if choice.backend == "jetstream" and importlib.util.find_spec("nats") is None:
            out.append(
                f'{config.source}: store: backend "jetstream" needs nats-py: '
                'pip install "maitred[jetstream]"'
            )
        if choice.backend == "sqlite":
            unwritable = check_writable_file(Path(choice.path or default_store_path()))
            if unwritable:
                fix = (
                    ""
                    if choice.path
                    else ' (the default path: set [store] path, or [store] backend = "memory")'
                )
                out.append(f"{config.source}: {choice.path_key}: the store {unwritable}{fix}")
    if not out:
        resolve_transports(config, specs)  # what the config types' own checks refuse
    return out


def plugin_warnings(config: Config, installed: Sequence[str]) -> list[str]:
    """Names in ``[plugins] disable`` that are no installed plugin (a typo leaves the plugin
    meant running)."""
    return [
        f"{config.source}: plugins.disable: {name!r} is not an installed plugin (installed: "
        f"{', '.join(installed) or 'none'}){did_you_mean(name, installed)}"
        for name in config.plugins.disable
        if name and name not in installed
    ]


def bind_hooks(pm: pluggy.PluginManager) -> Hooks:
    """Turn the hooks somebody implements into plain callables (None otherwise)."""
    h = pm.hook

    def implemented(name: str) -> bool:
        return bool(getattr(h, name).get_hookimpls())

    hooks = Hooks()
    if implemented("maitred_authenticate"):
        hooks.authenticate = lambda transport, credentials: h.maitred_authenticate(
            transport=transport, credentials=credentials
        )
    if implemented("maitred_authorize"):
        hooks.authorize = lambda identity, action, name: h.maitred_authorize(
            identity=identity, action=action, name=name
        )
    if implemented("maitred_system_event"):
        hooks.system_event = lambda topic, payload: h.maitred_system_event(
            topic=topic, payload=payload
        )
    if implemented("maitred_broker_started"):
        hooks.started = lambda broker: list(h.maitred_broker_started(broker=broker))
    if implemented("maitred_broker_stopping"):
        hooks.stopping = lambda broker: list(h.maitred_broker_stopping(broker=broker))
    return hooks


def build_broker(
    config: Config,
    *,
    pm: pluggy.PluginManager | None = None,
    plugins: Iterable[object] = (),
    addresses: Mapping[str, Sequence[str]] | None = None,
    clock: Clock = monotonic,
) -> Broker:
    """A broker for ``config`` with every installed plugin (minus the disabled ones)."""
    if pm is None:
        pm = plugin_manager_for(config, plugins)
    specs = transport_specs(pm)
    if addresses:
        config = apply_addresses(config, specs, addresses)
    transports = resolve_transports(config, specs)
    pm.hook.maitred_configure.call_historic(kwargs={"config": config})
    return Broker(config, transports, bind_hooks(pm), clock=clock)


def embedded(
    config: Config | str | None = None,
    *,
    plugins: Iterable[object] = (),
    **addresses: Sequence[str],
) -> Broker:
    """A broker to run inside your own asyncio program: ``async with embedded(...) as b``.

    ``config`` is a :class:`Config`, a path to a TOML file, or None for the embedded defaults.
    Keyword arguments name transports and their addresses (``mdp=["inproc://x"]``); when any
    is given, only the transports named run.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    if addresses:
        cfg = msgspec.structs.replace(
            cfg, transports={k: v for k, v in cfg.transports.items() if k in addresses}
        )
    return build_broker(cfg, plugins=plugins, addresses=dict(addresses))
