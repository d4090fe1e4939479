"""The ``[transports.http]`` settings: listeners, limits, the REST API and the message switch."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Literal

import msgspec

from maitred.core.checks import at_least, finite
from maitred.core.credentials import TokenConfig, token_problems
from maitred.core.durable import StoreHint
from maitred.core.errors import ErrorCode, MaitredError

log = logging.getLogger("maitred.transports.http")


class PeerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[[transports.http.peers]]``: the identity of a peer on a Unix socket listener, by the
    user id the kernel reports for it (``SO_PEERCRED``)."""

    uid: int
    identity: str
    roles: list[str] = msgspec.field(default_factory=list)


class ClientCertConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[[transports.http.clients]]``: the roles of a client certificate (``tls_client_ca``),
    by its subject's common name; ``identity`` empty: the common name itself."""

    cn: str
    identity: str = ""
    roles: list[str] = msgspec.field(default_factory=list)


def _local(addr: str) -> bool:
    """Whether a ``listen`` address is reachable from this host only."""
    if addr.startswith("unix:"):
        return True
    host = addr.rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "::1", "localhost")


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[transports.http]``: REST API, metrics and the message switch."""

    enabled: bool = True
    #: ``HOST:PORT`` (port 0: any free port) and/or ``unix:/path/to/socket``
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8080"])
    #: SO_REUSEPORT on the TCP listeners: several processes (cluster nodes on one machine)
    #: share one port and the kernel spreads the connections among them
    reuse_port: bool = False
    #: largest request body in bytes (larger: 413 before the body is read)
    max_body_size: int = 1 << 20
    #: seconds a REST call may take when the caller sends no deadline header; 0: the service's
    #: ``request_timeout``
    request_timeout: float = 0.0
    #: the request header that carries a call's deadline in seconds
    timeout_header: str = "X-Maitred-Timeout"
    #: the identity of REST callers and switch sessions (unless an authenticator plugin says
    #: otherwise for a switch login token)
    identity: str = "anonymous"
    roles: list[str] = msgspec.field(default_factory=list)
    #: serve the message-switch protocol on the same listeners
    switch: bool = True
    #: requests a switch session holds at once per queue it transfers from
    switch_credit: int = 16
    #: deprecated and ignored (0: not set): a persistent switch queue is a durable service, and
    #: its messages go to the dead letters after the service policy's ``max_deliveries``
    max_deliveries: int = 0
    #: events kept for ``GET /trace`` (0: no trace)
    trace_size: int = 1000
    #: ``POST /shutdown`` needs the shutdown secret (``Authorization: Bearer SECRET``), read
    #: at start from this file (surrounding whitespace stripped); empty: see
    #: ``shutdown_secret_env``. With neither, the switch cannot stop the broker
    shutdown_secret_file: str = ""
    #: the environment variable holding the shutdown secret (instead of a file)
    shutdown_secret_env: str = ""
    #: deprecated narrowing: when not empty, only login tokens matching one of these shell
    #: patterns may shut down, and they too need the secret (a token name is no credential)
    shutdown_tokens: list[str] = msgspec.field(default_factory=list)
    #: messages a switch queue that is not a service (a transient queue) holds; persistent
    #: queues are services and hold their ``[services]`` policy's ``max_queue``
    switch_max_queue: int = 10_000
    #: payload bytes a switch queue holds (a service policy's ``max_queue_bytes`` where it has
    #: one)
    switch_max_queue_bytes: int = 64 << 20
    #: queues the switch holds in all (persistent and transient)
    switch_max_queues: int = 10_000
    #: queues one login token may make (persistent ones count until destroyed)
    switch_max_queues_per_token: int = 1000
    #: messages listed per queue by the switch's diagnostics (``GET /``), the oldest first
    diagnostics_messages: int = 100
    #: deprecated alias of ``[store] backend`` (persistent switch queues are in the broker's
    #: one store); empty: not set
    store: Literal["", "memory", "sqlite"] = ""
    #: deprecated alias of ``[store] path``; empty: not set
    store_path: str = ""
    #: deprecated alias of ``[store] sync``; empty: not set
    store_sync: Literal["", "normal", "full"] = ""
    #: events buffered per SSE subscriber before it is cut off as too slow
    sse_buffer: int = 1000
    #: bytes buffered per SSE stream (a topic subscription, or a call's partial replies)
    #: before it is cut off as too slow: the stream ends with an ``error`` event (429) and a
    #: call is cancelled. The bytes count toward ``[broker] max_memory``
    sse_buffer_bytes: int = 4 << 20
    #: serve the live dashboard at ``/admin/`` ([the dashboard](../howto/dashboard.md)), only
    #: when ``identity`` may call ``mmi.services`` (else 403); what the page shows is what its
    #: WebSocket key may see. ``false``: not served (with ``switch``, the switch's own ``/admin``
    #: page answers there)
    admin: bool = True
    #: seconds a new connection has to send the head (request line and headers) of its first
    #: request; then it is closed (counted ``http.header_timeout``). 0: no limit
    header_timeout: float = 10.0
    #: seconds a request body may take to arrive in full; then 408 and the connection is
    #: closed (counted ``http.body_timeout``). 0: no limit
    body_timeout: float = 30.0
    #: seconds an idle keep-alive connection (or one whose next request head is incomplete) is
    #: kept open. 0: no limit
    idle_timeout: float = 60.0
    #: open connections at once on all listeners; a connection past it gets a 503 and is closed
    #: (counted ``http.connections_refused``). 0: no limit
    max_connections: int = 400
    #: services (and switch queues) listed by name in ``GET /metrics``: the busiest ones by
    #: requests (messages); the others are summed under ``service="(other)"``
    metrics_max_services: int = 100
    #: PEM file of the certificate (chain): with ``tls_key``, every TCP listener speaks HTTPS
    #: (Unix sockets stay plain). Loaded again on reload (SIGHUP) without dropping connections
    tls_cert: str = ""
    #: PEM file of the certificate's private key; it must be readable by its owner only (mode
    #: 0600 or 0400), or the broker refuses to start (and a reload is refused)
    tls_key: str = ""
    #: PEM file of the CAs whose client certificates are accepted: when set, every TLS
    #: connection must present a certificate they signed (mutual TLS), and a request without a
    #: bearer token is its subject's common name (``[[transports.http.clients]]`` gives roles)
    tls_client_ca: str = ""
    #: seconds a new connection on a TLS listener has to complete the TLS handshake
    tls_handshake_timeout: float = 10.0
    #: a request with no credentials (no bearer token, no client certificate, no known peer
    #: uid) gets ``identity`` (true) or 401 (false); "auto": true when every listener is on
    #: 127.0.0.1, ::1, localhost or a Unix socket, else false
    anonymous: bool | Literal["auto"] = "auto"
    #: paths answered without credentials (exact paths)
    public_paths: list[str] = msgspec.field(default_factory=lambda: ["/healthz", "/readyz"])
    #: accepted bearer tokens (``Authorization: Bearer TOKEN``), by their SHA-256
    tokens: list[TokenConfig] = msgspec.field(default_factory=list)
    #: identities of peers on Unix socket listeners, by user id (``SO_PEERCRED``)
    peers: list[PeerConfig] = msgspec.field(default_factory=list)
    #: roles of client certificates, by common name (with ``tls_client_ca``)
    clients: list[ClientCertConfig] = msgspec.field(default_factory=list)
    #: mode of the Unix socket files (octal string, e.g. "0660"); empty: as the umask leaves it
    unix_mode: str = ""
    #: group of the Unix socket files (a name or a number); empty: the broker's group
    unix_group: str = ""

    def anonymous_allowed(self) -> bool:
        """Whether a request without credentials gets ``identity`` (see ``anonymous``)."""
        if self.anonymous != "auto":
            return bool(self.anonymous)
        return all(_local(addr) for addr in self.listen)

    def problems(self) -> list[str]:
        out = []
        if not self.listen:
            out.append("listen: at least one address is needed")
        for addr in self.listen:
            if not addr.startswith("unix:"):
                host, sep, port = addr.rpartition(":")
                if not sep or not host or not port.isdigit():
                    out.append(f"listen: {addr!r} is not HOST:PORT or unix:/path")
        out += at_least(self, 1, "max_body_size", "switch_credit", "sse_buffer")
        out += at_least(self, 1, "switch_max_queue", "switch_max_queue_bytes")
        out += at_least(self, 1, "switch_max_queues", "switch_max_queues_per_token")
        out += at_least(self, 0, "max_deliveries", note="deprecated: 0")
        out += at_least(self, 0, "trace_size", "diagnostics_messages", "max_connections")
        out += at_least(self, 0, "metrics_max_services")
        out += at_least(self, 1024, "sse_buffer_bytes")
        out += finite(self, "request_timeout", "header_timeout", "body_timeout", "idle_timeout")
        if self.shutdown_secret_file and self.shutdown_secret_env:
            out.append("shutdown_secret_file and shutdown_secret_env: give one of them")
        out.extend(self._auth_problems())
        return out

    def _auth_problems(self) -> list[str]:
        out = token_problems(self.tokens, "tokens")
        if bool(self.tls_cert) != bool(self.tls_key):
            out.append("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            out.append("tls_client_ca needs tls_cert and tls_key (client certificates are TLS)")
        out += finite(self, "tls_handshake_timeout", positive=True)
        for path in self.public_paths:
            if not path.startswith("/"):
                out.append(f"public_paths: {path!r} does not start with /")
        if self.unix_mode:
            try:
                mode = int(self.unix_mode, 8)
            except ValueError:
                mode = -1
            if not 0 <= mode <= 0o777:
                out.append(f'unix_mode: {self.unix_mode!r} is not an octal mode like "0660"')
        seen: set[int] = set()
        for i, peer in enumerate(self.peers):
            if peer.uid in seen:
                out.append(f"peers[{i}].uid: {peer.uid} is given twice")
            seen.add(peer.uid)
            if not peer.identity:
                out.append(f"peers[{i}].identity: empty")
        for i, client in enumerate(self.clients):
            if not client.cn:
                out.append(f"clients[{i}].cn: empty")
        return out

    def store_hint(self) -> StoreHint | None:
        """With the switch on, the transport keeps persistent queues in the broker's one store
        (the deprecated ``store`` keys say where, unless ``[store]`` does)."""
        if not self.switch:
            return None
        return StoreHint(
            self.store,
            self.store_path,
            self.store_sync,
            "[transports.http] store, store_path and store_sync",
        )

    def shutdown_secret(self) -> bytes | None:
        """The shutdown secret from ``shutdown_secret_file`` or ``shutdown_secret_env`` (None
        when neither is set); MaitredError when the one given is missing or empty."""
        if self.shutdown_secret_file:
            path = self.shutdown_secret_file
            try:
                raw = Path(path).read_bytes()
                mode = os.stat(path).st_mode
            except OSError as exc:
                raise MaitredError(
                    f"http: cannot read shutdown_secret_file {path}: {exc.strerror or exc}",
                    ErrorCode.BAD_REQUEST,
                ) from None
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("http: shutdown_secret_file %s is readable by others", path)
            where = f"shutdown_secret_file {path}"
        elif self.shutdown_secret_env:
            raw = os.environ.get(self.shutdown_secret_env, "").encode()
            where = f"environment variable {self.shutdown_secret_env}"
        else:
            if self.shutdown_tokens:
                log.warning(
                    "http: shutdown_tokens is set but no shutdown secret: POST /shutdown is"
                    " refused (a token name is no credential; set shutdown_secret_file)"
                )
            return None
        secret = raw.strip()
        if not secret:
            raise MaitredError(
                f"http: the shutdown secret ({where}) is empty", ErrorCode.BAD_REQUEST
            )
        return secret
