"""The configuration: one TOML file decoded into msgspec Structs.

Every key has a default (the embedded defaults; ``conf/maitred.toml`` writes them all out, and a
test keeps the two equal). Unknown keys and bad values are refused with a message that names the
key and the file. Transport sections (``[transports.NAME]``) are checked against the config type
that the transport's plugin declares (see :mod:`maitred.core.transport`).
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import msgspec.inspect

from maitred.core.access import AccessPolicy, AllowAll, Rule, RuleTable
from maitred.core.errors import ConfigError
from maitred.core.routing.model import ServicePolicy
from maitred.core.routing.patterns import is_pattern, matches, validate_pattern
from maitred.core.routing.router import Liveness

T = TypeVar("T")


class BrokerSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[broker]``: the process as a whole."""

    #: shown in logs and mmi.info
    name: str = "maitred"
    #: how often deadlines and liveness are checked (seconds); deadlines are never early
    tick_interval: float = 0.05
    #: on SIGINT/SIGTERM: how long in-flight requests may take to finish before they fail
    drain_timeout: float = 5.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``text`` (one human line per record) or ``json`` (one JSON object per line, with the
    #: request id, service and transport of per-request records as fields)
    log_format: Literal["text", "json"] = "text"
    #: run the event loop on uvloop when it is installed
    uvloop: bool = True
    #: deprecated alias of ``[store] backend`` (used when that one is left at its default);
    #: empty: not set
    store: Literal["", "memory", "sqlite", "jetstream"] = ""
    #: deprecated alias of ``[store] path`` (used when that one is empty); empty: not set
    store_path: str = ""
    #: deprecated alias of ``[store] sync`` (used when that one is left at its default);
    #: empty: not set
    store_sync: Literal["", "normal", "full"] = ""
    #: most topic subscriptions one session (a connection) may hold; one more is refused with
    #: 429 in the transport's own error form and counted (``subscriptions.refused``)
    max_subscriptions: int = 10_000
    #: most entries one MMI listing (``mmi.services``, ``mmi.workers``, ``mmi.queues``,
    #: ``mmi.topics``) answers with; a longer one is paged (docs/reference/mmi.md)
    mmi_max_items: int = 1000
    #: most topic subscriptions of all sessions together; one more is refused like above
    max_subscriptions_total: int = 100_000
    #: most services known at once (a service exists while it has a worker or a waiting
    #: request); a request or a worker for one more is refused with 429
    max_services: int = 10_000
    #: longest service name or subscription pattern, in UTF-8 bytes; longer ones are refused
    #: with 400 in the transport's own error form
    max_name_length: int = 255
    #: bytes the broker may hold in request queues and connection outboxes together (0: no
    #: limit). Past it new requests get 503 and ``$sys.broker.overload`` is published (once
    #: per episode; ``$sys.broker.recovered`` when back under 90 %)
    max_memory: int = 1 << 30


class StoreSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[store]``: the one durable store: requests of services with ``on_no_worker =
    "store"`` and the messages of persistent switch queues. Opened at start when a service or a
    transport needs it."""

    #: ``sqlite`` (a file: survives a crash), ``memory`` (lost when the process ends) or
    #: ``jetstream`` (a NATS JetStream stream, replicated: survives the loss of a machine;
    #: needs the ``jetstream`` extra)
    backend: Literal["memory", "sqlite", "jetstream"] = "sqlite"
    #: the SQLite file; empty: ``$XDG_STATE_HOME/maitred/store.sqlite3`` (by default
    #: ``~/.local/state/maitred/store.sqlite3``). One broker per file (it is locked)
    path: str = ""
    #: SQLite ``synchronous``: ``normal`` survives a process crash, ``full`` also a power loss
    #: (an fsync per commit)
    sync: Literal["normal", "full"] = "normal"
    #: ``jetstream``: the NATS servers (``nats://host:port``); empty: ``nats://127.0.0.1:4222``
    jetstream_nats: list[str] = msgspec.field(default_factory=list)
    #: ``jetstream``: the stream (made at start if missing; one with other settings is refused)
    jetstream_stream: str = "MAITRED_DURABLE"
    #: ``jetstream``: how many servers keep each message (Raft replicas: 1, 3 or 5)
    jetstream_replicas: Literal[1, 3, 5] = 1
    #: ``jetstream``: seconds to connect, and to wait for JetStream to acknowledge a write
    jetstream_timeout: float = 5.0


class AccessSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[access]``: the permission table applied to every transport."""

    default: Literal["allow", "deny"] = "allow"
    rules: list[Rule] = msgspec.field(default_factory=list)

    def policy(self) -> AccessPolicy:
        if self.default == "allow" and not self.rules:
            return AllowAll()
        return RuleTable(self.rules, default_allow=self.default == "allow")


class PluginsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[plugins]``: which installed plugins (entry points of group ``maitred``) to skip."""

    disable: list[str] = msgspec.field(default_factory=list)


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (its parent packages are imported to tell)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


class TracingSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[tracing]``: one OpenTelemetry span per request, exported over OTLP/HTTP (needs
    ``pip install 'maitred[otel]'``). Off while ``otlp_endpoint`` is empty."""

    #: where spans are sent: an OTLP/HTTP traces URL (e.g.
    #: ``http://127.0.0.1:4318/v1/traces``); empty: tracing is off and ``opentelemetry`` is
    #: not imported
    otlp_endpoint: str = ""
    #: the ``service.name`` resource attribute of the broker's spans
    service_name: str = "maitred"
    #: the share of new traces that are recorded (0 to 1); a request whose caller sent a
    #: ``traceparent`` follows the caller's sampled flag instead
    sample_ratio: float = 1.0


def _default_transports() -> dict[str, dict[str, Any]]:
    return {"mdp": {}}


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration file."""

    broker: BrokerSection = msgspec.field(default_factory=BrokerSection)
    liveness: Liveness = msgspec.field(default_factory=Liveness)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    #: ``default`` applies to every service; other keys are service names or patterns
    services: dict[str, Any] = msgspec.field(default_factory=dict)
    access: AccessSection = msgspec.field(default_factory=AccessSection)
    plugins: PluginsSection = msgspec.field(default_factory=PluginsSection)
    tracing: TracingSection = msgspec.field(default_factory=TracingSection)
    #: one table per transport; a transport runs when its table exists and ``enabled`` is true
    transports: dict[str, Any] = msgspec.field(default_factory=_default_transports)
    #: ``[cluster]``: this broker is a node of a cluster over NATS (the ``cluster`` plugin's
    #: table, taken as ``[transports.cluster]``; empty: no cluster)
    cluster: dict[str, Any] = msgspec.field(default_factory=dict)
    #: where this config came from (not a key of the file)
    source: str = "<embedded defaults>"

    def policies(self) -> ServicePolicies:
        """The resolved per-service policies (build once; raises :class:`ConfigError`)."""
        return ServicePolicies(self.services, self.source)

    def transport_tables(self) -> dict[str, Any]:
        """``[transports.*]`` with ``[cluster]`` as the ``cluster`` transport's table (keys of
        ``[transports.cluster]``, e.g. from ``--cluster``, win)."""
        if not self.cluster:
            return self.transports
        return {
            **self.transports,
            "cluster": {**self.cluster, **self.transports.get("cluster", {})},
        }

    def enabled_transports(self) -> list[str]:
        return [name for name, t in self.transport_tables().items() if t.get("enabled", True)]

    def check(self) -> None:
        """Validate what the Struct types alone cannot; raises :class:`ConfigError`."""
        problems: list[str] = []
        problems += [f"liveness: {p}" for p in self.liveness.problems()]
        if not (0 < self.broker.tick_interval <= 10):
            problems.append("broker.tick_interval: must be a number > 0 and <= 10")
        if self.broker.max_subscriptions < 1:
            problems.append("broker.max_subscriptions: must be >= 1")
        if self.broker.mmi_max_items < 1:
            problems.append("broker.mmi_max_items: must be >= 1")
        for key in ("max_subscriptions_total", "max_services", "max_name_length"):
            if getattr(self.broker, key) < 1:
                problems.append(f"broker.{key}: must be >= 1")
        if self.broker.max_memory < 0:
            problems.append("broker.max_memory: must be >= 0 (0: no limit)")
        if not (0 <= self.broker.drain_timeout < math.inf):
            problems.append("broker.drain_timeout: must be a finite number >= 0")
        for section in ("services", "transports"):
            for key, value in getattr(self, section).items():
                if not isinstance(value, dict):
                    problems.append(f"{section}.{key}: must be a table, not {type(value).__name__}")
        for i, rule in enumerate(self.access.rules):
            problems += [f"access.rules[{i}]: {p}" for p in rule.problems()]
        if not (0.0 <= self.tracing.sample_ratio <= 1.0):
            problems.append("tracing.sample_ratio: must be a number from 0 to 1")
        endpoint = self.tracing.otlp_endpoint
        if endpoint and not endpoint.startswith(("http://", "https://")):
            problems.append("tracing.otlp_endpoint: must be an http:// or https:// URL")
        elif endpoint and not _installed("opentelemetry.sdk"):
            problems.append(
                "tracing.otlp_endpoint: tracing needs the opentelemetry packages "
                "(pip install 'maitred[otel]')"
            )
        if not self.tracing.service_name:
            problems.append("tracing.service_name: must not be empty")
        for name in self.plugins.disable:
            if not name:
                problems.append("plugins.disable: empty name")
        if problems:
            raise ConfigError(f"{self.source}: " + "; ".join(problems))
        self.policies()  # validates [services.*]


class ServicePolicies:
    """Resolves a service's policy: its own table, else the first matching pattern table, over
    ``[services.default]``, over the built-in defaults."""

    def __init__(self, tables: Mapping[str, Mapping[str, Any]], source: str) -> None:
        base = dict(tables.get("default", {}))
        self.default = _convert(base, ServicePolicy, "services.default", source)
        self.exact: dict[str, ServicePolicy] = {}
        self.patterns: list[tuple[str, ServicePolicy]] = []
        for name, table in tables.items():
            if name == "default":
                continue
            problem = validate_pattern(name)
            if problem:
                raise ConfigError(f"{source}: services.{name}: {problem}")
            merged = {**base, **table}
            policy = _convert(merged, ServicePolicy, f"services.{name}", source)
            if is_pattern(name):
                self.patterns.append((name, policy))
            else:
                self.exact[name] = policy
        for name, policy in [("default", self.default), *self.exact.items(), *self.patterns]:
            for p in policy.problems():
                raise ConfigError(f"{source}: services.{name}: {p}")

    def uses_store(self) -> bool:
        """Whether any service may have ``on_no_worker = "store"``."""
        policies = [self.default, *self.exact.values(), *(p for _, p in self.patterns)]
        return any(p.on_no_worker == "store" for p in policies)

    def for_service(self, name: str) -> ServicePolicy:
        policy = self.exact.get(name)
        if policy is not None:
            return policy
        for pattern, policy in self.patterns:
            if matches(pattern, name):
                return policy
        return self.default


_AT = re.compile(r"\s*-\s*at\s*`\$(?P<path>[^`]*)`\s*$")


_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_ENUM = re.compile(r"^Invalid enum value (?P<value>.*)$")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib), else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_at(typ: Any, parts: list[str]) -> Any:
    """The msgspec type info at ``parts`` (keys and ``[n]`` indexes) below ``typ``."""
    info: Any = msgspec.inspect.type_info(typ)
    for part in parts:
        while isinstance(info, msgspec.inspect.UnionType):
            structs = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            info = next(
                (t for t in structs if isinstance(t, msgspec.inspect.StructType)), structs[0]
            )
        if isinstance(info, msgspec.inspect.StructType):
            found = [f.type for f in info.fields if f.encode_name == part]
            if not found:
                return None
            info = found[0]
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        elif isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        else:
            return None
    return info


def _explain(error: Exception, prefix: str, typ: Any = None) -> str:
    """Turn msgspec's ``... - at `$.a.b``` into ``a.b: ...`` under ``prefix``; an unknown key
    gets a "did you mean" and the keys allowed there, a bad enum value the choices."""
    text = str(error)
    path = ""
    m = _AT.search(text)
    if m:
        text = text[: m.start()]
        path = m.group("path").lstrip(".")
        path = re.sub(r"\[(\d+)\]", r"[\1]", path)
    parts = [p for p in re.split(r"\.|\[\d+\]", path) if p]
    unknown = _UNKNOWN.match(text)
    enum = _ENUM.match(text)
    info = _type_at(typ, parts) if typ is not None and (unknown or enum) else None
    if unknown:
        name = unknown.group("name")
        keys = (
            [f.encode_name for f in info.fields if f.encode_name != "source"]
            if isinstance(info, msgspec.inspect.StructType)
            else []
        )
        hint = did_you_mean(name, keys)
        text += hint or (f" (keys here: {', '.join(keys)})" if keys else "")
    elif enum and isinstance(info, msgspec.inspect.LiteralType):
        choices = ", ".join(repr(v) for v in info.values)
        text = f"{text}; choose one of {choices}"
    full = ".".join(p for p in (prefix, path) if p)
    return f"{full}: {text}" if full else text


def _convert(data: Any, typ: type[T], key: str, source: str) -> T:
    try:
        return msgspec.convert(data, type=typ, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(exc, key, typ)}") from None


def convert_section(data: Any, typ: type[T], key: str, source: str) -> T:
    """Decode one config table into ``typ`` with an error that names ``key`` and the file."""
    return _convert(data, typ, key, source)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse TOML text into a checked :class:`Config`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if "source" in data:
        raise ConfigError(f"{source}: source: not a configuration key")
    config = _convert(data, Config, "", source)
    config.source = source
    config.check()
    return config


def load_config(path: str | Path | None) -> Config:
    """Load and check a config file; ``None`` gives the embedded defaults."""
    if path is None:
        config = Config()
        config.check()
        return config
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_config(text, str(p))
