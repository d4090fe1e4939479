"""Who a WebSocket peer is: middleman keys, bearer tokens on the upgrade request, or nobody.

A connection proves who it is in one of three ways, looked at in this order:

1. a **bearer token** on the opening handshake: ``Authorization: Bearer <token>`` or, for
   browsers (whose WebSocket API cannot set headers), the query parameter ``access_token``.
   Its SHA-256 is looked up in ``[[transports.ws.tokens]]`` in constant time
   (:class:`~maitred.core.credentials.TokenTable`). A token that is there gives its identity;
   one that is not, or that is malformed, is refused (close 1008 ``bad token``) before any
   session exists;
2. a **key** (``[[transports.ws.keys]]``): middleman's first frame, or the ``key`` of a
   maitred.json ``hello``;
3. **neither**: an empty first frame (middleman) or a ``hello`` without a key: the identity
   ``anonymous`` (restricted) when ``anonymous = true``, else refused (close 1008).

Tokens and keys are secrets: nothing here logs them, and :func:`redacting_logger` keeps
websockets' own DEBUG lines about the handshake from printing them.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.datastructures import Headers

from maitred.core.access import Identity
from maitred.core.credentials import MAX_TOKEN_LENGTH, bearer_token

#: the query parameter a browser puts its token in (``wss://host/?access_token=...``)
QUERY_PARAMETER = "access_token"

#: what a connection with neither a key nor a token is when ``anonymous = true``: restricted,
#: so it may do only what ``[access]`` rules allow the identity ``anonymous`` (or grants)
ANONYMOUS = Identity("anonymous", restricted=True)

#: what a refused peer is told, and what is counted and reported
NO_CREDENTIALS = "no credentials"
BAD_TOKEN = "bad token"
BAD_KEY = "bad key"


def _usable(token: str) -> bool:
    return (
        0 < len(token) <= MAX_TOKEN_LENGTH
        and token.isascii()
        and token.isprintable()
        and " " not in token
    )


def presented_token(headers: Headers, path: str) -> str | None:
    """The bearer token an opening handshake carries: None when it carries none, "" when it
    carries something that cannot be a token (refused, never taken for "no token"): an empty
    or over-long one, control characters or non-ASCII, or more than one (two ``Authorization:
    Bearer`` headers, or a header and the query parameter). An ``Authorization`` header of
    another scheme (e.g. ``Basic``, added by a proxy) is not ours and is ignored."""
    found: list[str] = []
    for header in headers.get_all("Authorization"):
        scheme = header.strip().partition(" ")[0]
        if scheme.lower() == "bearer":
            found.append(bearer_token(header) or "")
    try:
        query = urlsplit(path).query
    except ValueError:  # e.g. an unbalanced "[" in what looks like a host
        query = ""
    if QUERY_PARAMETER in query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == QUERY_PARAMETER:
                found.append(value if _usable(value) else "")
    if not found:
        return None
    if len(found) > 1:
        return ""
    return found[0]


def redact_path(path: str) -> str:
    """``path`` with the value of its ``access_token`` parameter replaced by ``***``."""
    if QUERY_PARAMETER not in path:
        return path
    head, _, query = path.partition("?")
    parts = [
        f"{QUERY_PARAMETER}=***" if part.split("=", 1)[0] == QUERY_PARAMETER else part
        for part in query.split("&")
    ]
    return f"{head}?{'&'.join(parts)}"


class _Redacting(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger, minus secrets: at DEBUG websockets prints each handshake request
    line and header; the ``Authorization`` value and the ``access_token`` parameter become
    ``***``."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if args and isinstance(msg, str) and msg.startswith("< "):
            if msg == "< %s: %s" and len(args) == 2 and str(args[0]).lower() == "authorization":
                args = (args[0], "***")
            elif msg == "< %s %s %s" and len(args) == 3:
                args = (args[0], redact_path(str(args[1])), args[2])
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs


def redacting_logger() -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """The logger the transport gives websockets (the usual ``websockets.server``)."""
    return _Redacting(logging.getLogger("websockets.server"), {})
