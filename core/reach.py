"""Is a broker there? A quick connect before a CLI verb waits on it.

ZeroMQ connects in the background and a REST call would wait out its timeout before it says
anything useful; a plain socket connect to the broker's address answers within a second.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from maitred.core.errors import ErrorCode, MaitredError

HINT = "is maitred running? start it with `maitred serve`"

#: how long the probe waits for a TCP handshake (seconds)
PROBE_TIMEOUT = 1.0


class Unreachable(MaitredError):
    """Nothing answers at the broker's address (refused, no route, no such socket)."""

    code = ErrorCode.NO_WORKER

    def __init__(self, url: str, why: str, hint: str = HINT) -> None:
        super().__init__(f"cannot reach the broker at {url}: {why}; {hint}")
        self.url = url

    def __str__(self) -> str:
        return self.reason


def address_of(url: str) -> tuple[str, str | tuple[str, int]] | None:
    """``("tcp", (host, port))`` or ``("unix", path)`` for a broker URL; None when the scheme is
    not one this module knows (a plugin's own; then nothing is probed)."""
    if url.startswith("unix:"):
        return "unix", url[5:]
    if url.startswith("ipc://"):
        return "unix", url[6:]
    default_ports = {"tcp": None, "http": 80, "https": 443, "ws": 80, "wss": 443}
    parts = urlsplit(url)
    if parts.scheme not in default_ports:
        return None
    try:
        port = parts.port or default_ports[parts.scheme]
    except ValueError as exc:
        raise Unreachable(url, f"bad port ({exc})", "give HOST:PORT with a port 1-65535") from None
    host = parts.hostname
    if not host or port is None:
        raise Unreachable(url, "no host:port", "write e.g. tcp://127.0.0.1:5555") from None
    if host == "*":
        host = "127.0.0.1"
    return "tcp", (host, port)


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise :class:`Unreachable` when nothing accepts a connection at ``url``'s address."""
    if url.startswith("inproc://"):
        raise Unreachable(
            url,
            "inproc:// reaches only a broker in the same process",
            "give the broker's tcp://, ipc://, http://, ws:// or unix: address",
        )
    where = address_of(url)
    if where is None:
        return
    kind, addr = where
    try:
        if kind == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(addr))
        else:
            with socket.create_connection(addr, timeout=timeout):  # type: ignore[arg-type]
                pass
    except TimeoutError:
        raise Unreachable(url, f"no answer within {timeout:g} s") from None
    except socket.gaierror as exc:
        raise Unreachable(url, f"unknown host ({exc.strerror})", "check the host name") from None
    except OSError as exc:
        raise Unreachable(url, exc.strerror or str(exc)) from None
