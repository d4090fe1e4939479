"""Who is calling over HTTP: bearer tokens, client certificates, Unix socket peer credentials,
and the transport's default identity (``[transports.http] anonymous``).

Each request (except the ``public_paths``) is identified before it is handled, in this order:

1. ``Authorization: Bearer TOKEN`` when the transport has a token table (``[[tokens]]``): the
   token's identity, or 401 ``invalid_token`` when it is unknown or malformed — never the
   default identity. Without a token table the header is not looked at (as before tokens
   existed). ``POST /shutdown`` is the message switch's: its header is the shutdown secret,
   checked by the switch. ``GET /v1/topics/...`` (an SSE subscription: a browser's
   ``EventSource`` cannot send headers) also takes the token as ``?access_token=``.
2. The client certificate's subject common name (``tls_client_ca``: the handshake verified it);
   roles from ``[[clients]]``.
3. The peer's user id on a Unix socket listener (``SO_PEERCRED``), when ``[[peers]]`` names it.
4. The default identity (``identity``, ``roles``) when ``anonymous`` allows it; else 401 with
   ``WWW-Authenticate: Bearer realm="maitred"``.

A refusal opens no session, is counted (``denied.authenticate.http``), published on
``$sys.auth.denied`` (the port's ``report_auth_failure``) and noted as a rejection (DEBUG each, a
WARNING summary); no token or header value is ever logged or echoed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections import Counter
from typing import Any

import msgspec
from aiohttp import web

from maitred.core.access import Identity
from maitred.core.credentials import TokenTable, bearer_token
from maitred.core.errors import ConfigError, ErrorCode
from maitred.core.logs import RejectionLog
from maitred.core.routing.model import Session
from maitred.core.tls import PLAINTEXT_REASONS, name_tls_rejections
from maitred.core.transport import BrokerPort, ReloadPlan
from maitred.transports.http import codec, tls
from maitred.transports.http.config import HttpConfig
from maitred.transports.http.server import IDENTITY
from maitred.transports.http.streams import _RestSink
from maitred.transports.http.tls import common_name

log = logging.getLogger("maitred.transports.http")

#: the keys a reload applies to the running transport (for new requests; the certificate for
#: new connections); any other key that changed waits for a restart
RELOADABLE = ("tls_cert", "tls_key", "tokens", "peers", "clients", "anonymous", "public_paths")

REALM = 'Bearer realm="maitred"'
#: the switch's shutdown: its Authorization header is the shutdown secret
_SHUTDOWN = "/shutdown"
#: the dashboard's page: static, holds no data; served without credentials so that it can ask
#: for a token (its API calls need one)
_PAGE = frozenset({"/admin", "/admin/"})
_PEERCRED = struct.Struct("3i")


def peer_uid(transport: Any) -> int | None:
    """The user id of the process at the other end of a Unix socket connection, or None."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    return int(uid)


class HttpAuth:
    """The transport's authentication (see the module docstring); rebuilt on reload."""

    def __init__(
        self,
        config: HttpConfig,
        port: BrokerPort,
        rejections: RejectionLog,
        default: Identity,
    ) -> None:
        self.port = port
        self.rejections = rejections
        self.default = default
        self.tokens = TokenTable(config.tokens)
        self.anonymous = config.anonymous_allowed()
        self.public = frozenset(config.public_paths)
        self.peers = {p.uid: Identity(p.identity, frozenset(p.roles)) for p in config.peers}
        self.clients = {
            c.cn: Identity(c.identity or c.cn, frozenset(c.roles)) for c in config.clients
        }
        self.mtls = bool(config.tls_client_ca)
        rejections.kinds.setdefault("auth", "HTTP requests refused (no or wrong credentials)")

    def admit(self, request: web.Request) -> web.Response | None:
        """Identify the caller of a request (its :data:`IDENTITY`), or the 401 that refuses it;
        None for a public path (no identity) and for an admitted caller."""
        if request.path not in self.public:
            identity = self.identify(request)
            if isinstance(identity, web.Response):
                return identity
            request[IDENTITY] = identity
        return None

    def identify(self, request: web.Request) -> Identity | web.Response | None:
        """The caller's identity, or the 401 that refuses it (reported); None for the
        dashboard's page fetched without credentials (served, not reported)."""
        if request.path == _SHUTDOWN and request.method == "POST":
            # the switch's: its credential is the shutdown secret (in the Authorization
            # header), and it needs a login on the connection, which was authenticated
            return self.default
        if len(self.tokens):
            header = request.headers.get("Authorization")
            if (
                header is None
                and request.method == "GET"
                and request.path.startswith("/v1/topics/")
            ):
                query = request.query.get("access_token")
                header = None if query is None else f"Bearer {query}"
            if header is not None:
                token = bearer_token(header)
                if token is None:
                    return self._refuse(request, "a malformed Authorization header", True)
                found = self.tokens.identify(token)
                if found is None:
                    return self._refuse(request, "an unknown bearer token", True)
                return found
        transport = request.transport
        if self.mtls and transport is not None:
            cn = common_name(transport.get_extra_info("peercert"))
            if cn:
                return self.clients.get(cn) or Identity(cn)
        if self.peers:
            uid = peer_uid(transport)
            if uid is not None and uid in self.peers:
                return self.peers[uid]
        if self.anonymous:
            return self.default
        if request.path in _PAGE and request.method == "GET":
            return None
        return self._refuse(request, "no credentials", False)

    def _refuse(self, request: web.Request, reason: str, invalid: bool) -> web.Response:
        peer = request.remote or "unix socket"
        self.port.report_auth_failure("http", peer, reason)
        self.rejections.note("auth", peer, f"{reason}: {request.method} {request.path}")
        text = "the bearer token is not valid" if invalid else "credentials are needed"
        challenge = REALM + (', error="invalid_token"' if invalid else "")
        return web.Response(
            status=401,
            body=codec.error_body(ErrorCode.UNAUTHORIZED, text),
            content_type="application/json",
            headers={"WWW-Authenticate": challenge},
        )


class Secured:
    """The HTTP transport's authentication and TLS state (a mixin of
    :class:`~maitred.transports.http.adapter.HttpTransport`, which owns what is named below)."""

    config: HttpConfig
    port: BrokerPort
    stats: Counter[str]
    identity: Identity
    rejections: RejectionLog
    auth: HttpAuth
    _rest: Session
    _sessions: dict[Identity, Session]
    _contexts: list[ssl.SSLContext]
    #: accepted TLS connections whose handshake is not over -> their check
    _handshaking: dict[Any, asyncio.TimerHandle]
    #: failed handshakes not yet matched with a connection that never completed one
    _tls_unclaimed: int
    #: :func:`tls.fingerprint` of the certificate and key the listeners hold
    _tls_loaded: str

    def _session_of(self, request: web.Request) -> Session:
        """The REST session of the request's identity (one per identity, opened when first
        needed; the default identity's is ``_rest``)."""
        identity = request.get(IDENTITY) or self.identity
        if identity == self.identity:
            return self._rest
        session = self._sessions.get(identity)
        if session is None:
            session = self._sessions[identity] = self.port.open_session(
                "http",
                _RestSink(self.port, self.port.clock),
                identity,
                self.port.clock(),
                label=f"http:rest:{identity.name}",
                quiet=True,
            )
        return session

    def _tls_failed(self, listener: str, exc: ssl.SSLError) -> None:
        """A TLS handshake on ``listener`` failed (aiohttp never sees the connection):
        counted, and noted as a rejection (a WARNING summary names the listener)."""
        reason = str(exc.reason or type(exc).__name__)
        kind = "tls_plaintext" if reason in PLAINTEXT_REASONS else "tls_failed"
        self.stats[f"http.{kind}"] += 1
        self._tls_unclaimed += 1
        self.rejections.note(f"{kind}:{listener}", "", f"{reason} ({exc})")
        if self.auth.mtls and reason in tls.CLIENT_CERT_REASONS:
            # no session, like a refused token: counted and published as an authentication
            self.port.report_auth_failure("http", listener, f"client certificate: {reason}")

    def _tls_accepted(self, handler: Any) -> None:
        """A TLS connection was accepted (its handshake begins): checked once the handshake
        must be over (``tls_handshake_timeout``, then asyncio closes it)."""
        delay = self.config.tls_handshake_timeout + 1.0
        loop = asyncio.get_running_loop()
        self._handshaking[handler] = loop.call_later(delay, self._tls_unfinished, handler)

    def _tls_done(self, handler: Any) -> None:
        """The connection's handshake completed (aiohttp got the connection)."""
        timer = self._handshaking.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _tls_unfinished(self, handler: Any) -> None:
        """A TLS connection never completed its handshake: a failure (counted when it failed)
        or one that stalled past ``tls_handshake_timeout`` or went away before the end, counted
        ``http.tls_incomplete``. Failures and connections are matched in number, not one by
        one (the TLS layer does not say which connection failed), so the counts are exact."""
        self._handshaking.pop(handler, None)
        if self._tls_unclaimed:
            self._tls_unclaimed -= 1
            return
        self.stats["http.tls_incomplete"] += 1
        self.rejections.note("slow", "", "TLS handshake not completed in time")

    def _watch_tls(self, listener: str) -> None:
        """Name the rejections of ``listener``'s failed TLS handshakes."""
        name_tls_rejections(
            self.rejections,
            listener,
            "an http:// client on an https:// port?",
            "no client certificate, not TLS, or no TLS version in common? (DEBUG has each)",
        )

    def plan_reload(self, config: HttpConfig) -> ReloadPlan:
        """Tokens, peers, client roles, ``anonymous`` and ``public_paths`` apply to new
        requests; a new certificate and key to new connections (open ones keep theirs).
        Turning TLS on or off, and the other keys, wait for a restart. ConfigError when the
        new certificate or key does not load or the key is readable by others."""
        old = self.config
        changed = [f for f in old.__struct_fields__ if getattr(old, f) != getattr(config, f)]
        applied = [f for f in changed if f in RELOADABLE]
        tls_changed = "tls_cert" in applied or "tls_key" in applied
        if tls_changed and bool(old.tls_cert) != bool(config.tls_cert):
            applied = [f for f in applied if not f.startswith("tls_")]
            tls_changed = False
        restart = [f for f in changed if f not in applied]
        if old.tls_cert and config.tls_cert and not tls_changed:
            # the same paths: a certificate renewed in place (the usual rotation) is new
            # content in the old files
            tls_changed = tls.fingerprint(config.tls_cert, config.tls_key) != self._tls_loaded
            if tls_changed:
                applied.append("tls_cert")
        if tls_changed:
            problem = tls.tls_problem(config.tls_cert, config.tls_key)
            if problem:
                raise ConfigError(problem)
        effective = msgspec.structs.replace(old, **{f: getattr(config, f) for f in applied})

        def apply() -> None:
            self.config = effective
            self.auth = HttpAuth(effective, self.port, self.rejections, self.identity)
            if tls_changed:
                tls.reload_contexts(self._contexts, effective.tls_cert, effective.tls_key)
                self._tls_loaded = tls.fingerprint(effective.tls_cert, effective.tls_key)
            if applied:
                log.info("http: reloaded %s", ", ".join(applied))

        return ReloadPlan(applied, restart, apply)
