"""Raw HTTP/1.1 on a socket (TCP or Unix), for byte-exact checks of the HTTP transport: a
request can be sent now and its response read later (a blocking Transfer on one connection while
the test goes on with another)."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from tests.e2e.helpers import BrokerThread


def short_socket_path(name: str = "sw.sock") -> str:
    """A Unix socket path short enough for sun_path (pytest's tmp_path may be too long)."""
    return str(Path(tempfile.mkdtemp(prefix="mh", dir="/tmp")) / name)


def http_toml(listen: list[str], extra: str = "") -> str:
    """An ``[transports.http]`` table, then a ``[store]`` table with the ``memory`` backend
    unless ``extra`` says something of the store."""
    quoted = ", ".join(f'"{a}"' for a in listen)
    store = "" if "store" in extra else '[store]\nbackend = "memory"\n'
    return f"[transports.http]\nlisten = [{quoted}]\n{extra}\n{store}"


def endpoint_of(broker: BrokerThread, kind: str) -> str:
    for ep in broker.endpoints["http"]:
        if ep.startswith(kind):
            return ep
    raise AssertionError(f"no {kind} endpoint in {broker.endpoints}")


class RawHttp:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        if endpoint.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(endpoint[5:])
        else:
            host, _, port = endpoint.removeprefix("http://").rpartition(":")
            self.sock = socket.create_connection((host, int(port)), timeout)
        self.buf = b""

    def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def read(self) -> tuple[int, dict[str, str], bytes]:
        """(status, headers (lower-case names), body) of the next response."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def do(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        self.send(method, path, body, headers)
        status, _, data = self.read()
        return status, data

    def close(self) -> None:
        self.sock.close()
