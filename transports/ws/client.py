"""Small asyncio clients for maitred's WebSocket transport: :class:`MmClient` (the middleman text
dialect) and :class:`JsonClient` (``maitred.json``).

::

    async with await JsonClient.connect("ws://127.0.0.1:8764", key="plugh") as c:
        reply = await c.request("echo", {"hello": 1})
        print(reply.payload)

    svc = await JsonClient.connect(url, key="xyzzy", name="echo", methods=["upper"])
    req = await svc.next_request()
    await svc.reply(req, req.payload)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from maitred.core.errors import ErrorCode, MaitredError
from maitred.transports.ws import json_codec as jc
from maitred.transports.ws.mm_codec import MmMessage, encode, parse

__all__ = ["JsonClient", "MmClient", "payload_of"]


def _bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _refused(exc: ConnectionClosed) -> MaitredError:
    """The broker closed the connection during the handshake: it refused the key or token."""
    reason = exc.rcvd.reason if exc.rcvd else "closed"
    return MaitredError(f"refused: {reason}", ErrorCode.UNAUTHORIZED)


async def _unexpected(ws: ClientConnection, first: object) -> MaitredError:
    """The broker answered the handshake with something else: close, and say what it was."""
    await ws.close()
    return MaitredError(f"unexpected handshake: {first!r}", ErrorCode.BAD_REQUEST)


class _Connection:
    """What both clients share: the websocket, closed by :meth:`close` or ``async with``."""

    def __init__(self, ws: ClientConnection, cid: str) -> None:
        self.ws = ws
        #: the connection id the broker gave this connection
        self.cid = cid

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def payload_of(msg: jc.Request | jc.Reply | jc.Partial | jc.Event) -> Any:
    """The JSON value a message carries (``payload``), decoded; None when it has none."""
    if isinstance(msg.payload, msgspec.Raw):
        return msgspec.json.decode(msg.payload)
    return None


class MmClient(_Connection):
    """A middleman connection: ``MM OK`` handshake, then messages as :class:`MmMessage`."""

    @classmethod
    async def connect(
        cls, url: str, key: str = "", *, token: str | None = None, timeout: float = 10.0
    ) -> MmClient:
        """Log in with ``key`` (the first frame), or with a bearer ``token`` on the opening
        handshake (then no key frame is sent)."""
        ws = await connect(
            url, open_timeout=timeout, compression=None, additional_headers=_bearer(token)
        )
        if token is None:
            await ws.send(key)
        try:
            ok = await asyncio.wait_for(ws.recv(), timeout)
            cid = await asyncio.wait_for(ws.recv(), timeout)
        except ConnectionClosed as exc:
            raise _refused(exc) from None
        if ok != "MM OK" or not isinstance(cid, str):
            raise await _unexpected(ws, ok)
        return cls(ws, cid)

    async def send(
        self, command: str, target: str, body: str = "", headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        await self.ws.send(encode(command, target, headers, body))

    async def recv(self, timeout: float = 10.0) -> MmMessage:
        """The next message (raises TimeoutError, or ConnectionClosed)."""
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        if not isinstance(frame, str):
            raise MaitredError("binary frame from the broker", ErrorCode.BAD_REQUEST)
        return parse(frame)

    async def request(
        self,
        target: str,
        body: str = "",
        headers: Sequence[tuple[str, str]] = (),
        timeout: float = 10.0,
    ) -> MmMessage:
        """Send ``REQ`` and wait for the next ``RES`` (middleman errors carry no correlation,
        so keep one request in flight per client with this method). ``PUB ERROR`` raises."""
        await self.send("REQ", target, body, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.0, deadline - loop.time()))
            if msg.command == "RES":
                return msg
            if msg.command == "PUB" and msg.target == "ERROR":
                raise MaitredError(msg.body, ErrorCode.BAD_REQUEST)


class JsonClient(_Connection):
    """A ``maitred.json`` connection (consumer, or service when ``methods`` is given)."""

    def __init__(self, ws: ClientConnection, welcome: jc.Welcome) -> None:
        super().__init__(ws, welcome.id)
        self.welcome = welcome
        self._ids = itertools.count(1)
        self._calls: dict[jc.Id, asyncio.Future[Any]] = {}
        self._partials: dict[jc.Id, Callable[[jc.Partial], None]] = {}
        self.events: asyncio.Queue[jc.Event] = asyncio.Queue()
        self.requests: asyncio.Queue[jc.Request] = asyncio.Queue()
        #: errors the broker sent about messages without an id
        self.errors: asyncio.Queue[jc.Error] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        key: str = "",
        *,
        token: str | None = None,
        name: str = "",
        version: str = "",
        methods: Sequence[str] | None = None,
        timeout: float = 10.0,
        ssl: Any = None,
    ) -> JsonClient:
        """Say ``hello`` with ``key``, or without one after a bearer ``token`` on the opening
        handshake. ``ssl``: an ``ssl.SSLContext`` for ``wss://`` (e.g. trusting a private CA)."""
        extra: dict[str, Any] = {"ssl": ssl} if ssl is not None else {}
        ws = await connect(
            url,
            subprotocols=[Subprotocol("maitred.json")],
            open_timeout=timeout,
            compression=None,
            additional_headers=_bearer(token),
            **extra,
        )
        hello = jc.Hello(
            key=key, name=name, version=version, methods=None if methods is None else list(methods)
        )
        try:
            await ws.send(jc.encode(hello))  # a refused token: closed already
            first = await asyncio.wait_for(ws.recv(), timeout)
        except ConnectionClosed as exc:
            raise _refused(exc) from None
        welcome = jc.decode_server(first)
        if not isinstance(welcome, jc.Welcome):
            raise await _unexpected(ws, first)
        return cls(ws, welcome)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                try:
                    msg = jc.decode_server(frame)
                except msgspec.MsgspecError:
                    continue
                self._dispatch(msg)
        except ConnectionClosed:
            pass
        finally:
            for fut in self._calls.values():
                if not fut.done():
                    fut.set_exception(MaitredError("connection closed", ErrorCode.CANCELLED))

    def _dispatch(self, msg: jc.ServerMessage) -> None:
        if isinstance(msg, jc.Event):
            self.events.put_nowait(msg)
        elif isinstance(msg, jc.Request):
            self.requests.put_nowait(msg)
        elif isinstance(msg, jc.Partial):
            callback = self._partials.get(msg.id)
            if callback is not None:
                callback(msg)
        elif isinstance(msg, jc.Reply | jc.Ack):
            fut = self._calls.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, jc.Error):
            fut = self._calls.pop(msg.id, None) if msg.id is not None else None
            if fut is not None and not fut.done():
                fut.set_exception(MaitredError(msg.message, ErrorCode.of(msg.code)))
            else:
                self.errors.put_nowait(msg)

    def _next_id(self) -> str:
        return f"c{next(self._ids)}"

    async def _call(
        self,
        msg_id: jc.Id,
        msg: jc.Request | jc.Publish | jc.Subscribe | jc.Unsubscribe,
        timeout: float,
    ) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[msg_id] = fut
        try:
            await self.ws.send(jc.encode(msg))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._calls.pop(msg_id, None)
            self._partials.pop(msg_id, None)

    async def request(
        self,
        destination: str,
        payload: Any = msgspec.UNSET,
        *,
        data: bytes | None = None,
        frames: Sequence[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        on_partial: Callable[[jc.Partial], None] | None = None,
        on_no_worker: str | None = None,
    ) -> jc.Reply:
        """Call ``destination``; the final reply. Errors raise :class:`MaitredError`."""
        msg_id = self._next_id()
        body = _body(payload, data, frames)
        msg = jc.Request(
            id=msg_id,
            destination=destination,
            timeout=timeout,
            headers=headers if headers is not None else msgspec.UNSET,
            on_no_worker=on_no_worker if on_no_worker is not None else msgspec.UNSET,  # type: ignore[arg-type]
            **body,
        )
        if on_partial is not None:
            self._partials[msg_id] = on_partial
        reply: jc.Reply = await self._call(msg_id, msg, timeout + 1.0)
        return reply

    async def publish(
        self,
        topic: str,
        payload: Any = msgspec.UNSET,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Publish and wait for the broker's ack: the number of sessions reached."""
        msg_id = self._next_id()
        msg = jc.Publish(
            topic=topic,
            id=msg_id,
            headers=headers if headers is not None else msgspec.UNSET,
            **_body(payload, data, None),
        )
        ack: jc.Ack = await self._call(msg_id, msg, timeout)
        return 0 if isinstance(ack.count, msgspec.UnsetType) else ack.count

    async def subscribe(self, topic: str, timeout: float = 10.0) -> None:
        msg_id = self._next_id()
        await self._call(msg_id, jc.Subscribe(topic=topic, id=msg_id), timeout)

    async def unsubscribe(self, topic: str, timeout: float = 10.0) -> None:
        msg_id = self._next_id()
        await self._call(msg_id, jc.Unsubscribe(topic=topic, id=msg_id), timeout)

    async def next_event(self, timeout: float = 10.0) -> jc.Event:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def next_request(self, timeout: float = 10.0) -> jc.Request:
        return await asyncio.wait_for(self.requests.get(), timeout)

    async def reply(
        self,
        request: jc.Request,
        payload: Any = msgspec.UNSET,
        *,
        data: bytes | None = None,
        frames: Sequence[bytes] | None = None,
        headers: dict[str, str] | None = None,
        final: bool = True,
    ) -> None:
        """Answer a request this service received (``final=False``: a partial reply)."""
        cls = jc.Reply if final else jc.Partial
        msg = cls(
            id=request.id,
            headers=headers if headers is not None else msgspec.UNSET,
            **_body(payload, data, frames),
        )
        await self.ws.send(jc.encode(msg))

    async def fail(self, request: jc.Request, code: int, message: str) -> None:
        await self.ws.send(jc.encode(jc.Error(id=request.id, code=code, message=message)))

    async def close(self) -> None:
        await super().close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _body(payload: Any, data: bytes | None, frames: Sequence[bytes] | None) -> dict[str, Any]:
    if frames is not None:
        return {"frames": [base64.b64encode(f).decode() for f in frames]}
    if data is not None:
        return {"data": base64.b64encode(data).decode()}
    if payload is msgspec.UNSET:
        return {}
    return {"payload": msgspec.Raw(jc.payload_bytes(payload))}
