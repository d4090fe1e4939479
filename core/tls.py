"""TLS pieces every TLS listener shares (the HTTP transport's HTTPS, the WebSocket transport's
``wss://``): a handshake that fails must leave a trace, since asyncio (and uvloop) close such a
connection before the server's protocol sees it."""

from __future__ import annotations

import ssl
from collections.abc import Callable

#: OpenSSL's reasons for a handshake that got a plain HTTP request (an ``http://`` or ``ws://``
#: client on a TLS port)
PLAINTEXT_REASONS = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"})


def watched_sslobject(on_failure: Callable[[ssl.SSLError], None]) -> type[ssl.SSLObject]:
    """An :class:`ssl.SSLObject` whose failed handshakes are reported to ``on_failure``
    (asyncio's TLS layer, and uvloop's, make theirs with the context's ``sslobject_class``)."""

    class WatchedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # more bytes to come: not a failure
            except ssl.SSLError as exc:
                on_failure(exc)
                raise

    return WatchedSSLObject
