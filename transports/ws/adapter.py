"""The WebSocket transport (``[transports.ws]``): middleman's text protocol and maitred's JSON
dialect on one listener (websockets' asyncio server).

A connection that negotiates the subprotocol ``maitred.json`` speaks the JSON dialect
(:mod:`.json_dialect`); any other connection speaks middleman (:mod:`.middleman`). Each
connection is one router session and its own :class:`~maitred.core.routing.model.SessionSink`.

Sinks never block: every outgoing frame goes into the connection's outbox, bounded in frames
(``outbox``) and in bytes (``outbox_bytes``), and one writer task per connection sends them in
order. When the outbox is full, the slow-consumer policy applies: ``drop`` drops event
deliveries (counted; replies, requests and errors are still queued, up to twice the limits,
beyond which the connection is closed) or ``close`` closes the connection at once (code 1008,
"slow consumer"). The bytes queued count toward the router's ``held`` (``[broker]
max_memory``). Inbound frames are handled one at a time, in order, by the connection's reader.
"""

from __future__ import annotations

import asyncio
import http
import logging
import os
import secrets
import ssl
from collections.abc import Sequence
from typing import Any, Literal, cast

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse
from websockets.typing import Subprotocol

from maitred.core.access import Identity
from maitred.core.checks import at_least, finite
from maitred.core.credentials import (
    SecretError,
    TokenConfig,
    TokenTable,
    read_secret,
    secret_file_problem,
    token_problems,
)
from maitred.core.errors import ConfigError, ErrorCode, MaitredError
from maitred.core.logs import RejectionLog
from maitred.core.routing.model import Session
from maitred.core.tls import PLAINTEXT_REASONS, name_tls_rejections, watched_sslobject
from maitred.core.transport import BrokerPort, ReloadPlan
from maitred.transports.ws.auth import redacting_logger
from maitred.transports.ws.conn import CLOSE_GOING_AWAY, Conn, peer_of
from maitred.transports.ws.json_dialect import JsonConn
from maitred.transports.ws.link import WsLink
from maitred.transports.ws.middleman import MmConn

log = logging.getLogger("maitred.transports.ws")

#: the keys a reload applies to the running transport (for new connections; open ones keep
#: their identity); any other key that changed waits for a restart
RELOADABLE = ("keys", "tokens", "anonymous", "grant_role", "tls_cert", "tls_key")

JSON_SUBPROTOCOL = Subprotocol("maitred.json")


class KeyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One accepted key (``[[transports.ws.keys]]``): ``key`` itself, or where to read it:
    ``key_file`` (a file only its owner can read; one line) or ``key_env`` (an environment
    variable). Exactly one of the three."""

    key: str = ""
    key_file: str = ""
    key_env: str = ""
    #: trusted keys may EREQ/EPUB/ESUB/INT and do anything the access policy allows;
    #: untrusted ones are restricted identities (only what is granted or explicitly allowed)
    trusted: bool = False
    identity: str = ""
    roles: list[str] = msgspec.field(default_factory=list)


def _default_keys() -> list[KeyConfig]:
    # middleman's development defaults: change them in production
    return [
        KeyConfig(key="xyzzy", trusted=True, identity="service", roles=["trusted"]),
        KeyConfig(key="plugh", trusted=False, identity="client", roles=["untrusted"]),
    ]


class WsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[transports.ws]``: the WebSocket front end (middleman and JSON dialects)."""

    enabled: bool = True
    #: ``HOST:PORT`` to listen on (port 0: any free port); a list listens on each
    listen: str | list[str] = "127.0.0.1:8764"
    #: SO_REUSEPORT: several processes (cluster nodes on one machine) share one port and the
    #: kernel spreads the connections among them
    reuse_port: bool = False
    #: PEM files: when both are set the listener speaks wss:// (TLS)
    tls_cert: str = ""
    tls_key: str = ""
    #: accepted keys; default: middleman's dev keys "xyzzy" (trusted) and "plugh" (untrusted)
    keys: list[KeyConfig] = msgspec.field(default_factory=_default_keys)
    #: accepted bearer tokens on the opening handshake (``Authorization: Bearer`` or the query
    #: parameter ``access_token``), by their SHA-256 (``maitred token`` makes one)
    tokens: list[TokenConfig] = msgspec.field(default_factory=list)
    #: a connection with neither a key nor a token (an empty key) gets the restricted identity
    #: ``anonymous``; false: it is refused (close 1008 "no credentials")
    anonymous: bool = False
    #: the role that EREQ/EPUB/ESUB grant permissions to
    grant_role: str = "untrusted"
    #: largest inbound frame in bytes (bigger: close 1009)
    max_frame_size: int = 1 << 20
    #: frames queued per connection before the slow-consumer policy applies
    outbox: int = 10_000
    #: bytes (characters of text frames) queued per connection before the slow-consumer policy
    #: applies; they count toward ``[broker] max_memory``
    outbox_bytes: int = 4 << 20
    #: what a full outbox does: ``drop`` drops events (replies and requests still queue, up to
    #: twice the limits, then the connection is closed); ``close`` closes it at once (1008)
    slow_consumer: Literal["drop", "close"] = "drop"
    #: seconds between pings / to wait for a pong (0: no pings)
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: seconds a new connection has to present its key (or hello)
    handshake_timeout: float = 10.0
    #: seconds for a request from this transport; 0: the service's policy
    request_timeout: float = 0.0
    #: how many requests a middleman responder (EREQ) or JSON service holds at once
    responder_credit: int = 1024
    #: seconds to flush outboxes when the broker closes
    close_timeout: float = 2.0
    #: open connections at once on all listeners; past it the opening handshake is answered
    #: 503 (counted ``ws.connections_refused``). 0: no limit
    max_connections: int = 400
    #: most methods one maitred.json ``hello`` may register (more: error 413, closed)
    max_hello_methods: int = 256
    #: largest maitred.json ``hello`` in bytes (larger: error 413, closed)
    max_hello_size: int = 65536

    def listen_addresses(self) -> list[str]:
        return [self.listen] if isinstance(self.listen, str) else list(self.listen)

    def problems(self) -> list[str]:
        out = []
        addrs = self.listen_addresses()
        if not addrs:
            out.append("listen: at least one HOST:PORT is needed")
        for addr in addrs:
            try:
                split_address(addr)
            except ValueError as exc:
                out.append(f"listen: {exc}")
        if bool(self.tls_cert) != bool(self.tls_key):
            out.append("tls_cert and tls_key go together")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                out.append(f"{name}: no such file: {path}")
        if not self.keys and not self.tokens and not self.anonymous:
            out.append("keys: at least one key is needed (or tokens, or anonymous = true)")
        seen: dict[str, int] = {}
        for i, k in enumerate(self.keys):
            given = [name for name in ("key", "key_file", "key_env") if getattr(k, name)]
            if len(given) != 1:
                out.append(f"keys[{i}]: give exactly one of key, key_file, key_env")
            if k.key and k.key in seen:
                out.append(f"keys[{i}]: the key of keys[{seen[k.key]}] twice")
            seen.setdefault(k.key, i)
        out += token_problems(self.tokens)
        out += at_least(self, 64, "max_frame_size", "max_hello_size")
        out += at_least(self, 1, "outbox", "responder_credit")
        out += at_least(self, 1024, "outbox_bytes")
        out += at_least(self, 0, "max_connections", "max_hello_methods")
        out += finite(self, "ping_interval", "ping_timeout", "request_timeout", "close_timeout")
        out += finite(self, "handshake_timeout", positive=True)
        return out


def split_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; ``ws://`` prefix allowed) → (host, port)."""
    for prefix in ("ws://", "wss://"):
        if addr.startswith(prefix):
            addr = addr[len(prefix) :]
    addr = addr.rstrip("/")
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{addr!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def key_value(entry: KeyConfig, where: str) -> str:
    """The key of one ``[[transports.ws.keys]]`` entry: ``key``, else read from ``key_file``
    (only its owner may read it) or ``key_env``. Raises :class:`SecretError` naming ``where``
    (e.g. ``keys[0].key_file``) and the fix."""
    field = "key_file" if entry.key_file else "key_env" if entry.key_env else "key"
    try:
        value = read_secret(
            value=entry.key or None,
            file=entry.key_file or None,
            env=entry.key_env or None,
            what=f"{where}.{field}",
        )
    except (OSError, UnicodeDecodeError) as exc:  # checked, then unreadable or not text
        raise SecretError(f"{where}.{field}: {entry.key_file}: cannot read it ({exc})") from None
    if not value:
        raise SecretError(f"{where}.{field}: the key is empty")
    return value


def resolve_keys(keys: Sequence[KeyConfig]) -> dict[str, KeyConfig]:
    """Each key (its value, read where it is kept) → its entry. Raises :class:`SecretError`."""
    out: dict[str, KeyConfig] = {}
    for i, entry in enumerate(keys):
        value = key_value(entry, f"keys[{i}]")
        if value in out:
            raise SecretError(f"keys[{i}]: the same key as another entry")
        out[value] = entry
    return out


def secret_files(config: WsConfig) -> list[tuple[str, str]]:
    """The files of ``config`` that hold secrets, as (config key, path): the TLS private key
    and each key's ``key_file`` (``maitred check`` and ``serve`` refuse them when anyone but
    their owner can read them)."""
    out = [("tls_key", config.tls_key)] if config.tls_key else []
    out += [(f"keys[{i}].key_file", k.key_file) for i, k in enumerate(config.keys) if k.key_file]
    return out


def _new_cid() -> str:
    # 20 characters like middleman's xid ids (base32hex alphabet), but random
    alphabet = "0123456789abcdefghijklmnopqrstuv"
    return "".join(secrets.choice(alphabet) for _ in range(20))


class WsTransport:
    """The ``ws`` transport (see the module docstring)."""

    name = "ws"

    def __init__(self, config: WsConfig, port: BrokerPort) -> None:
        self.config = config
        self.port = port
        self.broker = port
        self.stats = port.stats
        try:
            self.keys = resolve_keys(config.keys)
        except SecretError as exc:
            raise ConfigError(f"transports.ws.{exc.reason}") from None
        self.tokens = TokenTable(config.tokens)
        self.conns: dict[str, Conn] = {}
        self.by_session: dict[int, Conn] = {}
        self._servers: list[Server] = []
        self._bound: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._closed = False
        #: the TLS context of every listener (None: ws://); a reload loads new PEM files into it
        #: the listeners' TLS contexts (a reload loads a new certificate into them)
        self._contexts: list[ssl.SSLContext] = []
        #: peer-caused rejections: DEBUG each, a WARNING summary every 10 s
        self.rejections = RejectionLog(
            log,
            {
                "protocol": "WebSocket protocol errors",
                "key": "WebSocket connections with a bad key",
                "token": "WebSocket connections with a bad token",
                "anonymous": "WebSocket connections without credentials (anonymous = false)",
                "refused": "WebSocket connections refused (max_connections)",
            },
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def _ssl(self, where: list[str], config: WsConfig | None = None) -> ssl.SSLContext | None:
        """The TLS context of one listener (None: plain ws://). Its failed handshakes are
        reported to :meth:`_tls_failed` with ``where[0]``, the listener's address (filled in
        once it is bound). ``config``: another config's certificate and key (a reload's check)."""
        config = config or self.config
        if not config.tls_cert:
            return None
        problem = secret_file_problem(config.tls_key)
        if problem is not None:
            raise MaitredError(f"ws: tls_key: {problem}", ErrorCode.BAD_REQUEST)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise MaitredError(
                f"ws: cannot load TLS cert/key: {exc}", ErrorCode.BAD_REQUEST
            ) from None
        context.sslobject_class = watched_sslobject(lambda exc: self._tls_failed(where[0], exc))
        return context

    def plan_reload(self, config: WsConfig) -> ReloadPlan:
        """Keys, ``grant_role`` and the TLS certificate and key apply to new connections (the
        certificate is loaded into the listeners' TLS context, so open connections stay);
        turning TLS on or off, the listen addresses and the other keys wait for a restart.
        Raises :class:`ConfigError` when the new certificate and key do not load."""
        old = self.config
        changed = [f for f in old.__struct_fields__ if getattr(old, f) != getattr(config, f)]
        tls = "tls_cert" in changed or "tls_key" in changed
        if tls and bool(old.tls_cert) != bool(config.tls_cert):
            applied = [f for f in changed if f in RELOADABLE and not f.startswith("tls_")]
            restart = [f for f in changed if f not in applied]  # ws:// <-> wss://: new listeners
            tls = False
        else:
            applied = [f for f in changed if f in RELOADABLE]
            restart = [f for f in changed if f not in RELOADABLE]
        if tls:
            try:
                self._ssl([""], config)  # a scratch context: the running ones change in apply
            except MaitredError as exc:
                raise ConfigError(exc.reason) from None
        try:
            keys = resolve_keys(config.keys)  # key files and variables are read again
        except SecretError as exc:
            raise ConfigError(f"transports.ws.{exc.reason}") from None
        if keys != self.keys and "keys" not in applied:
            applied.append("keys")
        effective = msgspec.structs.replace(old, **{f: getattr(config, f) for f in applied})

        def apply() -> None:
            self.config = effective
            self.keys = keys
            self.tokens = TokenTable(effective.tokens)
            for context in self._contexts if tls else ():
                # the same context objects: new handshakes present the new certificate
                try:
                    context.load_cert_chain(effective.tls_cert, effective.tls_key)
                except (OSError, ssl.SSLError) as exc:  # the files changed again since checked
                    log.warning("ws: reload: cannot load the TLS cert/key: %s", exc)
                    break
            if applied:
                log.info("ws: reloaded %s (for new connections)", ", ".join(applied))

        return ReloadPlan(applied, restart, apply)

    def _tls_failed(self, listener: str, exc: ssl.SSLError) -> None:
        """A TLS handshake on ``listener`` failed: asyncio closes the connection before
        websockets sees it, so this is the only trace of it. Counted, logged as a rejection."""
        reason = str(exc.reason or type(exc).__name__)
        kind = "tls_plaintext" if reason in PLAINTEXT_REASONS else "tls_failed"
        self.stats[f"ws.{kind}"] += 1
        self.rejections.note(f"{kind}:{listener}", "", f"{reason} ({exc})")

    def _watch_tls(self, listener: str) -> None:
        """Name the rejections of ``listener``'s failed TLS handshakes."""
        name_tls_rejections(
            self.rejections,
            listener,
            "a ws:// client on a wss:// port?",
            "not TLS, or no TLS version or cipher in common? (each reason is logged at DEBUG)",
        )

    async def start(self) -> None:
        cfg = self.config
        scheme = "wss" if cfg.tls_cert else "ws"
        ping = cfg.ping_interval or None
        for addr in cfg.listen_addresses():
            host, port = split_address(addr)
            where = [addr]
            context = self._ssl(where)
            if context is not None:
                self._contexts.append(context)
            try:
                server = await serve(
                    self._handler,
                    host,
                    port,
                    ssl=context,
                    select_subprotocol=_select_subprotocol,
                    max_size=cfg.max_frame_size,
                    ping_interval=ping,
                    ping_timeout=(cfg.ping_timeout or None) if ping else None,
                    close_timeout=cfg.close_timeout,  # 0: do not wait for the peer's close frame
                    compression=None,
                    # the opening handshake (a silent TCP connection) is bounded as the key is
                    open_timeout=cfg.handshake_timeout,
                    process_request=self._admit,
                    reuse_port=cfg.reuse_port or None,
                    logger=redacting_logger(),  # its DEBUG lines would print tokens
                    # messages go to the dialect as they are read (see .link)
                    create_connection=WsLink,
                )
            except OSError as exc:
                await self.close()
                raise MaitredError(
                    f"ws: cannot listen on {addr}: {exc.strerror}", ErrorCode.BAD_REQUEST
                ) from None
            self._servers.append(server)
            for n, sock in enumerate(server.sockets):
                h, p = sock.getsockname()[:2]
                bound = f"{f'[{h}]' if ':' in h else h}:{p}"
                self._bound.append(f"{scheme}://{bound}")
                if n == 0 and context is not None:
                    where[0] = bound
                    self._watch_tls(bound)

    def endpoints(self) -> list[str]:
        return list(self._bound)

    async def stop_accepting(self) -> None:
        self._accepting = False
        for server in self._servers:
            server.close(close_connections=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        for conn in list(self.conns.values()):
            conn.close(CLOSE_GOING_AWAY, "broker shutting down")
        for server in self._servers:
            server.close(close_connections=False)
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.close_timeout + 2)
            for task in pending:
                task.cancel()
        for server in self._servers:
            server.close(close_connections=True)
            await server.wait_closed()
        self._servers.clear()
        self.rejections.close()

    # -- connections --------------------------------------------------------------------------

    def new_cid(self) -> str:
        while True:
            cid = _new_cid()
            if cid not in self.conns:
                return cid

    def register(self, conn: Conn) -> None:
        self.conns[conn.cid] = conn
        if conn.session is not None:
            self.by_session[conn.session.id] = conn

    def unregister(self, conn: Conn) -> None:
        if self.conns.get(conn.cid) is conn:
            del self.conns[conn.cid]
        if conn.session is not None and self.by_session.get(conn.session.id) is conn:
            del self.by_session[conn.session.id]

    def cid_of(self, session: Session | None) -> str:
        """A session's connection id (its label when it is not a WebSocket connection)."""
        if session is None:
            return ""
        conn = self.by_session.get(session.id)
        return conn.cid if conn is not None else session.label

    def uid_of(self, session: Session | None) -> str:
        if session is None:
            return ""
        conn = self.by_session.get(session.id)
        return conn.uid if conn is not None else ""

    def identify_token(self, token: str, dialect: str) -> Identity | None:
        """The identity of a bearer ``token`` (the token table, then authenticator plugins,
        which see ``{"token": ..., "dialect": ...}``), or None: refuse it. "" is never one."""
        if not token:
            return None
        default = self.tokens.identify(token)
        return self.port.authenticate("ws", {"token": token, "dialect": dialect}, default)

    def _admit(self, ws: ServerConnection, request: HttpRequest) -> HttpResponse | None:
        """The opening handshake of a connection past ``max_connections`` is answered 503."""
        cap = self.config.max_connections
        if cap and len(self._tasks) >= cap:
            self.stats["ws.connections_refused"] += 1
            self.rejections.note("refused", peer_of(ws), f"{len(self._tasks)} open")
            response = ws.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            response.headers["Retry-After"] = "1"
            return response
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        if not self._accepting:
            await ws.close(CLOSE_GOING_AWAY, "broker shutting down")
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.stats["ws.connections"] += 1
        try:
            link = cast(WsLink, ws)  # serve(create_connection=WsLink) made it
            json = ws.subprotocol == JSON_SUBPROTOCOL
            conn: Conn = JsonConn(self, link) if json else MmConn(self, link)
            await conn.run()
        finally:
            if task is not None:
                self._tasks.discard(task)


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    """``maitred.json`` when offered; otherwise no subprotocol (the middleman dialect)."""
    return JSON_SUBPROTOCOL if JSON_SUBPROTOCOL in subprotocols else None


def cli_addresses(addresses: Sequence[str]) -> dict[str, Any]:
    """``--ws HOST:PORT`` (repeatable)."""
    return {"listen": list(addresses)}
