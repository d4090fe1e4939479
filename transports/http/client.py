"""Python clients for the HTTP transport.

- :class:`RestClient` (blocking, stdlib ``http.client``) and :class:`AsyncRestClient` (aiohttp)
  for the REST API: ``call`` returns the final reply's frames; errors raise
  :class:`~maitred.core.errors.MaitredError` with the code from the JSON error body.
- :class:`SwitchClient` (blocking) for the message-switch protocol: login, queues, send,
  transfer, ack, list, diagnostics, trace, and the RPC pattern (``rpc``, ``serve``).

A broker URL is ``http://HOST:PORT``, ``https://HOST:PORT`` or ``unix:/path/to/socket``.
Credentials: a bearer token (``token=``, default: the environment variable ``MAITRED_TOKEN``),
sent as ``Authorization: Bearer`` on every request, and for HTTPS the CA file that signed the
broker's certificate (``cacert=``, default ``MAITRED_CACERT``; without either, the system's
CAs).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self
from urllib.parse import quote

from maitred.core.errors import ErrorCode, PeerError
from maitred.core.transport import FrameHandler
from maitred.transports.http import codec


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def credentials(token: str | None, cacert: str | None) -> tuple[str | None, str | None]:
    """The bearer token and CA file given, else from ``MAITRED_TOKEN`` / ``MAITRED_CACERT``."""
    token = token if token is not None else os.environ.get("MAITRED_TOKEN") or None
    cacert = cacert if cacert is not None else os.environ.get("MAITRED_CACERT") or None
    return token, cacert


def tls_context(cacert: str | None) -> ssl.SSLContext:
    """A client TLS context that verifies the broker against ``cacert`` (or the system's CAs)."""
    return ssl.create_default_context(cafile=cacert)


def connection(
    url: str, timeout: float, token: str | None = None, cacert: str | None = None
) -> http.client.HTTPConnection:
    """A keep-alive connection to ``http://HOST:PORT``, ``https://HOST:PORT`` or
    ``unix:/path``; with ``token``, every request carries it (unless it sets its own
    Authorization header)."""
    conn: http.client.HTTPConnection
    if url.startswith("unix:"):
        conn = _UnixConnection(url[5:], timeout)
    elif url.startswith("http://"):
        conn = http.client.HTTPConnection(url[7:].split("/", 1)[0], timeout=timeout)
    elif url.startswith("https://"):
        conn = http.client.HTTPSConnection(
            url[8:].split("/", 1)[0], timeout=timeout, context=tls_context(cacert)
        )
    else:
        raise ValueError(f"not an http://, https:// or unix: URL: {url!r}")
    if token:
        send = conn.request
        bearer = f"Bearer {token}"

        def request(
            method: str, path: str, body: Any = None, headers: Any = None, **kw: Any
        ) -> None:
            merged = {"Authorization": bearer, **(headers or {})}
            send(method, path, body=body, headers=merged, **kw)

        conn.request = request  # type: ignore[method-assign,assignment]
    return conn


def _seg(name: str) -> str:
    return quote(name, safe="")


class _Client:
    """What the REST clients have: the broker's URL, a timeout, the bearer token and CA file
    (given, else from the environment: :func:`credentials`)."""

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        *,
        token: str | None = None,
        cacert: str | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.token, self.cacert = credentials(token, cacert)
        self._open()

    def _open(self) -> None:
        """What a client sets up once its URL and credentials are known (nothing: a blocking
        client connects on its first call)."""


class _Closing(ABC):
    """A blocking client that ``with client:`` closes at the end."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the client's connection."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RestClient(_Client, _Closing):
    """Blocking REST client (one keep-alive connection; not thread-safe)."""

    _conn: http.client.HTTPConnection | None = None

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = connection(self.url, timeout, self.token, self.cacert)
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
                self.close()
                if attempt:
                    raise
            except TimeoutError:
                self.close()
                raise
        raise AssertionError("unreachable")

    def call(self, service: str, *frames: bytes, timeout: float | None = None) -> list[bytes]:
        """Call ``service`` with ``frames``; the final reply's frames."""
        t = self.timeout if timeout is None else timeout
        headers = {
            "X-Maitred-Timeout": repr(float(t)),
            "Accept": "application/json",
        }
        if len(frames) == 1:
            body = frames[0]
            headers["Content-Type"] = "application/octet-stream"
        else:
            body = codec.frames_json_body(frames)
            headers["Content-Type"] = "application/json"
        status, data = self._request("POST", f"/v1/services/{_seg(service)}", body, headers, t + 5)
        if status != 200:
            err = codec.error_from_body(status, data)
            if err.code == ErrorCode.TIMEOUT:
                raise TimeoutError(err.reason)
            raise err
        return codec.parse_frames_json(data)

    def get_json(self, path: str) -> Any:
        status, data = self._request("GET", path, None, {}, self.timeout)
        if status != 200:
            raise codec.error_from_body(status, data)
        return json.loads(data)

    def services(self) -> list[dict[str, Any]]:
        value: list[dict[str, Any]] = self.get_json("/v1/services")
        return value

    def publish(self, topic: str, body: bytes) -> int:
        status, data = self._request("POST", f"/v1/topics/{_seg(topic)}", body, {}, self.timeout)
        if status != 200:
            raise codec.error_from_body(status, data)
        return int(json.loads(data)["delivered"])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class AsyncRestClient(_Client):
    """asyncio REST client on an aiohttp ClientSession (TCP, TLS or Unix socket)."""

    def _open(self) -> None:
        import aiohttp

        url, token, cacert = self.url, self.token, self.cacert
        if url.startswith("unix:"):
            self._base = "http://localhost"
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=url[5:])
        else:
            self._base = url.rstrip("/")
            tls = tls_context(cacert) if url.startswith("https://") else None
            connector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._session = aiohttp.ClientSession(connector=connector, headers=headers)

    async def call(self, service: str, *frames: bytes, timeout: float | None = None) -> list[bytes]:
        import aiohttp

        t = self.timeout if timeout is None else timeout
        headers = {"X-Maitred-Timeout": repr(float(t)), "Accept": "application/json"}
        if len(frames) == 1:
            body = frames[0]
        else:
            body = codec.frames_json_body(frames)
            headers["Content-Type"] = "application/json"
        async with self._session.post(
            f"{self._base}/v1/services/{_seg(service)}",
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=t + 5),
        ) as resp:
            data = await resp.read()
            if resp.status != 200:
                err = codec.error_from_body(resp.status, data)
                if err.code == ErrorCode.TIMEOUT:
                    raise TimeoutError(err.reason)
                raise err
            return codec.parse_frames_json(data)

    async def stream(
        self, service: str, *frames: bytes, timeout: float | None = None
    ) -> list[tuple[str, list[bytes]]]:
        """Call with SSE: every (event, frames) received, partials then the final."""
        t = self.timeout if timeout is None else timeout
        headers = {"X-Maitred-Timeout": repr(float(t)), "Accept": "text/event-stream"}
        body = frames[0] if len(frames) == 1 else codec.frames_json_body(frames)
        if len(frames) != 1:
            headers["Content-Type"] = "application/json"
        async with self._session.post(
            f"{self._base}/v1/services/{_seg(service)}", data=body, headers=headers
        ) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise codec.error_from_body(resp.status, data)
        out: list[tuple[str, list[bytes]]] = []
        for event, payload in codec.parse_sse(data):
            if event == "error":
                raise codec.error_from_body(500, payload)
            out.append((event, codec.parse_frames_json(payload)))
        return out

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> AsyncRestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SwitchError(PeerError):
    """The switch answered something other than 200; ``code`` is the status when it is an
    :class:`ErrorCode` (else 500)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"{status}: {body.decode('utf-8', 'replace')}", ErrorCode.of(status))
        self.status = status
        self.body = body


class SwitchClient(_Closing):
    """Blocking message-switch client: two connections logged in with the same token, one
    for Transfer (which blocks) and one for everything else, like the real clients."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        bearer: str | None = None,
        cacert: str | None = None,
    ) -> None:
        self.url = url
        #: the switch's login token (a name, not a credential)
        self.token = token or f"maitred:{os.getpid()}"
        self.timeout = timeout
        bearer, cacert = credentials(bearer, cacert)
        self._main = connection(url, timeout, bearer, cacert)
        self._poll = connection(url, timeout, bearer, cacert)
        try:
            for conn in (self._main, self._poll):
                self._do(conn, "GET", f"/login/{_seg(self.token)}")
        except BaseException:
            self.close()
            raise

    def _do(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        if timeout is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise SwitchError(resp.status, data)
        return data

    def get(self, path: str) -> bytes:
        return self._do(self._main, "GET", path)

    def create(self, queue: str, persistent: bool = True) -> str:
        kind = "persistent" if persistent else "transient"
        return self.get(f"/{kind}/{_seg(queue)}").decode()

    def destroy(self, queue: str) -> None:
        self.get(f"/destroy/{_seg(queue)}")

    def send(self, queue: str, reply_to: str, payload: bytes) -> tuple[str, int] | None:
        ids = json.loads(
            self._do(self._main, "POST", f"/request/{_seg(queue)}/{_seg(reply_to)}", payload)
        )
        return (ids[0][0], ids[0][1]) if ids else None

    def respond(self, reply_to: str, queue: str, n: int, payload: bytes) -> None:
        self._do(self._main, "POST", f"/response/{_seg(reply_to)}/{_seg(queue)}/{n}", payload)

    def transfer(
        self, queues: Sequence[str], start: int | None, timeout: float
    ) -> tuple[list[tuple[tuple[str, int], bytes, list[Any]]], int]:
        req: dict[str, Any] = {"timeout": float(timeout), "queues": list(queues)}
        if start is not None:
            req["from"] = str(start)
        data = json.loads(
            self._do(
                self._poll, "POST", "/transfer", json.dumps(req).encode(), timeout=timeout + 10
            )
        )
        msgs = [
            ((q, n), codec.payload_bytes(m["payload"]), m["kind"]) for (q, n), m in data["messages"]
        ]
        return msgs, int(data["next"])

    def ack(self, queue: str, n: int) -> None:
        self.get(f"/ack/{_seg(queue)}/{n}")

    def list_queues(self, prefix: str = "", alive: bool = False) -> list[str]:
        path = f"/list/alive/{_seg(prefix)}" if alive else f"/list/{_seg(prefix)}"
        names: list[str] = json.loads(self.get(path))
        return names

    def diagnostics(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.get("/"))
        return value

    def trace(self, start: int = -1, timeout: float = 5.0) -> list[tuple[int, dict[str, Any]]]:
        data = json.loads(
            self._do(self._main, "GET", f"/trace/{start}/{timeout}", timeout=timeout + 10)
        )
        return [(i, e) for i, e in data["events"]]

    def shutdown(self, secret: str | None = None) -> None:
        """POST /shutdown with the shutdown secret (``Authorization: Bearer``)."""
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._do(self._main, "POST", "/shutdown", b"", headers=headers)

    def rpc(self, queue: str, payload: bytes, timeout: float = 30.0) -> bytes:
        """The switch's RPC pattern (docs/reference/wire.md): a transient reply queue, send, wait
        for the Response."""
        reply_q = self.create(self.token, persistent=False)
        self.create(queue, persistent=True)
        sent = self.send(queue, reply_q, payload)
        if sent is None:
            raise SwitchError(404, f"queue {queue} does not exist".encode())
        deadline = time.monotonic() + timeout
        start: int | None = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no response from {queue} within {timeout}s")
            msgs, start = self.transfer([reply_q], start, min(left, 30.0))
            for (q, n), body, kind in msgs:
                if str(kind[0]).lower() == "response" and list(kind[1]) == list(sent):
                    self.ack(q, n)
                    return body

    def serve(
        self,
        queue: str,
        handler: Callable[[bytes], bytes],
        *,
        max_requests: int | None = None,
        poll: float = 5.0,
    ) -> int:
        """Serve ``queue``: each Request's payload → ``handler`` → Response, then Ack."""
        self.create(queue, persistent=True)
        served = 0
        start: int | None = None
        while max_requests is None or served < max_requests:
            msgs, start = self.transfer([queue], start, poll)
            for (q, n), body, kind in reversed(msgs):  # oldest first
                if str(kind[0]).lower() == "request":
                    self.respond(str(kind[1]), q, n, handler(body))
                self.ack(q, n)
                served += 1
        return served

    def close(self) -> None:
        self._main.close()
        self._poll.close()


class HttpCliClient(_Client, _Closing):
    """The blocking client behind ``maitred call/worker/services -b http://... | unix:...``:
    calls go through the REST API, ``worker`` serves through the message switch."""

    def __init__(
        self, url: str, timeout: float, *, token: str | None = None, cacert: str | None = None
    ) -> None:
        super().__init__(url, timeout, token=token, cacert=cacert)
        self._rest = RestClient(url, timeout, token=self.token, cacert=self.cacert)

    def request(self, service: str, body: Sequence[bytes], timeout: float) -> list[bytes]:
        return self._rest.call(service, *(body or [b""]), timeout=timeout)

    def publish(self, topic: str, body: bytes) -> int:
        return self._rest.publish(topic, body)

    def subscribe(self, pattern: str) -> Iterator[tuple[str, list[bytes]]]:
        """Each publication on a topic matching ``pattern`` (an SSE stream, read as it comes)."""
        conn = connection(self.url, self.timeout, self.token, self.cacert)
        try:
            conn.request(
                "GET", f"/v1/topics/{_seg(pattern)}", headers={"Accept": "text/event-stream"}
            )
            resp = conn.getresponse()
            if resp.status != 200:
                raise codec.error_from_body(resp.status, resp.read())
            if conn.sock is not None:
                conn.sock.settimeout(None)  # a subscriber waits as long as it takes
            event, data = "", b""
            for raw in resp:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data = line[5:].strip()
                elif not line and data:
                    value = json.loads(data)
                    if event == "error":
                        raise codec.error_from_body(500, data)
                    frames = [base64.b64decode(f) for f in value.get("frames", [])]
                    yield value.get("topic", ""), frames
                    event, data = "", b""
        finally:
            conn.close()

    def serve(
        self, service: str, handler: FrameHandler, *, max_requests: int | None = None
    ) -> None:
        with SwitchClient(
            self.url, timeout=self.timeout, bearer=self.token, cacert=self.cacert
        ) as sw:
            sw.serve(
                service, lambda payload: b"".join(handler([payload])), max_requests=max_requests
            )

    def close(self) -> None:
        self._rest.close()
