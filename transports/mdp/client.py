"""Python Majordomo (MDP) client and worker, sync and asyncio.

::

    from maitred.transports.mdp.client import Client, Worker

    with Client("tcp://127.0.0.1:5555") as client:
        reply = client.request("echo", b"hello")           # -> [b"hello"]

    def echo(body: list[bytes]) -> list[bytes]:
        return body

    Worker("tcp://127.0.0.1:5555", "echo", echo).run()

**Topics**: :class:`Subscriber`/:class:`AsyncSubscriber` and :class:`Publisher`/
:class:`AsyncPublisher` (from :mod:`~maitred.transports.mdp.pubsub_client`) speak to the broker's
``pub_endpoints`` and ``publish_endpoints``.

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
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import zmq
import zmq.asyncio

from maitred.transports.mdp.codec import MdpFormatError
from maitred.transports.mdp.curve import client_curve
from maitred.transports.mdp.peer import (
    DIALECTS,
    DialectName,
    Exchange,
    FinalReply,
    MdpTimeout,
    Reply,
    default_error_reply,
    dialect_flags,
    timeout_ms,
)
from maitred.transports.mdp.pubsub_client import (
    AsyncPublisher,
    AsyncSubscriber,
    Event,
    Publisher,
    Subscriber,
)
from maitred.transports.mdp.sockets import connect_socket, recv_future
from maitred.transports.mdp.worker import AsyncWorker, Worker

__all__ = [
    "DIALECTS",
    "AsyncClient",
    "AsyncPublisher",
    "AsyncSubscriber",
    "AsyncWorker",
    "Client",
    "DialectName",
    "Event",
    "FinalReply",
    "MdpFormatError",
    "MdpTimeout",
    "Publisher",
    "Subscriber",
    "Worker",
    "default_error_reply",
    "dialect_flags",
]


# -- sync client -----------------------------------------------------------------------------------


class Client:
    """A synchronous MDP client on one DEALER socket; not thread-safe (one per thread).

    ``timeout`` (seconds, ``None``: wait forever) bounds the wait for *each* reply message: the
    first one, and the next one after every PARTIAL. When it passes, :class:`MdpTimeout` is
    raised and the socket is replaced by a new one (as zguide's ``mdcliapi`` does), so a late
    reply can never be taken for the answer to a later request. The same happens when a reply
    stream is abandoned before its FINAL or a reply is malformed.

    ``context``: the zmq context for the socket (default: ``zmq.Context.instance()``).

    CURVE (docs/reference/mdp.md): ``curve_server_key`` is the broker's public key (40 Z85
    characters, or its certificate file); ``curve_key_file`` this peer's secret certificate
    (``maitred keygen`` writes one). Without ``curve_server_key`` the connection is plain.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        dialect: str | int = "0.2",
        context: zmq.Context[Any] | None = None,
        timeout: float | None = 10.0,
        curve_server_key: str | bytes | None = None,
        curve_key_file: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._curve = client_curve(curve_server_key, curve_key_file)
        self.dialect = dialect_flags(dialect)
        self.timeout = timeout
        self._context: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
        self._socket: zmq.Socket[Any] | None = self._new_socket()
        self._pending = False  # a request was sent and its FINAL not received yet
        self._generation = 0  # bumped per request: an abandoned stream cannot read newer replies

    def _new_socket(self) -> zmq.Socket[Any]:
        return connect_socket(self._context, zmq.DEALER, self.endpoint, curve=self._curve)

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
        exchange = Exchange(self.dialect, service, body)
        if self._pending:
            self._reconnect()
        self._socket.send_multipart(exchange.frames)
        self._pending = True
        self._generation += 1
        wait = self.timeout if timeout is None else timeout
        return self._replies(self._generation, exchange, wait)

    def _replies(
        self, generation: int, exchange: Exchange, timeout: float | None
    ) -> Iterator[Reply]:
        try:
            while True:
                sock = self._socket
                if sock is None or generation != self._generation:
                    raise RuntimeError("this reply stream was abandoned (client closed or reused)")
                if not sock.poll(timeout_ms(timeout), zmq.POLLIN):
                    raise MdpTimeout(f"no reply from {self.endpoint} within {timeout} s")
                is_final, body = exchange.receive(sock.recv_multipart())
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
    CURVE: as for :class:`Client`.
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
        curve_server_key: str | bytes | None = None,
        curve_key_file: str | None = None,
    ) -> None:
        if max_in_flight < 1 or max_idle < 0:
            raise ValueError("max_in_flight must be >= 1 and max_idle >= 0")
        self.endpoint = endpoint
        self._curve = client_curve(curve_server_key, curve_key_file)
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
        return connect_socket(self._context, zmq.DEALER, self.endpoint, curve=self._curve)

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
        exchange = Exchange(self.dialect, service, body)
        seconds = self.timeout if timeout is None else timeout
        wait = timeout_ms(seconds)
        await self._slots.acquire()
        holding = True
        sock: zmq.asyncio.Socket | None = None
        try:
            sock = self._take()
            await sock.send_multipart(exchange.frames)
            while True:
                if not await sock.poll(wait):
                    raise MdpTimeout(f"no reply from {self.endpoint} within {seconds} s")
                is_final, frames = exchange.receive(await recv_future(sock))
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
