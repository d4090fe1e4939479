"""The MDP transport: one ROUTER socket for clients and workers of every dialect.

Hot path (docs/topics/design.md): the socket's FD is registered with ``loop.add_reader``; when
readable, messages are drained with NOBLOCK in batches until EAGAIN, each routed at once (sends
never await: a ROUTER send either queues or, at the peer's high-water mark, drops). No per-message
logging, task, hook lookup or JSON.

MDP clients need no session state: each request's correlation carries the client's routing id,
dialect and service frame, so the reply goes back in kind. All clients of an endpoint share one
quiet session (identity from ``[transports.mdp]``). Each worker is a session of its own, created
on a valid READY and closed on DISCONNECT, expiry, a protocol violation or the loss of its
connection.

A worker killed without a word (kill -9, a crash, a pulled cable) sends no DISCONNECT, and a
ROUTER socket says nothing when a peer goes. So the transport watches connections itself: the
ROUTER socket runs ZMTP heartbeats (a peer's libzmq answers them even while its application is
busy; one that does not within the liveness window has its connection closed), and a socket
monitor reports each closed connection by its file descriptor. Each worker's descriptor is read
from its READY message, so a lost connection names the worker at once and the router fails or
redelivers what it held, by the service's policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import zmq
from zmq.backend import Socket as _BaseSocket

from maitred.core.access import Identity
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.logs import RejectionLog
from maitred.core.routing.model import Body, Headers, ReplyKind, Request, Session, Worker
from maitred.core.transport import BrokerPort
from maitred.transports.mdp import codec
from maitred.transports.mdp.codec import (
    CLIENT_REQUEST,
    DISCONNECT,
    HEARTBEAT,
    READY,
    REPLY_FINAL,
    REPLY_PARTIAL,
    MdpFormatError,
)
from maitred.transports.mdp.config import MdpConfig
from maitred.transports.mdp.curve import CurvePeers
from maitred.transports.mdp.frames import LOOP, SHORT_TURN, CompiledLoop
from maitred.transports.mdp.liveness import (
    _DISCONNECTED,
    NAME_CACHE,
    MdpWorkers,
    _decode_name,
    _MdpWorker,
)
from maitred.transports.mdp.pubsub import ZmqPubSub
from maitred.transports.mdp.sockets import bind_address, new_context

log = logging.getLogger("maitred.transports.mdp")

_FINAL = ReplyKind.FINAL
# plain ints: pyzmq's flag enums cost an enum construction per ``|`` on the hot path
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
# the Cython base-class methods: about half the cost of send_multipart/recv_multipart
_send_frame = _BaseSocket.send
_recv_frame = _BaseSocket.recv
_get_opt = cast(Callable[[Any, int], int], _BaseSocket.get)  # EVENTS is an int option
_EVENTS = int(zmq.EVENTS)
_client_reply = codec.client_reply
_parse = codec.parse
_worker_request = codec.worker_request
_POLLIN = int(zmq.POLLIN)
_NOBLOCK_MORE = _NOBLOCK | _SNDMORE
#: a turn of fewer messages is short: the next one asks ZMQ_EVENTS after each of its first
#: messages instead of reading until EAGAIN (see ``_on_readable``)
_PEEK = SHORT_TURN


__all__ = ["MdpConfig", "MdpTransport", "cli_addresses"]


class MdpTransport(CurvePeers, MdpWorkers, CompiledLoop):
    """The ``mdp`` transport (see the module docstring)."""

    name = "mdp"

    def __init__(
        self, config: MdpConfig, port: BrokerPort, context: zmq.Context[Any] | None = None
    ):
        self.config = config
        self.port = port
        self.broker = port
        self._own_context = context is None
        self.context: zmq.Context[Any] = context or new_context(config.io_thread_sched)
        self.socket: zmq.Socket[Any] | None = None
        self._bound: list[str] = []
        live = port.liveness
        self.heartbeat_interval = config.heartbeat_interval or live.heartbeat_interval
        self.idle_timeout = self.heartbeat_interval * (config.liveness or live.liveness)
        self._workers: dict[bytes, _MdpWorker] = {}
        #: connection fd -> the worker on it (see the module docstring)
        self._fds: dict[int, _MdpWorker] = {}
        #: service frames of requests -> their names, checked (length, UTF-8) when first seen
        self._names: dict[bytes, str] = {}
        #: workers whose connection closed, dropped once what they sent before is read
        self._lost: list[_MdpWorker] = []
        self._monitor: zmq.Socket[Any] | None = None
        self._monitor_fd: int | None = None
        #: the first frame after the routing id of the message being handled (its source fd)
        self._head: zmq.Frame | None = None
        self._io, self._sock_ptr, self._srcfd = None, 0, -1  # the compiled loop (frames.py)
        self._clients: Session | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._hb_timer: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._draining = False
        self._closed = False
        #: messages (routing id first) handed to us from outside ``_on_readable`` (another
        #: transport's caller or worker): sent together at the end of the loop turn, so a burst
        #: costs libzmq's I/O thread one wake-up instead of one per message
        self._outq: list[list[bytes]] = []
        self._out_scheduled = False
        #: ask ZMQ_EVENTS after each of the first this many messages of a turn (see
        #: ``_on_readable``): ``_PEEK`` after a short turn, 0 after a burst
        self._peek = _PEEK
        #: the compiled loop's twin of it: the last turn was short (fewer than ``_PEEK``)
        self._lone = True
        #: the publish/subscribe endpoints, when configured (transports/mdp/pubsub.py)
        self.pubsub: ZmqPubSub | None = None
        self.stats = port.stats
        #: peer-caused rejections: DEBUG each, a WARNING summary every 10 s (a peer is known
        #: by its ZeroMQ routing id: libzmq does not tell the address)
        self.rejections = RejectionLog(
            log,
            {"dropped": "malformed MDP messages dropped", "refused": "MDP READYs refused"},
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        sock = self.socket = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, self.config.linger_ms)
        sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        sock.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        # a send to a peer at its high-water mark (or gone) fails with EAGAIN (EHOSTUNREACH)
        # instead of vanishing: sends are non-blocking, so it is counted and dropped
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # a single frame larger than the whole body limit (plus headroom) drops the connection in
        # libzmq before Python sees it; smaller oversized messages are refused per message below
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_size + 4096)
        # ZMTP heartbeats: a connection whose peer answers nothing for the liveness window is
        # closed by libzmq (the monitor below then reports it)
        if self.config.zmtp_heartbeats:
            sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(self.heartbeat_interval * 1000)))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(self.idle_timeout * 1000)))
        try:
            curve = self._curve_prepare(sock)
            for endpoint in self.config.endpoints:
                if curve:
                    self._curve_endpoint(sock, endpoint in curve)
                sock.bind(bind_address(endpoint))
                self._bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except (zmq.ZMQError, MaitredError) as exc:
            sock.close(0)
            self.socket = None
            if self._zap is not None:
                await self._zap.close()
                self._zap = None
            if self._own_context:
                self.context.term()
            if isinstance(exc, MaitredError):
                raise
            raise MaitredError(
                f"mdp: cannot bind {endpoint}: {exc.strerror}", ErrorCode.BAD_REQUEST
            ) from None
        identity = Identity(self.config.identity, frozenset(self.config.roles))
        self._clients = self.broker.open_session(
            "mdp", self, identity, self.port.clock(), label="mdp:clients", quiet=True
        )
        self._identity = identity
        if self._zap is not None:
            self._curve_started()
        self._choose_loop(sock, LOOP if self._zap is None else None)
        self._fd = sock.getsockopt(zmq.FD)
        monitor_at = f"inproc://maitred-mdp-monitor-{id(self):x}"
        sock.monitor(monitor_at, _DISCONNECTED | self._curve_monitor_events())
        monitor = self._monitor = self.context.socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(monitor_at)
        self._monitor_fd = monitor.getsockopt(zmq.FD)
        loop.add_reader(self._monitor_fd, self._on_monitor)
        loop.add_reader(self._fd, self._on_readable)
        self._hb_timer = loop.call_later(self.heartbeat_interval, self._heartbeat)
        self._on_readable()
        # ZMQ_FD is edge-triggered: asking ZMQ_EVENTS once arms the monitor's fd (else an event
        # that came before the first READY, e.g. a failed CURVE handshake, would wait for one)
        self._on_monitor()
        if self.config.pub_endpoints or self.config.publish_endpoints:
            self.pubsub = ZmqPubSub(self.config, self.port, self.context, identity)
            try:
                await self.pubsub.start()
            except BaseException:
                await self.close()
                raise

    def endpoints(self) -> list[str]:
        return list(self._bound)

    async def stop_accepting(self) -> None:
        # the router refuses new requests and READYs while draining; replies keep flowing
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.rejections.close()
        if self._hb_timer is not None:
            self._hb_timer.cancel()
        self._flush_out()
        now = self.port.clock()
        for w in list(self._workers.values()):
            self._send(w.rid, codec.worker_disconnect(w.dialect))
            self.broker.close_session(w.session, now, "broker closing")
        self._workers.clear()
        await self._curve_close(now)
        if self._clients is not None:
            self.broker.close_session(self._clients, now, "broker closing")
        if self.pubsub is not None:
            await self.pubsub.close()
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        if self._loop is not None and self._monitor_fd is not None:
            self._loop.remove_reader(self._monitor_fd)
        if self.socket is not None and self._monitor is not None:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
        if self._monitor is not None:
            self._monitor.close(0)
            self._monitor = None
        if self.socket is not None:
            self._io = None
            self.socket.close(self.config.linger_ms)
            self.socket = None
        if self._own_context:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.context.term)

    # -- receive ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        self._scheduled = False
        sock = self.socket
        if sock is None:
            return
        if self._outq:
            self._flush_out()  # keep the order of everything sent
        # the monitor (closed connections) is read by ``_on_monitor`` and before each READY
        # (``_on_ready``), not here: asking it costs a system call per batch
        # with CURVE on, each message is handled as the identity of its connection
        handle = self._handle_curve if self._zap is not None else self._handle
        now = self.port.clock()
        self._draining = True
        peek = self._peek
        try:
            if self._io is not None:  # the compiled loop (frames.py)
                self._drain_compiled(self._io, now)
                return
            for i in range(self.config.batch):
                try:
                    # a ROUTER socket puts the peer's routing id first, always followed by the
                    # message itself: read it as bytes, with no question about more frames
                    frames = [_recv_frame(sock, _NOBLOCK, True)]
                except zmq.Again:
                    break
                # then Frame.more per frame (a copy=False receive costs ~0.4 µs more than a
                # copy=True one, but getsockopt(RCVMORE) after it costs ~0.85 µs)
                frame = self._head = _recv_frame(sock, _NOBLOCK, False)
                frames.append(frame.bytes)
                while frame.more:
                    frame = _recv_frame(sock, _NOBLOCK, False)
                    frames.append(frame.bytes)
                handle(frames, now)
                if i < peek:
                    # The last turn was short (strict MDP: a worker's reply, a client's refill):
                    # ask ZMQ_EVENTS after each of the first messages rather than end the turn
                    # with a receive that fails with EAGAIN (a system call and a Python
                    # exception, about three times the cost of the question). What the first
                    # message produced goes out before the question (a strict worker's next
                    # request is the critical path); later ones are sent when nothing else
                    # waits. A question after the last sends re-arms the FD (see below).
                    if not i and self._outq:
                        self._flush_out()
                    if not _get_opt(sock, _EVENTS) & _POLLIN:
                        if self._outq:
                            self._flush_out()
                            if _get_opt(sock, _EVENTS) & _POLLIN:
                                continue
                        self._peek = _PEEK
                        if self._lost:
                            self._drop_lost(now)
                        return
            else:
                self._peek = 0
                self._flush_out()
                self._reschedule()  # let timers and other transports run, then go on
                return
            # i: the messages read before EAGAIN; a longer turn is a burst (pipelined workers,
            # many clients): the next one reads until EAGAIN and sends once, without questions
            self._peek = _PEEK if i < _PEEK else 0
            # what the batch produced goes out together: one wake-up of libzmq's I/O thread
            # for the burst rather than one per message
            self._flush_out()
            if self._lost:
                self._drop_lost(now)  # all they sent before their connection closed is read
            # The FD is edge-triggered and our own sends may have consumed its edge: asking
            # ZMQ_EVENTS re-arms it and says whether a message slipped in meanwhile.
            if _get_opt(sock, _EVENTS) & _POLLIN:
                self._reschedule()
        except zmq.ZMQError as exc:
            if not self._closed:
                log.error("mdp socket error: %s", exc)
        finally:
            self._head = None
            self._draining = False
            if self._outq and not self._out_scheduled and self._loop is not None:
                self._out_scheduled = True  # left over after an error: send them soon
                self._loop.call_soon(self._flush_out)

    def _sent_outside_drain(self) -> None:
        """A send from outside ``_on_readable`` (another transport's caller, a timer) may let
        libzmq consume the FD's edge while messages wait: look once more, soon (coalesced)."""
        if not self._draining and not self._scheduled:
            self._reschedule()

    def _defer(self, frames: list[bytes]) -> None:
        self._outq.append(frames)
        if not self._draining and not self._out_scheduled and self._loop is not None:
            self._out_scheduled = True
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        """Send what :meth:`_defer` queued, in order."""
        self._out_scheduled = False
        queue, self._outq = self._outq, []
        sock = self.socket
        if not queue or sock is None:
            return
        if self._io is not None:
            queue = self._send_compiled(self._io, queue)
        send = _send_frame
        for frames in queue:
            # every message has a routing id and at least one frame after it; the lists are
            # ours, so the last frame is taken off rather than an index compared per frame
            last = frames.pop()
            try:
                for frame in frames:
                    send(sock, frame, _NOBLOCK_MORE)
                send(sock, last, _NOBLOCK)
            except zmq.ZMQError as exc:
                self._send_failed(frames[0], exc)
        if not self._draining:
            self._sent_outside_drain()

    def _reschedule(self) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._on_readable)

    def _handle(self, frames: list[bytes], now: float) -> None:
        rid = frames[0]
        try:
            command, dialect, name, body = _parse(frames, 1)
        except MdpFormatError as exc:
            self._reject(rid, exc.reason)
            return
        if command == CLIENT_REQUEST:
            self._on_request(rid, dialect, name, body, now)
        elif command == REPLY_FINAL or command == REPLY_PARTIAL:
            w = self._workers.get(rid)
            if w is None:
                self._violation(rid, dialect, "reply from a peer that never sent READY")
                return
            try:
                token = int(name)
            except ValueError:
                self._reject(rid, "reply with an unknown client address")
                self.broker.touch(w.worker, now)
                return
            config = self.config
            n = len(body)
            if (
                n > config.max_frames
                or (len(body[0]) if n == 1 else sum(map(len, body))) > config.max_message_size
            ):
                self._reject(rid, "oversized reply")
                self.broker.reply_error(
                    w.worker,
                    token,
                    MaitredError(
                        "the reply is larger than the broker accepts", ErrorCode.TOO_LARGE
                    ),
                    now,
                )
                return
            if not self.broker.reply(w.worker, token, body, now, command == REPLY_FINAL):
                self.stats["mdp.late_replies"] += 1
        elif command == HEARTBEAT:
            w = self._workers.get(rid)
            if w is None:
                self._violation(rid, dialect, "HEARTBEAT from a peer that never sent READY")
            else:
                self.broker.touch(w.worker, now)
        elif command == READY:
            self._on_ready(rid, dialect, name, now)
        elif command == DISCONNECT:
            w = self._workers.pop(rid, None)
            if w is not None:
                log.debug("worker %s of %s disconnected", w.worker.label, w.worker.service.name)
                self._forget(w)
                self.broker.close_session(w.session, now, "disconnect")

    def _on_request(
        self, rid: bytes, dialect: int, service_raw: bytes, body: list[bytes], now: float
    ) -> None:
        clients = self._clients
        assert clients is not None
        config = self.config
        n = len(body)
        service = self._names.get(service_raw)
        if (
            service is not None
            and n <= config.max_frames
            and (len(body[0]) if n == 1 else sum(map(len, body))) <= config.max_message_size
        ):
            # the common case: a name seen before (so checked then), a body of allowed size
            self.broker.submit(clients, service, body, (rid, dialect, service_raw), now)
            return
        if len(service_raw) > self.broker.max_name_length:
            # refused before it is decoded or cached: a flood of long distinct names holds
            # nothing once each has been answered
            self._reject(rid, "service name too long")
            self._refuse(
                rid,
                dialect,
                service_raw,
                now,
                MaitredError(
                    f"service name longer than {self.broker.max_name_length} bytes",
                    ErrorCode.BAD_REQUEST,
                ),
            )
            return
        service = _decode_name(service_raw)
        if not service:
            self._reject(rid, "empty service name" if service == "" else "service name not UTF-8")
            return
        names = self._names
        if len(names) >= NAME_CACHE:
            names.clear()  # bounded: distinct names beyond it are decoded again
        names[service_raw] = service
        if n > config.max_frames or sum(map(len, body)) > config.max_message_size:
            self._reject(rid, "oversized request")
            self._refuse(
                rid,
                dialect,
                service_raw,
                now,
                MaitredError("the request is larger than the broker accepts", ErrorCode.TOO_LARGE),
            )
            return
        self.broker.submit(clients, service, body, (rid, dialect, service_raw), now)

    def _refuse(
        self, rid: bytes, dialect: int, service_raw: bytes, now: float, error: MaitredError
    ) -> None:
        """Answer a client's request the router never saw with an error reply."""
        clients = self._clients
        assert clients is not None
        request = Request(
            id=0,
            service="",
            body=(),
            caller=clients,
            correlation=(rid, dialect, service_raw),
            deadline=0.0,
            accepted=now,
        )
        self.deliver_error(request, error)

    def _reject(self, rid: bytes, reason: str) -> None:
        """Drop a message: counted, logged at debug level, no state created."""
        self.stats["mdp.rejected"] += 1
        self.stats[f"mdp.rejected.{reason}"] += 1
        self.rejections.note("dropped", rid.hex(), reason)

    # -- send ---------------------------------------------------------------------------------

    def _send(self, rid: bytes, frames: list[bytes]) -> None:
        sock = self.socket
        if sock is None:
            return
        if self._outq:
            self._flush_out()  # keep the order of everything sent
        if self._io is not None:
            self._send_compiled(self._io, [[rid, *frames]])
            if not self._draining:
                self._sent_outside_drain()
            return
        try:
            # never blocks: at the peer's high-water mark (ROUTER_MANDATORY) it raises EAGAIN
            _send_frame(sock, rid, _NOBLOCK_MORE)
            last = len(frames) - 1
            for i, frame in enumerate(frames):
                _send_frame(sock, frame, _NOBLOCK_MORE if i < last else _NOBLOCK)
        except zmq.ZMQError as exc:
            self._send_failed(rid, exc)
        if not self._draining:
            self._sent_outside_drain()

    # -- SessionSink --------------------------------------------------------------------------

    def deliver_request(self, worker: Worker, request: Request) -> None:
        w: _MdpWorker = worker.tag
        if self.socket is not None:
            frames = _worker_request(w.dialect, b"%d" % request.id, request.body, w.rid)
            if self._draining:  # inside ``_on_readable``: sent at the end of its batch
                self._outq.append(frames)
            else:
                self._defer(frames)

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        rid, dialect, service_raw = request.correlation
        if self.socket is None:
            return
        # None: a partial to an MDP/0.1 client, a dialect that has only the final reply
        if body:
            frames = _client_reply(dialect, kind is _FINAL, service_raw, body, rid)
            if frames is None:
                return
            if self._draining:  # inside ``_on_readable``: sent at the end of its batch
                self._outq.append(frames)
            else:
                self._defer(frames)
        else:  # rare (an empty reply): sent at once
            frames = _client_reply(dialect, kind is _FINAL, service_raw, body)
            if frames is not None:
                self._send(rid, frames)

    def _send_failed(self, rid: bytes, exc: zmq.ZMQError) -> None:
        if exc.errno == zmq.EAGAIN:
            # the peer is at its high-water mark: it does not read what it is sent
            self.stats["mdp.peer_full"] += 1
        else:
            self.stats["mdp.send_failed"] += 1
        log.debug("mdp: send to %s failed: %s", rid.hex(), exc)

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        self.stats[f"mdp.errors.{int(error.code)}"] += 1
        if not self.config.error_replies:
            return
        rid, dialect, service_raw = request.correlation
        body = codec.error_body(error.code, error.reason)
        frames = _client_reply(dialect, True, service_raw, body)
        if frames is not None:
            self._send(rid, frames)

    # deliver_event: BaseSink's no-op (MDP has no subscriptions, nothing is published to an
    # MDP session)


def cli_addresses(addresses: Sequence[str]) -> dict[str, Any]:
    return {"endpoints": list(addresses)}
