"""What both WebSocket dialects share: :class:`Conn`, one connection's websocket, session,
outbox and writer, and the close codes.

The dialects (:mod:`.middleman`, :mod:`.json_dialect`) subclass :class:`Conn`; the transport
(:mod:`.adapter`) picks one per connection. This module imports neither, so there is no import
cycle between the adapter and its dialects (an import-linter contract keeps it so).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections import deque
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.protocol import State

from maitred.core.access import Identity
from maitred.core.errors import MaitredError
from maitred.core.routing.model import Body, Headers, ReplyKind, Request, Session, Worker
from maitred.transports.ws.auth import (
    ANONYMOUS,
    BAD_KEY,
    BAD_TOKEN,
    NO_CREDENTIALS,
    presented_token,
)
from maitred.transports.ws.link import WsLink, text_frames

if TYPE_CHECKING:  # type-only: no import at run time
    from maitred.transports.ws.adapter import WsTransport

log = logging.getLogger("maitred.transports.ws")

#: the writer frames up to this many queued messages per socket write …
BATCH_MESSAGES = 256
#: … and about this many bytes (a batch stops at the first message that reaches it), while the
#: socket's write buffer holds less than this; beyond it, messages go out one by one with
#: websockets' flow control (so a slow reader fills the outbox, and the slow-consumer policy
#: applies). What sits in the socket's buffer is so bounded by about twice this plus one message
BATCH_BUFFER = 256 * 1024

#: close codes (RFC 6455 §7.4.1) and what they mean here
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # broker shutting down
CLOSE_UNSUPPORTED = 1003  # binary frame in the middleman dialect
CLOSE_POLICY = 1008  # wrong key or token, no credentials, no key in time, slow consumer
CLOSE_TOO_BIG = 1009  # frame larger than max_frame_size (sent by websockets)
CLOSE_INTERNAL = 1011  # a bug in maitred


class Conn(ABC):
    """What both dialects share: the websocket, the session, the outbox and its writer."""

    dialect = ""

    def __init__(self, transport: WsTransport, ws: WsLink) -> None:
        self.transport = transport
        self.ws = ws
        self._loop = asyncio.get_running_loop()
        self.broker = transport.broker
        self.stats = transport.stats
        self.cid = transport.new_cid()
        self.uid = ""
        self.session: Session | None = None
        self.identity: Identity | None = None
        self.restricted = True
        #: who the bearer token of the opening handshake says this is (None: no token)
        self.token_identity: Identity | None = None
        self._outbox: deque[str] = deque()
        #: characters queued in ``_outbox`` (counted in the router's ``held``)
        self._bytes = 0
        #: the writer task: woken for what a turn's flush could not write, and to close
        self._wake = asyncio.Event()
        #: a flush of the outbox is scheduled for the end of this turn
        self._scheduled = False
        #: the writer task waits for ``_wake`` (the outbox is the flush's to write)
        self._idle = False
        #: set when reading ends: the connection is lost, a message came while closing, or a
        #: handler failed (``_failed``)
        self._done: asyncio.Future[None] | None = None
        self._lost = False
        self._failed = False
        self._limit = transport.config.outbox
        self._limit_bytes = transport.config.outbox_bytes
        self._drop = transport.config.slow_consumer == "drop"
        self.closing = False
        self._close: tuple[int, str] | None = None
        #: service name → this connection's worker for it (middleman EREQ, maitred.json hello)
        self.workers: dict[str, Worker] = {}
        #: request id (the router's; middleman's Rid) → this connection's worker serving it
        self.inflight: dict[int, Worker] = {}

    # -- outbox -------------------------------------------------------------------------------

    def push(self, frame: str, event: bool = False) -> None:
        """Queue a frame (never blocks). ``event`` frames may be dropped by the policy."""
        if self.closing:
            return
        outbox = self._outbox
        size = len(frame)
        if len(outbox) >= self._limit or self._bytes + size > self._limit_bytes:
            if self._drop and event:
                self.stats["ws.events_dropped"] += 1
                return
            if (
                not self._drop
                or len(outbox) >= 2 * self._limit
                or self._bytes + size > 2 * self._limit_bytes
            ):
                self.stats["ws.slow_consumer_closed"] += 1
                self.close(CLOSE_POLICY, "slow consumer: outbox full", flush=False)
                return
        outbox.append(frame)
        self._bytes += size
        self.broker.hold(size)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _popleft(self) -> str:
        frame = self._outbox.popleft()
        size = len(frame)
        self._bytes -= size
        self.broker.release(size)
        return frame

    def _discard(self) -> None:
        """Forget what is queued (the connection is closing without a flush, or gone)."""
        self._outbox.clear()
        if self._bytes:
            self.broker.release(self._bytes)
            self._bytes = 0

    def close(self, code: int, reason: str, flush: bool = True) -> None:
        """Close after sending what is queued (``flush``) or at once. Never blocks."""
        if self._close is None:
            self._close = (code, reason)
        if not flush:
            self._discard()
        self.closing = True
        self._wake.set()

    def _flush(self) -> None:
        """Write what this turn queued, in one socket write (the event loop calls it once per
        turn that pushed). What it cannot write (the socket is behind, the connection is
        closing) is the writer task's, which sends with websockets' flow control."""
        self._scheduled = False
        if not self._outbox:
            return
        if self._idle and self._write_batch():
            if self._outbox:  # more than one batch: the rest in the next turn
                self._scheduled = True
                self._loop.call_soon(self._flush)
            return
        self._wake.set()

    async def writer(self) -> None:
        outbox = self._outbox
        ws = self.ws
        try:
            while True:
                while outbox:
                    if self._write_batch():
                        await asyncio.sleep(0)  # let the readers and the router run
                    else:
                        await ws.send(self._popleft())  # with websockets' flow control
                if self.closing:
                    break
                self._wake.clear()
                self._idle = True
                try:
                    await self._wake.wait()
                finally:
                    self._idle = False
            code, reason = self._close or (CLOSE_NORMAL, "")
            await ws.close(code, reason)
        except ConnectionClosed:
            pass

    def _write_batch(self) -> bool:
        """Frame queued messages (up to ``BATCH_MESSAGES``, about ``BATCH_BUFFER`` bytes) and
        hand them to the socket in one write (one system call instead of one per message).
        Only while the connection is open and its socket keeps up (write buffer under
        ``BATCH_BUFFER``); False: send one message the usual way instead, which waits for the
        peer to read."""
        ws = self.ws
        proto = ws.protocol
        transport = ws.transport
        if proto.state is not State.OPEN or transport.get_write_buffer_size() > BATCH_BUFFER:
            return False
        outbox = self._outbox
        popleft = outbox.popleft
        messages: list[bytes] = []
        size = 0
        for _ in range(min(len(outbox), BATCH_MESSAGES)):
            frame = popleft()
            messages.append(frame.encode())
            size += len(frame)
            if size >= BATCH_BUFFER:
                break
        self._bytes -= size
        self.broker.release(size)
        if ws.plain:
            transport.write(b"".join(text_frames(messages)))
        else:  # an extension, or websockets' DEBUG log of each frame: its own framing
            for data in messages:
                proto.send_text(data)
            ws.send_data()
        self.stats["ws.batched_writes"] += 1
        return True

    # -- peer-caused rejections ---------------------------------------------------------------

    def reject(self, kind: str, detail: str) -> None:
        """A protocol error of the peer (already counted and answered by the caller): DEBUG,
        and a rate-limited WARNING summary (:class:`~maitred.core.logs.RejectionLog`)."""
        self.transport.rejections.note(kind, peer_of(self.ws), detail)

    # -- identity -----------------------------------------------------------------------------

    def authenticate(self, key: str) -> Identity | None:
        """The identity for ``key`` (config keys, then authenticator plugins), or None. An
        empty key is no credentials: ``anonymous`` when the transport allows it."""
        table = self.transport.keys.get(key) if key else None
        default = ANONYMOUS if not key and self.transport.config.anonymous else None
        if table is not None:
            roles = frozenset(table.roles)
            default = Identity(
                table.identity or ("service" if table.trusted else "client"),
                roles,
                restricted=not table.trusted,
            )
        return self.transport.port.authenticate(
            "ws", {"key": key, "dialect": self.dialect}, default
        )

    def refuse(self, reason: str) -> None:
        """Refuse a peer that did not authenticate (``reason``: :data:`BAD_KEY`,
        :data:`BAD_TOKEN` or :data:`NO_CREDENTIALS`): no session; counted (``ws.<reason>``,
        ``denied.authenticate.ws``), published on ``$sys.auth.denied``, closed with 1008."""
        self.stats[f"ws.{reason.replace(' ', '_')}"] += 1
        kind = {BAD_KEY: "key", BAD_TOKEN: "token"}.get(reason, "anonymous")
        self.reject(kind, reason)
        self.transport.port.report_auth_failure("ws", address_of(self.ws), reason)
        self.close(CLOSE_POLICY, reason)

    def refuse_key(self, key: str) -> None:
        """Refuse the key a handshake presented (empty: no credentials at all)."""
        self.refuse(BAD_KEY if key else NO_CREDENTIALS)

    def _upgrade_token(self) -> bool:
        """Look at the bearer token of the opening handshake; False: refused (closing)."""
        request = self.ws.request
        token = presented_token(request.headers, request.path) if request is not None else None
        if token is None:
            return True
        self.token_identity = self.transport.identify_token(token, self.dialect)
        if self.token_identity is None:
            self.refuse(BAD_TOKEN)
            return False
        return True

    def open(self, identity: Identity) -> Session:
        """Open the router session for the authenticated ``identity``."""
        self.restricted = identity.restricted
        self.identity = identity
        now = self.transport.port.clock()
        self.session = self.broker.open_session("ws", self, identity, now, label=f"ws:{self.cid}")
        self.transport.register(self)
        return self.session

    def worker_address(self, name: str = "") -> str:
        """Where this connection's workers are, for people: ``HOST:PORT (NAME)`` with the
        connection's registered ``name``, else its identity's name (its key's role)."""
        who = name or (self.identity.name if self.identity is not None else "")
        where = address_of(self.ws)
        return f"{where} ({who})" if where and who else where or who

    def release(self, reason: str) -> None:
        """The connection ended: close the session, revoke the private grants, forget the
        workers and the requests they held."""
        self.closing = True
        self._wake.set()
        self.transport.unregister(self)
        if self.session is not None and not self.session.closed:
            self.broker.close_session(self.session, self.transport.port.clock(), reason)
        self.inflight.clear()
        self.workers.clear()

    def subscribe_private(self) -> None:
        """Subscribe to ``MSG:<cid>``: the connection's own channel, which the transport owns,
        so the access policy is not asked (a deny-by-default ``[access]`` table does not take
        it away, and nobody is reported as denied for it)."""
        assert self.session is not None
        private = f"MSG:{self.cid}"
        try:
            self.broker.subscribe(self.session, private, check=False)
        except MaitredError as exc:
            log.debug("ws: %s has no private channel: %s", self.cid, exc.reason)

    # -- SessionSink (each dialect implements these; they must never block) ------------------

    @abstractmethod
    def deliver_request(self, worker: Worker, request: Request) -> None: ...

    @abstractmethod
    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None: ...

    @abstractmethod
    def deliver_error(self, request: Request, error: MaitredError) -> None: ...

    @abstractmethod
    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None: ...

    def worker_removed(self, worker: Worker, reason: str) -> None:
        """The router dropped one of this connection's workers: forget it and its requests."""
        if self.workers.get(worker.service.name) is worker:
            del self.workers[worker.service.name]
        for rid in [r for r, w in self.inflight.items() if w is worker]:
            del self.inflight[rid]

    # -- the connection's life ----------------------------------------------------------------

    @abstractmethod
    async def handshake(self) -> bool:
        """Read and answer the dialect's first frame; False closes the connection."""
        ...

    @abstractmethod
    def on_text(self, text: str) -> None: ...

    @abstractmethod
    def on_binary(self, data: bytes) -> None: ...

    async def run(self) -> None:
        writer = asyncio.ensure_future(self.writer())
        reason = "closed"
        try:
            try:
                ok = self._upgrade_token() and await asyncio.wait_for(
                    self.handshake(), self.transport.config.handshake_timeout
                )
            except TimeoutError:
                self.stats["ws.handshake_timeout"] += 1
                self.close(CLOSE_POLICY, "no key in time")
                ok = False
            if ok:
                reason = await self._read()
        except ConnectionClosed as exc:  # during the handshake
            reason = self._ended_by(exc)
        except Exception:
            self._internal_error()
            reason = "internal error"
        finally:
            self.release(reason)
            self.closing = True
            self._wake.set()
            try:
                await asyncio.wait_for(writer, self.transport.config.close_timeout + 1)
            except (TimeoutError, ConnectionClosed):
                writer.cancel()
            self._discard()  # what the peer will never read

    async def _read(self) -> str:
        """Hand each message to the dialect as it is read (:meth:`WsLink.take_over`), until
        the connection is lost, a message comes while closing, or a handler fails; the reason
        the session ends."""
        done = self._done = self._loop.create_future()
        self.ws.take_over(self._on_message, self._on_lost)
        await done
        if self._failed:
            return "internal error"
        if not self._lost:
            return "closed"
        exc = self.ws.close_exc
        return "closed" if isinstance(exc, ConnectionClosedOK) else self._ended_by(exc)

    def _on_message(self, message: str | bytes) -> None:
        if self.closing:  # stop reading, as ``async for`` with a ``break`` would
            self._stop_reading()
            return
        try:
            if isinstance(message, str):
                self.on_text(message)
            else:
                self.on_binary(message)
        except Exception:
            self._internal_error()
            self._failed = True
            self._stop_reading()

    def _on_lost(self) -> None:
        self._lost = True
        self._stop_reading()

    def _stop_reading(self) -> None:
        self.ws.on_message = None
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def _ended_by(self, exc: ConnectionClosed) -> str:
        """Why a connection that websockets closed ended (a frame too big is counted)."""
        sent = exc.sent
        if sent is not None and sent.code == CLOSE_TOO_BIG:
            self.stats["ws.oversized"] += 1
            return "frame too big"
        return "connection lost"

    def _internal_error(self) -> None:
        """A bug in a dialect handler: close this connection only, with 1011."""
        log.exception("ws: connection %s failed", self.cid)
        self.stats["ws.internal_errors"] += 1
        self.close(CLOSE_INTERNAL, "internal error", flush=False)


def address_of(ws: ServerConnection) -> str:
    """The peer's ``HOST:PORT`` (``[HOST]:PORT`` over IPv6), "" when it has none (a Unix
    socket)."""
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address) if address else ""


def peer_of(ws: ServerConnection) -> str:
    """The peer's address, for logs and rejection notes."""
    address = ws.remote_address
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address) if address else "?"
