"""Python Majordomo (MDP) client and worker, sync and asyncio.

::

    from maitred.transports.mdp.client import Client, Worker

    with Client("tcp://127.0.0.1:5555") as client:
        reply = client.request("echo", b"hello")           # -> [b"hello"]

    def echo(body: list[bytes]) -> list[bytes]:
        return body

    Worker("tcp://127.0.0.1:5555", "echo", echo).run()

**Dialects** (docs/reference/mdp.md), chosen per client or worker by name:

- ``"0.2"`` (the default; alias ``"rfc"``): RFC 18 MDP/0.2, no leading empty frame; replies
  carry the service frame;
- ``"rfc-envelope"``: RFC 18 with a leading empty frame on every message;
- ``"majortomo"``: what the majortomo library speaks: leading empty frame, client REQUEST byte
  0x02, replies without the service frame;
- ``"0.1"``: RFC 7 MDP/0.1: one reply per request, no partial replies.

An ``int`` of :mod:`~maitred.transports.mdp.codec` dialect flags is accepted as well.

**Replies.** Body frames are opaque bytes. maitred answers a request it cannot serve (no worker,
deadline, worker died) with a FINAL whose body is ``[b"<code>", b"<reason>"]`` when its
``error_replies`` option is on; the client does not interpret bodies, so check for that shape
where it matters. Timeouts raise :class:`MdpTimeout` (a :class:`TimeoutError`); a reply that is
not valid MDP for the client's dialect raises :class:`~maitred.transports.mdp.codec.MdpFormatError`.

**Worker handlers** take the request body (``list[bytes]``) and either

- return the reply body (a list or tuple of ``bytes`` frames): one FINAL reply; or
- are generators (``async`` generators too, for :class:`AsyncWorker`) that stream: each
  ``yield body`` sends a PARTIAL at once; ``yield FinalReply(body)`` sends the FINAL and ends the
  stream (the generator is closed); a plain generator may instead ``return body``. A generator that
  ends with neither sends an empty FINAL. MDP/0.1 cannot carry partials.

A handler that raises is logged; the worker answers with ``error_reply(exc)`` (by default
``[b"500", b"<ExceptionType>: <message>"]``, the shape of maitred's error replies) and stays
available. Pass ``error_reply=None`` to let the exception end :meth:`Worker.run` instead.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import aclosing
from typing import Any, Literal, TypeAlias, cast, final

import zmq
import zmq.asyncio

from maitred.core.errors import BrokerError, ErrorCode
from maitred.transports.mdp import codec
from maitred.transports.mdp.codec import MdpFormatError

__all__ = [
    "DIALECTS",
    "AsyncClient",
    "AsyncWorker",
    "Client",
    "DialectName",
    "FinalReply",
    "MdpFormatError",
    "MdpTimeout",
    "Worker",
    "default_error_reply",
    "dialect_flags",
]

log = logging.getLogger("maitred.transports.mdp.client")

#: the dialect names (any ``str`` is accepted by the API, and checked at run time)
DialectName: TypeAlias = Literal["0.1", "0.2", "rfc", "rfc-envelope", "majortomo"]

#: dialect names → codec flags
DIALECTS: dict[str, int] = {
    "0.1": codec.ENVELOPE,
    "0.2": codec.V2,
    "rfc": codec.V2,
    "rfc-envelope": codec.V2 | codec.ENVELOPE,
    "majortomo": codec.V2 | codec.ENVELOPE | codec.SHORT,
}

#: how long a closing worker lets its DISCONNECT reach the broker (ms, in the background)
_DISCONNECT_LINGER_MS = 100
#: longest a sync worker blocks before looking at its stop events again (s)
_STOP_SLICE = 0.1


def dialect_flags(dialect: str | int) -> int:
    """The codec flags for a dialect name (see the module docstring) or a flags ``int``."""
    if isinstance(dialect, bool):
        raise TypeError("dialect must be a name or an int of codec flags")
    if isinstance(dialect, int):
        if dialect not in codec.DIALECT_NAMES:
            raise ValueError(f"unknown MDP dialect flags {dialect!r}")
        return dialect
    try:
        return DIALECTS[dialect]
    except KeyError:
        names = ", ".join(repr(n) for n in DIALECTS)
        raise ValueError(f"unknown MDP dialect {dialect!r} (one of {names})") from None


class MdpTimeout(BrokerError, TimeoutError):
    """No reply arrived in time (the client then drops that connection: see :class:`Client`).

    Also a :class:`TimeoutError`, as it was before it joined the :class:`MaitredError` tree."""

    code = ErrorCode.TIMEOUT


@final
class FinalReply:
    """Yield ``FinalReply(body)`` from a streaming handler to send the FINAL reply."""

    __slots__ = ("body",)

    def __init__(self, body: Sequence[bytes]) -> None:
        self.body = body

    def __repr__(self) -> str:
        return f"FinalReply({self.body!r})"


def default_error_reply(exc: BaseException) -> list[bytes]:
    """The reply a worker sends when its handler raises: ``[b"500", b"Type: message"]``."""
    return codec.error_body(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


SyncHandler: TypeAlias = Callable[[list[bytes]], Any]
AsyncHandler: TypeAlias = Callable[[list[bytes]], Any]
ErrorReply: TypeAlias = Callable[[BaseException], Sequence[bytes]]
Reply: TypeAlias = tuple[bool, list[bytes]]

# -- helpers ---------------------------------------------------------------------------------------


def _service_bytes(service: str | bytes) -> bytes:
    if isinstance(service, str):
        return service.encode("utf-8")
    if isinstance(service, bytes):
        return service
    raise TypeError(f"service must be str or bytes, not {type(service).__name__}")


def _frames(frames: Iterable[object], what: str) -> list[bytes]:
    """Validate a body before anything is sent (a bad frame mid-send would corrupt the stream)."""
    if isinstance(frames, (bytes, bytearray, memoryview, str)):
        kind = type(frames).__name__
        raise TypeError(f"{what} must be a list of bytes frames, not a single {kind}")
    out: list[bytes] = []
    for f in frames:
        if isinstance(f, bytes):
            out.append(f)
        elif isinstance(f, (bytearray, memoryview)):
            out.append(bytes(f))
        else:
            raise TypeError(f"{what}: every frame must be bytes, not {type(f).__name__}")
    return out


def _reply_body(value: object, what: str) -> list[bytes]:
    if not isinstance(value, (list, tuple)):
        kind = type(value).__name__
        raise TypeError(f"{what} must be a list or tuple of bytes frames, not {kind}")
    return _frames(value, what)


def _check_reply(dialect: int, service: bytes, frames: list[bytes]) -> Reply:
    final, svc, body = codec.parse_client_reply(dialect, frames)
    if svc is not None and svc != service:
        raise MdpFormatError(f"reply for service {svc!r}, expected {service!r}")
    return final, body


def _recv(sock: zmq.asyncio.Socket) -> asyncio.Future[list[bytes]]:
    """``sock.recv_multipart()`` as the Future it is (pyzmq types it loosely)."""
    return cast("asyncio.Future[list[bytes]]", sock.recv_multipart())


def _timeout_ms(timeout: float | None) -> int | None:
    return None if timeout is None else max(0, round(timeout * 1000))


# -- sync client -----------------------------------------------------------------------------------


class Client:
    """A synchronous MDP client on one DEALER socket; not thread-safe (one per thread).

    ``timeout`` (seconds, ``None``: wait forever) bounds the wait for *each* reply message: the
    first one, and the next one after every PARTIAL. When it passes, :class:`MdpTimeout` is
    raised and the socket is replaced by a new one (as zguide's ``mdcliapi`` does), so a late
    reply can never be taken for the answer to a later request. The same happens when a reply
    stream is abandoned before its FINAL or a reply is malformed.

    ``context``: the zmq context for the socket (default: ``zmq.Context.instance()``).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        dialect: str | int = "0.2",
        context: zmq.Context[Any] | None = None,
        timeout: float | None = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.dialect = dialect_flags(dialect)
        self.timeout = timeout
        self._context: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
        self._socket: zmq.Socket[Any] | None = self._new_socket()
        self._pending = False  # a request was sent and its FINAL not received yet
        self._generation = 0  # bumped per request: an abandoned stream cannot read newer replies

    def _new_socket(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def _reconnect(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = self._new_socket()
        self._pending = False

    def request(
        self, service: str | bytes, *body: bytes, timeout: float | None = None
    ) -> list[bytes]:
        """Send a request and return the body of its FINAL reply (partials are skipped)."""
        for is_final, frames in self.stream(service, *body, timeout=timeout):
            if is_final:
                return frames
        raise MdpFormatError("reply stream ended without a FINAL")  # pragma: no cover

    def stream(
        self, service: str | bytes, *body: bytes, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Send a request now; iterate over ``(final, body)`` for each PARTIAL and the FINAL.

        Closing the iterator before the FINAL (``break``) drops the connection, and so does
        sending another request first: replies are never mixed up.
        """
        if self._socket is None:
            raise RuntimeError("the client is closed")
        service_b = _service_bytes(service)
        frames = codec.client_request(self.dialect, service_b, _frames(body, "request body"))
        if self._pending:
            self._reconnect()
        self._socket.send_multipart(frames)
        self._pending = True
        self._generation += 1
        wait = self.timeout if timeout is None else timeout
        return self._replies(self._generation, service_b, wait)

    def _replies(self, generation: int, service: bytes, timeout: float | None) -> Iterator[Reply]:
        try:
            while True:
                sock = self._socket
                if sock is None or generation != self._generation:
                    raise RuntimeError("this reply stream was abandoned (client closed or reused)")
                if not sock.poll(_timeout_ms(timeout), zmq.POLLIN):
                    raise MdpTimeout(f"no reply from {self.endpoint} within {timeout} s")
                is_final, body = _check_reply(self.dialect, service, sock.recv_multipart())
                if is_final:
                    self._pending = False
                    yield True, body
                    return
                yield False, body
        finally:
            if self._pending and generation == self._generation:
                self._reconnect()

    def close(self) -> None:
        """Close the socket (LINGER 0). Idempotent."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._pending = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- asyncio client --------------------------------------------------------------------------------


class AsyncClient:
    """An asyncio MDP client; many requests may be in flight at once from several tasks.

    MDP has no correlation id and a broker answers one client connection in the order its
    workers finish, not in request order, so each in-flight request gets a DEALER socket of its
    own, taken from a small pool (at most ``max_in_flight`` at once; further requests wait for a
    free slot). A socket whose request ended with its FINAL goes back to the pool (at most
    ``max_idle`` are kept); one that timed out, was cancelled, abandoned or got a malformed reply
    is closed, so a late reply dies with it.

    ``timeout`` has the meaning it has for :class:`Client`. ``context``: default
    ``zmq.asyncio.Context.instance()``. An AsyncClient belongs to the event loop it is first used
    on. :meth:`close` closes the idle sockets at once and each in-flight one as its request ends.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        dialect: str | int = "0.2",
        context: zmq.asyncio.Context | None = None,
        timeout: float | None = 10.0,
        max_in_flight: int = 64,
        max_idle: int = 8,
    ) -> None:
        if max_in_flight < 1 or max_idle < 0:
            raise ValueError("max_in_flight must be >= 1 and max_idle >= 0")
        self.endpoint = endpoint
        self.dialect = dialect_flags(dialect)
        self.timeout = timeout
        self.max_idle = max_idle
        self._context = context if context is not None else zmq.asyncio.Context.instance()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._idle: list[zmq.asyncio.Socket] = []
        self._closed = False

    def _take(self) -> zmq.asyncio.Socket:
        if self._idle:
            return self._idle.pop()
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def _give_back(self, sock: zmq.asyncio.Socket, clean: bool) -> None:
        if clean and not self._closed and len(self._idle) < self.max_idle:
            self._idle.append(sock)
        else:
            sock.close(linger=0)

    async def request(
        self, service: str | bytes, *body: bytes, timeout: float | None = None
    ) -> list[bytes]:
        """Send a request and return the body of its FINAL reply (partials are skipped)."""
        replies = self.stream(service, *body, timeout=timeout)
        try:
            async for is_final, frames in replies:
                if is_final:
                    return frames
        finally:
            await replies.aclose()
        raise MdpFormatError("reply stream ended without a FINAL")  # pragma: no cover

    async def stream(
        self, service: str | bytes, *body: bytes, timeout: float | None = None
    ) -> AsyncGenerator[Reply, None]:
        """``async for final, body in client.stream(...)``: each PARTIAL, then the FINAL.

        The request is sent when iteration starts. Leaving the loop early closes its socket.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        service_b = _service_bytes(service)
        request = codec.client_request(self.dialect, service_b, _frames(body, "request body"))
        seconds = self.timeout if timeout is None else timeout
        wait = _timeout_ms(seconds)
        await self._slots.acquire()
        holding = True
        sock: zmq.asyncio.Socket | None = None
        try:
            sock = self._take()
            await sock.send_multipart(request)
            while True:
                if not await sock.poll(wait):
                    raise MdpTimeout(f"no reply from {self.endpoint} within {seconds} s")
                reply = await _recv(sock)
                is_final, frames = _check_reply(self.dialect, service_b, reply)
                if is_final:
                    # release before handing out the FINAL: the caller need not close us
                    self._give_back(sock, clean=True)
                    sock = None
                    self._slots.release()
                    holding = False
                    yield True, frames
                    return
                yield False, frames
        finally:
            if sock is not None:
                self._give_back(sock, clean=False)
            if holding:
                self._slots.release()

    def close(self) -> None:
        """Close the pooled sockets (LINGER 0); requests in flight close theirs when they end."""
        self._closed = True
        while self._idle:
            self._idle.pop().close(linger=0)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


# -- workers: what both share ----------------------------------------------------------------------


class _WorkerBase:
    def __init__(
        self,
        endpoint: str,
        service: str | bytes,
        handler: Callable[[list[bytes]], Any],
        *,
        dialect: str | int,
        heartbeat_interval: float,
        liveness: int,
        error_reply: ErrorReply | None,
    ) -> None:
        if heartbeat_interval <= 0 or liveness < 1:
            raise ValueError("heartbeat_interval must be > 0 and liveness >= 1")
        self.endpoint = endpoint
        self.service = _service_bytes(service)
        if not self.service:
            raise ValueError("the service name must not be empty")
        if self.service.startswith(b"mmi."):
            raise ValueError("mmi.* services are answered by the broker itself")
        self.dialect = dialect_flags(dialect)
        if not self.dialect & codec.V2 and (
            inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler)
        ):
            raise ValueError(
                "MDP/0.1 workers cannot send partial replies: use a plain handler, or the "
                "'0.2' or 'majortomo' dialect for a streaming (generator) handler"
            )
        self.handler = handler
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.error_reply = error_reply
        #: requests served since construction
        self.served = 0
        self._connected_at = -float("inf")
        self._heartbeat_at = 0.0  # when to send the next HEARTBEAT
        self._dead_at = 0.0  # when the broker counts as dead
        self._closed = False

    def _sent(self, now: float) -> None:
        self._heartbeat_at = now + self.heartbeat_interval

    def _heard(self, now: float) -> None:
        self._dead_at = now + self.heartbeat_interval * self.liveness

    def _partial(self, token: bytes, item: object) -> list[bytes]:
        if not self.dialect & codec.V2:
            raise TypeError("MDP/0.1 cannot carry partial replies; yield FinalReply(...) only")
        return codec.worker_reply(self.dialect, token, _reply_body(item, "a partial reply"), False)

    def _final(self, token: bytes, value: object) -> list[bytes]:
        body = [] if value is None else _reply_body(value, "the final reply")
        return codec.worker_reply(self.dialect, token, body, True)

    def _failed(self, token: bytes, exc: Exception) -> list[bytes]:
        if self.error_reply is None:
            raise exc
        log.exception("MDP worker %r: handler failed", self.service)
        return codec.worker_reply(
            self.dialect, token, _frames(self.error_reply(exc), "error_reply"), True
        )

    def _stream(self, token: bytes, result: Iterator[object]) -> Iterator[list[bytes]]:
        """The frames to send for a sync generator's replies (its errors become an error reply)."""
        try:
            while True:
                try:
                    item = next(result)
                except StopIteration as stop:
                    frames = self._final(token, stop.value)
                    break
                if isinstance(item, FinalReply):
                    frames = self._final(token, item.body)
                    break
                yield self._partial(token, item)
        except Exception as exc:
            frames = self._failed(token, exc)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        yield frames

    def _sync_replies(self, token: bytes, body: list[bytes]) -> Iterator[list[bytes]]:
        """The frames to send in answer to one request, handler errors included."""
        try:
            result = self.handler(body)
            if not isinstance(result, Iterator):
                value = result.body if isinstance(result, FinalReply) else result
                frames = self._final(token, value)
        except Exception as exc:
            yield self._failed(token, exc)
            return
        if isinstance(result, Iterator):
            yield from self._stream(token, result)
        else:
            yield frames


# -- sync worker -----------------------------------------------------------------------------------


class Worker(_WorkerBase):
    """A synchronous MDP worker for one service, on one DEALER socket.

    :meth:`run` connects, sends READY and serves requests one at a time, calling ``handler``
    (see the module docstring for what it may return). While idle it sends a HEARTBEAT every
    ``heartbeat_interval`` seconds; after ``liveness`` intervals without a word from the broker
    (or on a DISCONNECT from it) it drops the socket, opens a new one and sends READY again, at
    most once per interval (zguide ``mdwrkapi`` behaviour). No heartbeats are sent while the
    handler runs; the broker's silence during that time is not counted against it. An idle
    broker speaks only at *its* heartbeat interval, so ``heartbeat_interval`` must not be
    shorter than the broker's (2.5 s for maitred and majortomo by default).

    :meth:`stop` (any thread) ends :meth:`run` after the request in progress, within
    ``0.1`` s when idle; :meth:`close` sends DISCONNECT and closes the socket.
    """

    def __init__(
        self,
        endpoint: str,
        service: str | bytes,
        handler: SyncHandler,
        *,
        dialect: str | int = "0.2",
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        context: zmq.Context[Any] | None = None,
        error_reply: ErrorReply | None = default_error_reply,
    ) -> None:
        super().__init__(
            endpoint,
            service,
            handler,
            dialect=dialect,
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            error_reply=error_reply,
        )
        self._context: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
        self._socket: zmq.Socket[Any] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running = False

    # socket life

    def _send(self, frames: list[bytes]) -> None:
        assert self._socket is not None
        self._socket.send_multipart(frames)
        self._sent(time.monotonic())

    def _connect(self, stop_event: threading.Event | None) -> bool:
        """(Re)connect and send READY, at most once per heartbeat interval; False if stopped."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        delay = self._connected_at + self.heartbeat_interval - time.monotonic()
        if not self._wait(delay, stop_event):
            return False
        sock: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self._socket = sock
        now = time.monotonic()
        self._connected_at = now
        self._heard(now)
        self._send(codec.worker_ready(self.dialect, self.service))
        return True

    def _stopping(self, stop_event: threading.Event | None) -> bool:
        return self._stop.is_set() or (stop_event is not None and stop_event.is_set())

    def _wait(self, seconds: float, stop_event: threading.Event | None) -> bool:
        """Wait ``seconds`` unless stopped first; True if not stopped."""
        deadline = time.monotonic() + seconds
        while not self._stopping(stop_event):
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._stop.wait(min(left, _STOP_SLICE))
        return False

    def _disconnect_and_close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            try:
                sock.send_multipart(codec.worker_disconnect(self.dialect), zmq.NOBLOCK)
            except zmq.Again:
                pass
            sock.close(linger=_DISCONNECT_LINGER_MS)

    # main loop

    def run(
        self, stop_event: threading.Event | None = None, max_requests: int | None = None
    ) -> int:
        """Serve until :meth:`stop`, ``stop_event`` or ``max_requests`` served; return the count.

        A later ``run()`` keeps the connection (no new READY). ``stop_event`` is looked at
        every 0.1 s at most while idle.
        """
        self._begin_run()
        served = 0
        try:
            if self._socket is None and not self._connect(stop_event):
                return served
            while not self._stopping(stop_event):
                if max_requests is not None and served >= max_requests:
                    break
                served += self._step(stop_event)
        finally:
            self._end_run()
        return served

    def _begin_run(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker is closed")
            if self._running:
                raise RuntimeError("the worker is already running")
            self._running = True

    def _end_run(self) -> None:
        with self._lock:
            self._running = False
            closing = self._closed
        if closing:
            self._disconnect_and_close()

    def _step(self, stop_event: threading.Event | None) -> int:
        """Wait for one message or timer; return 1 if a request was served."""
        assert self._socket is not None
        now = time.monotonic()
        wait = min(self._heartbeat_at, self._dead_at, now + _STOP_SLICE) - now
        served = 0
        if self._socket.poll(max(0, round(wait * 1000)), zmq.POLLIN):
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            self._heard(time.monotonic())
            try:
                command, token, body = codec.parse_worker_inbound(self.dialect, frames)
            except MdpFormatError as exc:
                log.debug("MDP worker %r: dropped a malformed message: %s", self.service, exc)
                return 0
            if command == codec.CLIENT_REQUEST:
                for reply in self._sync_replies(token, body):
                    self._send(reply)
                self.served += 1
                served = 1
                self._heard(time.monotonic())  # busy workers are not heartbeated
            elif command == codec.DISCONNECT:
                log.info("MDP worker %r: DISCONNECT from the broker, reconnecting", self.service)
                self._connect(stop_event)
                return 0
        now = time.monotonic()
        if now >= self._dead_at:
            log.warning("MDP worker %r: broker silent, reconnecting", self.service)
            self._connect(stop_event)
        elif now >= self._heartbeat_at:
            self._send(codec.worker_heartbeat(self.dialect))
        return served

    def stop(self) -> None:
        """End :meth:`run` (thread-safe) after the request in progress, if any; for good."""
        self._stop.set()

    def close(self) -> None:
        """Stop, send DISCONNECT and close the socket (by the running thread if run() is active)."""
        with self._lock:
            self._closed = True
            now = not self._running
        self._stop.set()
        if now:
            self._disconnect_and_close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- asyncio worker --------------------------------------------------------------------------------


class AsyncWorker(_WorkerBase):
    """The asyncio twin of :class:`Worker`: ``await worker.run()`` serves until :meth:`stop`.

    The handler may be a plain function, an ``async def`` (awaited), a generator or an async
    generator (streaming, as described in the module docstring). Requests are served one at a
    time (MDP gives a worker one request at a time); a blocking sync handler blocks the loop.
    While an async handler works, the worker keeps sending HEARTBEAT every
    ``heartbeat_interval`` (a blocking sync handler stops them too), so the broker never takes a
    long request for a dead worker.
    :meth:`stop` may be called from any thread; ``await close()`` (on the worker's loop) stops,
    waits for :meth:`run` to return, sends DISCONNECT and closes the socket.
    """

    def __init__(
        self,
        endpoint: str,
        service: str | bytes,
        handler: AsyncHandler,
        *,
        dialect: str | int = "0.2",
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        context: zmq.asyncio.Context | None = None,
        error_reply: ErrorReply | None = default_error_reply,
    ) -> None:
        super().__init__(
            endpoint,
            service,
            handler,
            dialect=dialect,
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            error_reply=error_reply,
        )
        self._context = context if context is not None else zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self._done: asyncio.Event | None = None

    async def _send(self, frames: list[bytes]) -> None:
        assert self._socket is not None
        await self._socket.send_multipart(frames)
        self._sent(time.monotonic())

    async def _connect(self, stop: asyncio.Event) -> bool:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        delay = self._connected_at + self.heartbeat_interval - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except TimeoutError:
                pass
        if stop.is_set():
            return False
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self._socket = sock
        now = time.monotonic()
        self._connected_at = now
        self._heard(now)
        await self._send(codec.worker_ready(self.dialect, self.service))
        return True

    async def run(self, max_requests: int | None = None) -> int:
        """Serve until :meth:`stop` (or ``max_requests`` served); return the count."""
        if self._closed:
            raise RuntimeError("the worker is closed")
        if self._done is not None and not self._done.is_set():
            raise RuntimeError("the worker is already running")
        self._loop = asyncio.get_running_loop()
        stop = self._stop_event = asyncio.Event()
        if self._stop_requested:
            stop.set()
        done = self._done = asyncio.Event()
        stopper = asyncio.ensure_future(stop.wait())
        receiving: asyncio.Future[list[bytes]] | None = None
        served = 0
        try:
            if self._socket is None and not await self._connect(stop):
                return served
            while not stop.is_set() and (max_requests is None or served < max_requests):
                assert self._socket is not None
                if receiving is None:
                    receiving = _recv(self._socket)
                now = time.monotonic()
                wait = max(0.0, min(self._heartbeat_at, self._dead_at) - now)
                ready, _ = await asyncio.wait(
                    (receiving, stopper), timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if stopper in ready:
                    break
                if receiving in ready:
                    frames, receiving = receiving.result(), None
                    served += await self._handle(frames, stop)
                    if not self._has_socket():  # stopped while reconnecting
                        break
                now = time.monotonic()
                if now >= self._dead_at:
                    log.warning("MDP worker %r: broker silent, reconnecting", self.service)
                    if receiving is not None:
                        receiving.cancel()
                        receiving = None
                    if not await self._connect(stop):
                        break
                elif now >= self._heartbeat_at:
                    await self._send(codec.worker_heartbeat(self.dialect))
        finally:
            stopper.cancel()
            if receiving is not None:
                receiving.cancel()
            self._stop_event = None
            done.set()
        return served

    def _has_socket(self) -> bool:
        return self._socket is not None

    async def _handle(self, frames: list[bytes], stop: asyncio.Event) -> int:
        self._heard(time.monotonic())
        try:
            command, token, body = codec.parse_worker_inbound(self.dialect, frames)
        except MdpFormatError as exc:
            log.debug("MDP worker %r: dropped a malformed message: %s", self.service, exc)
            return 0
        if command == codec.CLIENT_REQUEST:
            beat = asyncio.ensure_future(self._beat_while_busy())
            try:
                async with aclosing(self._async_replies(token, body)) as replies:
                    async for reply in replies:
                        await self._send(reply)
            finally:
                beat.cancel()
            self.served += 1
            self._heard(time.monotonic())
            return 1
        if command == codec.DISCONNECT:
            log.info("MDP worker %r: DISCONNECT from the broker, reconnecting", self.service)
            await self._connect(stop)
        return 0

    async def _beat_while_busy(self) -> None:
        """Send HEARTBEAT at the usual interval while the handler works (MDP lets a worker send
        one at any time): the broker then knows the worker is alive however long the request
        takes, and keeps sending it work as far as its credit allows."""
        while True:
            await asyncio.sleep(max(0.0, self._heartbeat_at - time.monotonic()))
            if time.monotonic() >= self._heartbeat_at and self._socket is not None:
                await self._send(codec.worker_heartbeat(self.dialect))

    async def _async_replies(
        self, token: bytes, body: list[bytes]
    ) -> AsyncGenerator[list[bytes], None]:
        """The frames to send in answer to one request, handler errors included."""
        try:
            result = self.handler(body)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, (AsyncIterator, Iterator)):
                value = result.body if isinstance(result, FinalReply) else result
                frames = self._final(token, value)
        except Exception as exc:
            yield self._failed(token, exc)
            return
        if isinstance(result, AsyncIterator):
            async with aclosing(self._astream(token, result)) as stream:
                async for frames in stream:
                    yield frames
        elif isinstance(result, Iterator):
            for frames in self._stream(token, result):
                yield frames
        else:
            yield frames

    async def _astream(
        self, token: bytes, result: AsyncIterator[object]
    ) -> AsyncGenerator[list[bytes], None]:
        try:
            while True:
                try:
                    item = await anext(result)
                except StopAsyncIteration:
                    frames = self._final(token, None)
                    break
                if isinstance(item, FinalReply):
                    frames = self._final(token, item.body)
                    break
                yield self._partial(token, item)
        except Exception as exc:
            frames = self._failed(token, exc)
        finally:
            aclose: Callable[[], Awaitable[object]] | None = getattr(result, "aclose", None)
            if aclose is not None:
                await aclose()
        yield frames

    def stop(self) -> None:
        """End :meth:`run` after the request in progress, for good (safe from any thread)."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    async def close(self) -> None:
        """Stop, wait for :meth:`run` to return, send DISCONNECT, close the socket."""
        self._closed = True
        self.stop()
        if self._done is not None:
            await self._done.wait()
        sock, self._socket = self._socket, None
        if sock is not None:
            try:
                await sock.send_multipart(codec.worker_disconnect(self.dialect), zmq.NOBLOCK)
            except zmq.Again:
                pass
            sock.close(linger=_DISCONNECT_LINGER_MS)

    async def __aenter__(self) -> AsyncWorker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
