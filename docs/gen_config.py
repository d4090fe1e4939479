"""Generate the key/type/default tables of docs/reference/config.md from the config Structs.

Each table sits in config.md between two markers::

    <!-- BEGIN GENERATED: transports.mdp -->
    ...
    <!-- END GENERATED: transports.mdp -->

The key, type and default columns come from the Struct (``msgspec.structs.fields``); the meaning
column from ``DESCRIPTIONS`` below, else from the field's ``#:`` comment in the source. Ranges
that only the ``problems()``/``check()`` methods enforce are in ``RANGES``. Everything outside
the markers is hand-written and left alone.

    python docs/gen_config.py           # rewrite the tables in docs/reference/config.md
    python docs/gen_config.py --check   # exit 1 if they are out of date (tests/test_docs.py)
"""

from __future__ import annotations

import argparse
import enum
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import msgspec

from maitred.core.access import Rule
from maitred.core.config import (
    AccessSection,
    BrokerSection,
    PluginsSection,
    StoreSection,
    TracingSection,
)
from maitred.core.credentials import TokenConfig
from maitred.core.routing.model import ServicePolicy
from maitred.core.routing.router import Liveness
from maitred.transports.cluster.config import ClusterConfig
from maitred.transports.http.adapter import HttpConfig
from maitred.transports.mdp.adapter import MdpConfig
from maitred.transports.mdp.zap import CurveKey
from maitred.transports.ws.adapter import KeyConfig, WsConfig

CONFIG_MD = Path(__file__).resolve().parent / "reference" / "config.md"
REGENERATE = "python docs/gen_config.py"

#: marker name -> the Struct whose fields make the table
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "broker": BrokerSection,
    "liveness": Liveness,
    "store": StoreSection,
    "services": ServicePolicy,
    "access": AccessSection,
    "access.rules": Rule,
    "plugins": PluginsSection,
    "tracing": TracingSection,
    "transports.mdp": MdpConfig,
    "transports.mdp.keys": CurveKey,
    "transports.http": HttpConfig,
    "transports.ws": WsConfig,
    "transports.ws.keys": KeyConfig,
    "cluster": ClusterConfig,
    "transports.ws.tokens": TokenConfig,
}

#: what the decoder cannot say: ranges checked after decoding (appended to the type)
RANGES: dict[str, dict[str, str]] = {
    "broker": {
        "tick_interval": "> 0 and ≤ 10",
        "drain_timeout": "finite, ≥ 0",
        "max_subscriptions": "≥ 1",
        "max_subscriptions_total": "≥ 1",
        "max_services": "≥ 1",
        "max_name_length": "≥ 1",
        "max_memory": "≥ 0",
    },
    "liveness": {
        "heartbeat_interval": "finite, > 0",
        "liveness": "≥ 1",
        "busy_timeout": "finite, ≥ 0",
    },
    "services": {
        "request_timeout": "finite, ≥ 0",
        "max_queue": "≥ 0",
        "max_queue_bytes": "≥ 0",
        "max_deliveries": "≥ 1",
    },
    "transports.mdp": {
        "endpoints": "at least one",
        "heartbeat_interval": "finite, ≥ 0",
        "liveness": "≥ 0",
        "max_message_size": "≥ 1",
        "max_frames": "≥ 1",
        "batch": "≥ 1",
        "sndhwm": "≥ 0",
        "rcvhwm": "≥ 0",
        "linger_ms": "≥ -1",
        "worker_credit": "≥ 1",
        "curve_endpoints": "each one of `endpoints`",
    },
    "transports.mdp.keys": {"public_key": "40 Z85 characters, unique", "identity": "not empty"},
    "transports.http": {
        "listen": "at least one",
        "max_body_size": "≥ 1",
        "request_timeout": "finite, ≥ 0",
        "switch_credit": "≥ 1",
        "max_deliveries": "≥ 0",
        "trace_size": "≥ 0",
        "sse_buffer": "≥ 1",
        "sse_buffer_bytes": "≥ 1024",
    },
    "transports.ws": {
        "listen": "at least one",
        "keys": "at least one, unless `tokens` or `anonymous`",
        "max_frame_size": "≥ 64",
        "outbox": "≥ 1",
        "outbox_bytes": "≥ 1024",
        "ping_interval": "finite, ≥ 0",
        "ping_timeout": "finite, ≥ 0",
        "handshake_timeout": "finite, > 0",
        "request_timeout": "finite, ≥ 0",
        "responder_credit": "≥ 1",
        "close_timeout": "finite, ≥ 0",
    },
    "transports.ws.keys": {"key": "unique; exactly one of `key`, `key_file`, `key_env`"},
    "transports.ws.tokens": {"sha256": "64 hex digits, unique", "identity": "not empty"},
    "tracing": {
        "otlp_endpoint": "empty, or an http(s) URL",
        "service_name": "not empty",
        "sample_ratio": "0 to 1",
    },
}

_ENABLED = "Run this transport."

#: the meaning column, key by key (Markdown, relative links as seen from config.md)
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "broker": {
        "name": "Shown in log lines and as `name` in [`mmi.info`](mmi.md#mmiinfo).",
        "tick_interval": (
            "How often the runtime checks request deadlines and worker liveness. Also the size "
            "of the deadline wheel's buckets: a deadline is never early and is normally met "
            "within two intervals."
        ),
        "drain_timeout": (
            "On SIGINT/SIGTERM or `Broker.stop()`: how long requests already with a worker get "
            "to finish. Then the rest fail with 530 `SHUTTING_DOWN`. `0`: do not wait. See "
            "[delivery](../topics/delivery.md#drain)."
        ),
        "log_level": (
            "The log level `maitred serve` sets up; `--log-level` overrides it. An embedded "
            "broker configures no logging (your program does)."
        ),
        "uvloop": (
            "`maitred serve` runs its event loop on uvloop when the `uvloop` package is "
            "installed (`pip install 'maitred[fast]'`); without it, on asyncio's default loop. "
            "An embedded broker runs on the loop your program runs."
        ),
    },
    "liveness": {
        "heartbeat_interval": (
            "Seconds between heartbeats. The MDP transport sends each worker a HEARTBEAT this "
            "often."
        ),
        "liveness": (
            "A worker that holds no request and has been silent for "
            "`heartbeat_interval × liveness` seconds (7.5 s by default) is dead."
        ),
        "busy_timeout": (
            "A worker that holds at least one request is dead after this many seconds of "
            "silence (majortomo's default). `0`: a busy worker never expires."
        ),
    },
    "services": {
        "on_no_worker": (
            "When the service has **no worker at all**: `wait` queues the request until a "
            "worker comes or its deadline passes (504 `TIMEOUT`); `fail` refuses it at once with "
            "503 `NO_WORKER`. With `fail`, requests still waiting when the last worker leaves "
            "also fail with 503. When the service has workers but all are busy, requests queue "
            "under both settings. `store`: every request is kept in the broker's durable store "
            "([`[store]`](#store)) from acceptance until a worker answers it, across crashes and "
            "restarts; the deadline ends only the caller's wait (504 saying the request is "
            "stored), a worker that dies hands it back (at most `max_deliveries` times, then it "
            "goes to the dead letters), a full queue refuses new requests (never drops one). "
            "REST callers can ask `Prefer: respond-async` for a 202 once it is on disk. See "
            "[delivery](../topics/delivery.md#durable-services-on_no_worker-store)."
        ),
        "request_timeout": (
            "Seconds from the moment the broker accepts a request to its final reply. After "
            "that the caller gets 504 `TIMEOUT`, whether the request was still waiting or "
            "already with a worker (a worker's late reply is then dropped). `0`: no deadline."
        ),
        "max_queue": (
            "How many requests may wait for a worker (requests already with a worker do not "
            "count). `0`: a request is accepted only if a worker is free at that moment."
        ),
        "max_queue_bytes": (
            "How many bytes the waiting requests may hold together (body frames plus service "
            "name), 64 MiB by default. A request that would pass it is handled like one past "
            "`max_queue` (see `overflow`); one larger than this on its own is always refused "
            "with 429. See [limits](../howto/operators.md#limits)."
        ),
        "overflow": (
            "When the queue is full (`max_queue` requests or `max_queue_bytes` bytes already "
            "wait): `reject` refuses the new request with 429 `QUEUE_FULL`; `drop_oldest` fails "
            'the oldest waiting requests with 429 `QUEUE_FULL` ("dropped: queue full") until '
            "the new one fits, and queues it. With `max_queue = 0`, always `reject`."
        ),
        "redeliver": (
            "When a worker dies holding a request: `true` puts the request back at the head of "
            "the queue for another worker (only for idempotent services); `false` fails it at "
            "once with 502 `WORKER_DIED`."
        ),
        "max_deliveries": (
            "With `redeliver`: how many times in all a request may be handed to a worker. If "
            "the worker of its last allowed delivery dies, it fails with 502 `WORKER_DIED`. "
            'Always applies to durable queues (`on_no_worker = "store"` services and '
            "persistent switch queues, which are services too): after this many deliveries "
            "without an answer or ack the message goes to the dead letters."
        ),
    },
    "access": {
        "default": "The verdict when no rule matches.",
        "rules": "The rules, tried in order; the first that matches decides.",
    },
    "access.rules": {
        "allow": "The verdict of this rule.",
        "who": (
            'Whom the rule is about: `"*"` (anyone), `"role:NAME"` (an identity with that role) '
            "or an identity name. Empty strings are refused."
        ),
        "actions": (
            "The actions it covers (by default the four traffic actions; `manage` and"
            " `observe` only when named)."
        ),
        "names": (
            "The names it covers, as patterns (`*` one segment, `>` the rest); the default "
            "covers every name."
        ),
    },
    "plugins": {
        "disable": (
            "Names of installed plugins (entry points of group `maitred`; `maitred plugins` "
            "lists them) that are not loaded. A name that is not installed is logged as a "
            "warning; an empty string is refused."
        ),
    },
    "transports.mdp": {
        "enabled": _ENABLED,
        "endpoints": (
            "ZeroMQ endpoints to bind: `tcp://HOST:PORT` (port `0` or `*`: any free port), "
            "`ipc:///path/to/socket`, `inproc://name` (clients in the same process, sharing the "
            "transport's ZeroMQ context). Each must contain `://`. `--mdp ENDPOINT` replaces the "
            "list."
        ),
        "heartbeat_interval": (
            "Seconds between the HEARTBEATs the broker sends each worker. `0`: "
            "`[liveness] heartbeat_interval`."
        ),
        "liveness": (
            "Heartbeat intervals of silence after which an idle MDP worker is dead. `0`: "
            "`[liveness] liveness`. (Busy workers use `[liveness] busy_timeout`.)"
        ),
        "max_message_size": (
            "Largest request or reply body accepted, in bytes (the sum of the body frames). A "
            "larger request is dropped and its caller gets 413 `TOO_LARGE`; a larger reply is "
            "dropped and the caller of that request gets 413. ZeroMQ itself drops the "
            "connection of a peer that sends a single frame larger than "
            "`max_message_size + 4096` bytes."
        ),
        "max_frames": (
            "Most body frames in one request or reply; more is handled as too large (413)."
        ),
        "batch": (
            "Messages read from the socket per wake-up before other work on the event loop "
            "gets a turn."
        ),
        "sndhwm": (
            "ZeroMQ send high-water mark: messages queued toward each peer (ZeroMQ counts "
            "messages, not bytes: a peer that does not read can hold about `sndhwm` times its "
            "largest message). A message for a peer at its mark is dropped and counted "
            "(`mdp.peer_full`); the client times out or gets its reply late. `0`: no limit (a "
            "client that never reads then grows the broker without bound)."
        ),
        "rcvhwm": (
            "ZeroMQ receive high-water mark: messages read ahead from each peer; past it ZeroMQ "
            "stops reading that peer's connection (the peer's sends wait). `0`: no limit."
        ),
        "error_replies": (
            "When a request fails (any [error code](errors.md)), answer it with a final reply "
            'whose body is two frames, the code and the reason (`"503"`, `"no worker for '
            'echo"`). `false`: send nothing; the client times out, as MDP clients are used to. '
            "See [MDP errors](mdp.md#errors)."
        ),
        "identity": "The identity every MDP peer (client or worker) has for the `[access]` rules.",
        "roles": "The roles of that identity.",
        "linger_ms": (
            "Milliseconds the socket keeps trying to send queued messages (such as the "
            "DISCONNECTs at shutdown) after the broker closes it. `-1`: no limit."
        ),
        "curve_secret_key_file": (
            "The broker's CURVE secret key file, as `maitred keygen` writes it (mode 0600: a "
            "file that group or others can read is refused at start, with the `chmod` to run). "
            "Set: the endpoints of `curve_endpoints` use CURVE (encryption, and only the keys "
            "of `[[transports.mdp.keys]]` get in). Empty: no CURVE. See "
            "[Securing maitred](../howto/operators.md#securing-maitred)."
        ),
        "curve_endpoints": (
            "The endpoints that use CURVE when `curve_secret_key_file` is set. Empty: every "
            "`tcp://` endpoint; `ipc://` endpoints stay plain unless listed (`inproc://` never "
            "uses CURVE)."
        ),
        "keys": (
            "The CURVE client keys accepted and who each is (`[[transports.mdp.keys]]`, below). "
            "A key not listed is refused during the handshake."
        ),
    },
    "transports.mdp.keys": {
        "public_key": "The peer's CURVE public key in Z85, as `maitred keygen` prints it.",
        "identity": (
            "The identity name the `[access]` rules see for peers with this key (clients and "
            "workers alike)."
        ),
        "roles": "Its roles (`role:NAME` in rules).",
    },
    "transports.http": {
        "enabled": _ENABLED,
        "listen": (
            "`HOST:PORT` (port `0`: any free port; the bound one is printed and shown by "
            "`endpoints()`) and/or `unix:/path` (a stale socket file is replaced). "
            "`--http ADDR` replaces the list."
        ),
        "max_body_size": (
            "Largest request body in bytes: a larger one gets 413, refused from "
            "`Content-Length` before the body is read (a chunked body is cut when it passes "
            "the limit)."
        ),
        "request_timeout": (
            "Seconds a REST call may take when it has no deadline header. `0`: the service's "
            "`request_timeout`."
        ),
        "timeout_header": "The request header that carries a call's deadline, in seconds.",
        "identity": (
            "The identity of REST callers and message-switch sessions (an authenticator plugin "
            'may name a switch session from its login token, `{"token": ...}`).'
        ),
        "roles": "The roles of that identity.",
        "switch": "Serve the xapi message-switch protocol on the same listeners.",
        "switch_credit": (
            "Requests a switch session holds at once per persistent queue it transfers from."
        ),
        "max_deliveries": (
            "**Deprecated and ignored** (`0`: not set; a warning is logged otherwise). A "
            "persistent switch queue is a durable service: its messages go to the dead letters "
            "after the service policy's `max_deliveries` "
            "([`[services.*]`](#services-per-service-policies))."
        ),
        "trace_size": "Events kept in the ring buffer behind `GET /trace`. `0`: no trace.",
        "shutdown_tokens": (
            "Login tokens (shell patterns) allowed to `POST /shutdown`; every other session "
            "gets 403."
        ),
        "store": (
            "**Deprecated** alias of [`[store]`](#store) `backend` (empty: not set): used, with "
            "a warning, when neither `[store]` nor the deprecated `[broker]` keys say otherwise."
        ),
        "store_path": (
            "**Deprecated** alias of [`[store]`](#store) `path` (empty: not set), same rule. A "
            "file of the old layout found here is taken into the one store at start and renamed "
            "`*.imported`."
        ),
        "store_sync": (
            "**Deprecated** alias of [`[store]`](#store) `sync` (empty: not set), same rule."
        ),
        "sse_buffer": (
            "Events buffered per SSE subscriber; a subscriber that falls further behind gets "
            "an `error` event and its stream ends."
        ),
        "sse_buffer_bytes": (
            "Bytes buffered per SSE stream: a topic subscription (its stream ends with an "
            "`error` event, as for `sse_buffer`) or a call's partial replies (the buffered "
            "partials are dropped, the stream ends with an `error` event 429 and the request is "
            "cancelled). Counted in `[broker] max_memory`."
        ),
    },
    "transports.ws": {
        "enabled": _ENABLED,
        "listen": (
            "`HOST:PORT` to listen on (`[v6]:PORT` and a `ws://` prefix are accepted; port `0`: "
            "any free port); a list listens on each. `--ws ADDR` replaces it."
        ),
        "tls_cert": (
            "PEM certificate (chain) file. When `tls_cert` and `tls_key` are both set the "
            "listeners speak `wss://`; one without the other is refused."
        ),
        "tls_key": (
            "PEM private key file for `tls_cert`; readable by its owner only (else refused at "
            "start: `chmod 600`)."
        ),
        "keys": (
            "The accepted keys (`[[transports.ws.keys]]`, below). The default is middleman's "
            "development pair, `xyzzy` (trusted) and `plugh` (untrusted): **set your own in "
            "production**; once `keys` is written only those are accepted."
        ),
        "grant_role": "The role that middleman's `EREQ`/`EPUB`/`ESUB` grant permissions to.",
        "max_frame_size": (
            "Largest inbound frame in bytes; a bigger one closes the connection with 1009."
        ),
        "outbox": (
            "Frames queued per connection before the slow-consumer policy applies (see "
            "[slow consumers](ws.md#slow-consumers))."
        ),
        "outbox_bytes": (
            "Bytes (characters of text frames) queued per connection before the slow-consumer "
            "policy applies, whichever of `outbox` and `outbox_bytes` comes first. Counted in "
            "`[broker] max_memory`."
        ),
        "slow_consumer": (
            "When a connection's outbox is full (`outbox` or `outbox_bytes`): `drop` drops event "
            "deliveries (requests, replies and errors are still queued, up to twice the limits, "
            "then the connection is closed); `close` closes the connection at once with 1008."
        ),
        "ping_interval": "Seconds between WebSocket pings. `0`: no pings (and no pong timeout).",
        "ping_timeout": (
            "Seconds to wait for a pong before the connection is closed and its session ends. "
            "`0`: no limit."
        ),
        "handshake_timeout": (
            "Seconds a new connection has to present its key (middleman) or its `hello` (JSON) "
            "before it is closed with 1008."
        ),
        "request_timeout": (
            "Seconds a request from this transport may take. `0`: the service's `request_timeout`."
        ),
        "responder_credit": (
            "Requests a middleman responder (`EREQ`) or a JSON-dialect service holds at once."
        ),
        "close_timeout": (
            "Seconds to flush outboxes and close the connections when the broker stops, and"
            " to wait for a peer's closing handshake. `0`: close at once."
        ),
    },
    "transports.ws.keys": {
        "key": "The key a connection presents (the middleman first frame, the JSON `hello`).",
        "key_file": (
            "Read the key from this file instead (its content without the final line break; "
            "readable by its owner only, else `maitred check` and `serve` refuse it and say "
            "`chmod 600`). "
            "Read again on reload."
        ),
        "key_env": "Read the key from this environment variable instead.",
        "trusted": (
            "Trusted keys may `EREQ`/`EPUB`/`ESUB`/`INT` and do anything the access policy "
            "allows; untrusted ones are restricted identities (only what is granted or "
            "explicitly allowed)."
        ),
        "identity": "The identity name of the connections that use this key.",
        "roles": "Their roles.",
    },
    "transports.ws.tokens": {
        "sha256": (
            "The SHA-256 of the token, in hex (the token itself is never written down; "
            "`maitred token` prints a new token and this line)."
        ),
        "identity": "The identity of the connections that present the token (unrestricted).",
        "roles": "Its roles, for the `[access]` rules.",
    },
}


# -- rendering ---------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    """A default value written the way it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _toml(value.value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple | frozenset | set):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, msgspec.Struct):
        # an empty string is never needed to read a default (e.g. a key's unused key_file)
        items = [(k, v) for k, v in msgspec.structs.asdict(value).items() if v != ""]
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in items) + "}"
    raise TypeError(f"no TOML rendering for {value!r}")


def _type(tp: Any) -> str:
    """A field's type in words."""
    simple = {str: "string", int: "int", float: "float", bool: "bool"}
    if tp in simple:
        return simple[tp]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return ", ".join(f'`"{a}"`' for a in args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return ", ".join(f'`"{m.value}"`' for m in tp)
    if origin in (list, tuple, set, frozenset):
        item = args[0]
        if isinstance(item, type) and issubclass(item, msgspec.Struct):
            return "list of tables"
        if isinstance(item, type) and issubclass(item, enum.Enum):
            return "list of " + _type(item)
        return "list of " + {"string": "strings", "int": "ints", "float": "floats"}[_type(item)]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    raise TypeError(f"no rendering for the type {tp!r}")


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.default is not msgspec.NODEFAULT:
        return f"`{_toml(field.default)}`"
    if field.default_factory is not msgspec.NODEFAULT:
        return f"`{_toml(field.default_factory())}`"
    return "required"


def field_comments(struct: type[msgspec.Struct]) -> dict[str, str]:
    """The ``#:`` comment lines right above each field in the Struct's source."""
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(struct).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        m = re.match(r"([a-z_][a-z0-9_]*)\s*:", text)
        if m and pending:
            out[m.group(1)] = " ".join(pending)
        pending = []
    return out


def _from_comment(text: str) -> str:
    text = text.replace("``", "`")
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def describe(section: str) -> tuple[dict[str, str], list[str]]:
    """The meaning of every field of ``section``, and the fields that have none."""
    struct = SECTIONS[section]
    written = DESCRIPTIONS.get(section, {})
    comments = field_comments(struct)
    out: dict[str, str] = {}
    missing: list[str] = []
    for field in msgspec.structs.fields(struct):
        if field.encode_name in written:
            out[field.encode_name] = written[field.encode_name]
        elif field.name in comments:
            out[field.encode_name] = _from_comment(comments[field.name])
        else:
            missing.append(field.encode_name)
            out[field.encode_name] = ""
    return out, missing


def render(section: str) -> str:
    """The Markdown table of one section."""
    struct = SECTIONS[section]
    meaning, _ = describe(section)
    ranges = RANGES.get(section, {})
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field in msgspec.structs.fields(struct):
        key = field.encode_name
        kind = _type(field.type)
        if key in ranges:
            kind += ", " + ranges[key]
        cells = [f"`{key}`", kind, _default(field), meaning[key]]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def block_pattern(section: str) -> re.Pattern[str]:
    name = re.escape(section)
    return re.compile(
        rf"(<!-- BEGIN GENERATED: {name} -->\n)(.*?)(<!-- END GENERATED: {name} -->)", re.S
    )


def update(text: str) -> str:
    """``text`` (config.md) with every generated block rendered afresh."""
    for section in SECTIONS:
        pattern = block_pattern(section)
        if len(pattern.findall(text)) != 1:
            raise ValueError(f"config.md must hold exactly one block for {section!r}")
        table = render(section)
        text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(3), text)
    return text


def stale(text: str) -> list[str]:
    """The sections whose block in ``text`` differs from the Structs."""
    out = []
    for section in SECTIONS:
        m = block_pattern(section).search(text)
        if m is None or m.group(2) != render(section) + "\n":
            out.append(section)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    missing = {s: describe(s)[1] for s in SECTIONS}
    for section, keys in missing.items():
        for key in keys:
            print(f"gen_config: no description for [{section}] {key}", file=sys.stderr)
    text = CONFIG_MD.read_text(encoding="utf-8")
    if args.check:
        bad = stale(text)
        if bad:
            print(f"{CONFIG_MD.name} is out of date for: {', '.join(bad)}; run: {REGENERATE}")
            return 1
        return 1 if any(missing.values()) else 0
    new = update(text)
    if new != text:
        CONFIG_MD.write_text(new, encoding="utf-8")
        print(f"updated {CONFIG_MD}")
    return 1 if any(missing.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
