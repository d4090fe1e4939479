"""maitred's Python MDP workers, sync (:class:`Worker`) and asyncio (:class:`AsyncWorker`): the
sockets and the waiting around one :class:`~maitred.transports.mdp.peer.WorkerCore` each.

Import them from :mod:`maitred.transports.mdp.client` (its docstring describes handlers).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from abc import ABCMeta, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Generic

import zmq
import zmq.asyncio

from maitred.transports.mdp import codec
from maitred.transports.mdp.curve import client_curve
from maitred.transports.mdp.peer import (
    AsyncHandler,
    ErrorReply,
    FinalReply,
    SyncHandler,
    WorkerCore,
    default_error_reply,
)
from maitred.transports.mdp.sockets import SocketT, connect_socket, recv_future

__all__ = ["AsyncWorker", "Worker"]

#: how long a closing worker lets its DISCONNECT reach the broker (ms, in the background)
_DISCONNECT_LINGER_MS = 100
#: longest a sync worker blocks before looking at its stop events again (s)
_STOP_SLICE = 0.1


class _SocketWorker(WorkerCore, Generic[SocketT], metaclass=ABCMeta):
    """What both workers add to their :class:`WorkerCore`: the options they take, the zmq
    context, the CURVE keys, the DEALER socket to the broker, and the run state that
    :meth:`stop` and ``close()`` (from any thread) look at."""

    def __init__(
        self,
        endpoint: str,
        service: str | bytes,
        handler: SyncHandler | AsyncHandler,
        *,
        dialect: str | int = "0.2",
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        context: zmq.Context[SocketT] | None = None,
        error_reply: ErrorReply | None = default_error_reply,
        curve_server_key: str | bytes | None = None,
        curve_key_file: str | None = None,
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
        self._curve = client_curve(curve_server_key, curve_key_file)
        self._context = context if context is not None else self._default_context()
        self._socket: SocketT | None = None
        #: set by :meth:`stop`: run() ends, for good
        self._stop = threading.Event()
        self._lock = threading.Lock()  # _running and _closed, between run() and the others
        self._running = False

    @abstractmethod
    def _default_context(self) -> zmq.Context[SocketT]:
        """The shared context of the worker's kind, when none is given."""

    def _drop(self) -> None:
        """Close the socket at once (a reconnection follows)."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _open(self) -> list[bytes]:
        """A new socket to the broker; the READY to send on it."""
        self._socket = connect_socket(self._context, zmq.DEALER, self.endpoint, curve=self._curve)
        return self._connected(time.monotonic())

    def _begin_run(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker is closed")
            if self._running:
                raise RuntimeError("the worker is already running")
            self._running = True

    def _end_run(self) -> bool:
        """run() ends; whether the worker was closed meanwhile."""
        with self._lock:
            self._running = False
            return self._closed


# -- sync worker -----------------------------------------------------------------------------------


class Worker(_SocketWorker[zmq.Socket[Any]]):
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

    ``context``: the zmq context for the socket (default: ``zmq.Context.instance()``).
    CURVE: ``curve_server_key`` (the broker's public key, Z85 or its certificate file) and
    ``curve_key_file`` (this worker's secret certificate), as for the client.
    """

    def _default_context(self) -> zmq.Context[Any]:
        return zmq.Context.instance()

    # socket life

    def _send(self, frames: list[bytes]) -> None:
        assert self._socket is not None
        self._socket.send_multipart(frames)
        self._sent(time.monotonic())

    def _connect(self, stop_event: threading.Event | None) -> bool:
        """(Re)connect and send READY, at most once per heartbeat interval; False if stopped."""
        self._drop()
        if not self._wait(self._reconnect_delay(time.monotonic()), stop_event):
            return False
        self._send(self._open())
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
            with contextlib.suppress(zmq.Again):
                sock.send_multipart(codec.worker_disconnect(self.dialect), zmq.NOBLOCK)
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
            if self._end_run():
                self._disconnect_and_close()
        return served

    def _step(self, stop_event: threading.Event | None) -> int:
        """Wait for one message or timer; return 1 if a request was served."""
        assert self._socket is not None
        now = time.monotonic()
        wait = min(self._heartbeat_at, self._dead_at, now + _STOP_SLICE) - now
        served = 0
        if self._socket.poll(max(0, round(wait * 1000)), zmq.POLLIN):
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            inbound = self._inbound(frames, time.monotonic())
            if inbound is None:
                return 0
            command, token, body = inbound
            if command == codec.CLIENT_REQUEST:
                for reply in self._sync_replies(token, body):
                    self._send(reply)
                self.served += 1
                served = 1
                self._heard(time.monotonic())  # busy workers are not heartbeated
            elif command == codec.DISCONNECT:
                self._connect(stop_event)
                return 0
        now = time.monotonic()
        if self._silent(now):
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


class AsyncWorker(_SocketWorker[zmq.asyncio.Socket]):
    """The asyncio twin of :class:`Worker`: ``await worker.run()`` serves until :meth:`stop`.

    The handler may be a plain function, an ``async def`` (awaited), a generator or an async
    generator (streaming, as described in the module docstring). Requests are served one at a
    time (MDP gives a worker one request at a time); a blocking sync handler blocks the loop.
    While an async handler works, the worker keeps sending HEARTBEAT every
    ``heartbeat_interval`` (a blocking sync handler stops them too), so the broker never takes a
    long request for a dead worker.
    :meth:`stop` may be called from any thread; ``await close()`` (on the worker's loop) stops,
    waits for :meth:`run` to return, sends DISCONNECT and closes the socket. ``context``:
    default ``zmq.asyncio.Context.instance()``.
    """

    #: while run() runs: its loop, the event that stops it, and the one set when it returned
    _loop: asyncio.AbstractEventLoop | None = None
    _stop_event: asyncio.Event | None = None
    _done: asyncio.Event | None = None

    def _default_context(self) -> zmq.asyncio.Context:
        return zmq.asyncio.Context.instance()

    async def _send(self, frames: list[bytes]) -> None:
        assert self._socket is not None
        await self._socket.send_multipart(frames)
        self._sent(time.monotonic())

    async def _connect(self, stop: asyncio.Event) -> bool:
        self._drop()
        delay = self._reconnect_delay(time.monotonic())
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except TimeoutError:
                pass
        if stop.is_set():
            return False
        await self._send(self._open())
        return True

    async def run(self, max_requests: int | None = None) -> int:
        """Serve until :meth:`stop` (or ``max_requests`` served); return the count."""
        self._begin_run()
        self._loop = asyncio.get_running_loop()
        stop = self._stop_event = asyncio.Event()
        if self._stop.is_set():
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
                    receiving = recv_future(self._socket)
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
                if self._silent(now):
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
            self._end_run()
            done.set()
        return served

    def _has_socket(self) -> bool:
        return self._socket is not None

    async def _handle(self, frames: list[bytes], stop: asyncio.Event) -> int:
        inbound = self._inbound(frames, time.monotonic())
        if inbound is None:
            return 0
        command, token, body = inbound
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
        except Exception as exc:
            yield self._failed(token, exc)
            return
        if isinstance(result, AsyncIterator):
            async with aclosing(self._astream(token, result)) as stream:
                async for frames in stream:
                    yield frames
        else:
            for frames in self._replies_of(token, result):
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
                    frames = self._final(token, item)
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
        self._stop.set()
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
            with contextlib.suppress(zmq.Again):
                await sock.send_multipart(codec.worker_disconnect(self.dialect), zmq.NOBLOCK)
            sock.close(linger=_DISCONNECT_LINGER_MS)

    async def __aenter__(self) -> AsyncWorker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
