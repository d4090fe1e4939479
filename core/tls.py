"""TLS pieces every TLS listener shares (the HTTP transport's HTTPS, the WebSocket transport's
``wss://``): a handshake that fails must leave a trace, since asyncio (and uvloop) close such a
connection before the server's protocol sees it."""

from __future__ import annotations

import ssl
from collections.abc import Callable

from maitred.core.logs import RejectionLog

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


def name_tls_rejections(
    rejections: RejectionLog, listener: str, plaintext_hint: str, failed_hint: str
) -> None:
    """Name, in ``rejections``' WARNING summaries, the two kinds of failed handshakes of
    ``listener``: ``tls_plaintext:LISTENER`` (a plain-text client) and ``tls_failed:LISTENER``."""
    where = f"on the TLS listener {listener}"
    rejections.kinds[f"tls_plaintext:{listener}"] = f"plain-text (not TLS) connections {where}"
    rejections.hints[f"tls_plaintext:{listener}"] = plaintext_hint
    rejections.kinds[f"tls_failed:{listener}"] = f"failed TLS handshakes {where}"
    rejections.hints[f"tls_failed:{listener}"] = failed_hint
