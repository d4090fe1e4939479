"""The aiohttp side of the HTTP transport: error responses, the connection-limit refusal, and
the server logger that turns a peer's malformed request into a counted rejection."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import re
import stat
import sys
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from maitred.core.access import Identity
from maitred.core.errors import ErrorCode, MaitredError, PeerError
from maitred.transports.http import codec

if TYPE_CHECKING:
    from maitred.transports.http.adapter import HttpTransport

log = logging.getLogger("maitred.transports.http")

#: a request's caller, set by the transport's authentication (absent on public paths; None:
#: no credentials, for the dashboard's page only)
IDENTITY: web.RequestKey[Identity | None] = web.RequestKey("maitred.identity")


def _error(code: ErrorCode, reason: str) -> web.Response:
    return web.Response(
        status=codec.status_for(code),
        body=codec.error_body(code, reason),
        content_type="application/json",
    )


#: idle_timeout = 0 ("no limit") as given to aiohttp, for which 0 would mean "close at once"
_NO_LIMIT = 365 * 86400.0

#: seconds a connection past ``max_connections`` has to send a request head (answered 503)
#: before it is sent the 503 and closed anyway
REFUSE_GRACE = 1.0

#: what a connection past ``max_connections`` receives before it is closed
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s"
)


def _busy_response() -> bytes:
    body = codec.error_body(ErrorCode.NO_WORKER, "too many connections")
    return _BUSY % (len(body), body)


#: what marks a parser's message as quoting a credential (a header, a query parameter)
_CREDENTIAL = re.compile(r"authorization|bearer|access_token|basic ", re.I)


def redact(message: str) -> str:
    """aiohttp's message for a malformed request, without the bytes it quotes when they may
    hold a credential (an Authorization header, an ``access_token`` query parameter)."""
    if not _CREDENTIAL.search(message):
        return message
    quoted = min((i for i in (message.find("b'"), message.find('b"')) if i >= 0), default=-1)
    cut = message[:quoted] if quoted >= 0 else message
    return cut + "[the quoted bytes may hold a credential: not logged]"


class _ServerLog(logging.Logger):
    """The logger given to aiohttp's connection handlers. aiohttp logs each request it cannot
    parse (a peer's fault) at ERROR with a traceback; here such a request is a counted
    rejection (``http.malformed``) at DEBUG with a rate-limited WARNING summary. Anything
    else (a bug) goes on to ``maitred.transports.http`` as aiohttp logged it."""

    def __init__(self, transport: HttpTransport) -> None:
        super().__init__("maitred.transports.http.server")
        self.parent = log
        self._transport = transport

    def _peer_fault(self, args: tuple[object, ...], exc_info: Any) -> bool:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if not isinstance(exc, HttpProcessingError):
            return False
        peer = str(args[0]) if args else "?"
        self._transport.stats["http.malformed"] += 1
        self._transport.rejections.note("malformed", peer, redact(" ".join(str(exc).split())))
        return True

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if not self._peer_fault(args, exc_info):
            super().exception(msg, *args, exc_info=exc_info, **kw)

    def debug(self, msg: object, *args: object, exc_info: Any = None, **kw: Any) -> None:
        if exc_info is None or not self._peer_fault(args, exc_info):
            super().debug(msg, *args, exc_info=exc_info, **kw)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=codec.encode_json(value), content_type="application/json"
    )


def _plain(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body)


class _TooLarge(PeerError):
    code = ErrorCode.TOO_LARGE


def _peer(transport: asyncio.BaseTransport) -> str:
    name = transport.get_extra_info("peername")
    if isinstance(name, tuple) and name:
        return str(name[0])
    return str(name) if name else "unix socket"


def _remove_stale_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def set_socket_permissions(path: str, mode: str, group: str) -> None:
    """Give a Unix socket file the operator's mode (octal string, e.g. "0660") and group (a
    name or a number); MaitredError when the group is unknown or the change is not allowed."""
    try:
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            os.chown(path, -1, gid)
        if mode:
            os.chmod(path, int(mode, 8))
    except KeyError:
        raise MaitredError(
            f"http: unix_group {group!r}: no such group", ErrorCode.BAD_REQUEST
        ) from None
    except OSError as exc:
        raise MaitredError(
            f"http: cannot set the mode or group of {path}: {exc.strerror or exc}",
            ErrorCode.BAD_REQUEST,
        ) from None
