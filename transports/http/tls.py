"""HTTPS on the HTTP transport's TCP listeners (``tls_cert``, ``tls_key``, ``tls_client_ca``).

One :class:`ssl.SSLContext` per listener, made by :func:`server_context`; a reload loads the new
certificate into the same context objects (:func:`reload_contexts`), so open connections keep
theirs and new handshakes present the new one. The TLS handshake is bounded by
``tls_handshake_timeout`` (:class:`TlsSite`: asyncio's ``ssl_handshake_timeout``, which aiohttp's
own TCP site does not pass on). A handshake that fails is reported to the transport (counted,
logged as a rejection): a plain ``http://`` client on an HTTPS port is told apart by OpenSSL's
reason (``HTTP_REQUEST``). The same scheme as the WebSocket transport's ``wss://``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from maitred.core.credentials import secret_file_problem
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.tls import watched_sslobject

log = logging.getLogger("maitred.transports.http")

#: OpenSSL's reasons for a client certificate refused (``tls_client_ca``): an authentication
#: failure, reported as such
CLIENT_CERT_REASONS = frozenset(
    {
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "CERTIFICATE_VERIFY_FAILED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "NO_CERTIFICATE_RETURNED",
    }
)


def tls_problem(cert: str, key: str, client_ca: str = "") -> str | None:
    """Why these files cannot make a server context (None when they can): the key must be a
    secret file (its owner's only), and the PEM files must load."""
    problem = secret_file_problem(key)
    if problem:
        return f"tls_key {problem}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load tls_cert {cert} and tls_key {key}: {exc}"
    if client_ca:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(client_ca)
        except (OSError, ssl.SSLError) as exc:
            return f"cannot load tls_client_ca {client_ca}: {exc}"
    return None


def server_context(
    cert: str, key: str, client_ca: str, on_failure: Callable[[ssl.SSLError], None]
) -> ssl.SSLContext:
    """The TLS context of one listener; MaitredError naming the file and the fix when the
    key is readable by others or a file does not load."""
    problem = tls_problem(cert, key, client_ca)
    if problem:
        raise MaitredError(f"http: {problem}", ErrorCode.BAD_REQUEST)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.sslobject_class = watched_sslobject(on_failure)
    return context


def reload_contexts(contexts: Iterable[ssl.SSLContext], cert: str, key: str) -> None:
    """Load a new certificate and key into the running contexts (checked before by
    :func:`tls_problem`; a file that changed again since is logged and left)."""
    for context in contexts:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            log.warning("http: reload: cannot load the TLS cert/key: %s", exc)
            return


def fingerprint(cert: str, key: str) -> str:
    """A digest of the certificate and key files' contents ("" when one cannot be read): a
    reload with the same paths loads them again only when it changed."""
    digest = hashlib.sha256()
    try:
        for path in (cert, key):
            digest.update(Path(path).read_bytes())
    except OSError:
        return ""
    return digest.hexdigest()


def common_name(peercert: object) -> str:
    """The subject's common name of a verified peer certificate (``getpeercert()``'s form),
    or "" when it has none."""
    if not isinstance(peercert, dict):
        return ""
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    return ""


class TlsSite(web.TCPSite):
    """aiohttp's TCP site, with the TLS handshake bounded in time; ``on_accept`` is told of
    each connection's handler as the connection is accepted (before the handshake)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
        on_accept: Callable[[Any], None],
        reuse_port: bool = False,
    ) -> None:
        super().__init__(
            runner,
            host,
            port,
            ssl_context=ssl_context,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self._handshake_timeout = handshake_timeout
        self._on_accept = on_accept

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None

        def accepted() -> Any:  # the connection's handler, before its TLS handshake
            handler = server()
            self._on_accept(handler)
            return handler

        self._server = await asyncio.get_running_loop().create_server(
            accepted,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout,
        )
