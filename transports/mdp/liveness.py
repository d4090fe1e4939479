"""The MDP transport's workers: READY, liveness (heartbeats, the socket monitor that reports a
lost connection by its file descriptor), protocol violations and removal. A mixin of
:class:`~maitred.transports.mdp.adapter.MdpTransport`, which owns the state named below (see
its module docstring for why connections are watched)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import zmq
from zmq.backend import Socket as _BaseSocket

from maitred.core.access import Identity
from maitred.core.errors import MaitredError
from maitred.core.logs import RejectionLog
from maitred.core.routing.model import BaseSink, Session, Worker
from maitred.core.transport import BrokerPort
from maitred.transports.mdp import codec
from maitred.transports.mdp.config import MdpConfig

log = logging.getLogger("maitred.transports.mdp")

_NOBLOCK = int(zmq.NOBLOCK)
_recv_frame = _BaseSocket.recv
_get_opt = cast(Callable[[Any, int], int], _BaseSocket.get)  # EVENTS is an int option
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
#: distinct service names kept decoded (least recently used out); each is at most
#: ``[broker] max_name_length`` bytes, so the cache holds a few MiB at most
NAME_CACHE = 4096


@functools.lru_cache(maxsize=NAME_CACHE)
def _decode_name(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


_SRCFD = int(zmq.SRCFD)
#: a socket monitor's event frame: event number (uint16), value (uint32; the fd for DISCONNECTED)
_EVENT = struct.Struct("=HI")
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)


def peer_address(fd: int) -> str:
    """Where the connection on ``fd`` comes from, for people: ``HOST:PORT`` over TCP
    (``[HOST]:PORT`` over IPv6), the socket path over ``ipc://``, "" when there is no fd
    (inproc) or it cannot be read. Reads a duplicate of the fd, so libzmq's stays untouched."""
    if fd < 0:
        return ""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return ""
    try:
        if sock.family == socket.AF_UNIX:
            path = sock.getsockname()  # the peer of an ipc:// connection has no name; ours does
            return path if isinstance(path, str) else ""
        name = sock.getpeername()
        if sock.family == socket.AF_INET6:
            return f"[{name[0]}]:{name[1]}"
        return f"{name[0]}:{name[1]}"
    except OSError:
        return ""
    finally:
        sock.close()


class _Unset:
    pass


_UNSET: Any = _Unset()


class _MdpWorker:
    __slots__ = ("dialect", "fd", "rid", "session", "worker")

    def __init__(self, rid: bytes, dialect: int, session: Session, fd: int) -> None:
        self.rid = rid
        self.dialect = dialect
        self.session = session
        self.worker: Worker = _UNSET
        #: the file descriptor of its connection (-1: unknown, e.g. inproc)
        self.fd = fd


class MdpWorkers(BaseSink):
    """READY, liveness and removal of the transport's workers."""

    config: MdpConfig
    port: BrokerPort
    broker: BrokerPort
    socket: zmq.Socket[Any] | None
    stats: Counter[str]
    rejections: RejectionLog
    heartbeat_interval: float
    idle_timeout: float
    _identity: Identity
    _workers: dict[bytes, _MdpWorker]
    _fds: dict[int, _MdpWorker]
    _lost: list[_MdpWorker]
    _monitor: zmq.Socket[Any] | None
    _head: zmq.Frame | None
    _srcfd: int
    _loop: asyncio.AbstractEventLoop | None
    _hb_timer: asyncio.TimerHandle | None
    _scheduled: bool
    _closed: bool
    _send: Callable[[bytes, list[bytes]], None]
    _reject: Callable[[bytes, str], None]
    _reschedule: Callable[[], None]
    _monitor_event: Callable[[int, int, bytes], None]

    def _on_monitor(self) -> None:
        monitor = self._monitor
        if monitor is None or self.socket is None:
            return
        if _get_opt(monitor, _EVENTS) & _POLLIN:
            self._read_monitor(monitor)
        if self._lost and not self._scheduled:
            # read what the lost peers sent before they went, then drop them
            self._reschedule()

    def _read_monitor(self, monitor: zmq.Socket[Any]) -> None:
        """Take the workers whose connection closed off their fds at once (a new connection may
        get the same fd and send READY before they are dropped), and queue them for
        :meth:`_drop_lost`."""
        while True:
            where = b""
            try:
                event = _recv_frame(monitor, _NOBLOCK, True)
                while monitor.getsockopt(zmq.RCVMORE):
                    where = _recv_frame(monitor, _NOBLOCK, True)  # the endpoint
            except zmq.Again:
                return
            if len(event) < _EVENT.size:
                continue
            kind, fd = _EVENT.unpack_from(event)
            if kind != _DISCONNECTED:
                self._monitor_event(kind, fd, where)  # a failed CURVE handshake (CurvePeers)
                continue
            w = self._fds.pop(fd, None)
            if w is not None:
                self._lost.append(w)

    def _drop_lost(self, now: float) -> None:
        lost, self._lost = self._lost, []
        for w in lost:
            if self._workers.get(w.rid) is not w:
                continue  # it left some other way meanwhile
            del self._workers[w.rid]
            self.stats["mdp.peers_lost"] += 1
            log.info(
                "mdp: worker %s of %s lost its connection", w.worker.label, w.worker.service.name
            )
            self.broker.close_session(w.session, now, "disconnected")

    def _forget(self, w: _MdpWorker) -> None:
        """``w`` is no longer a worker: forget its fd."""
        if self._fds.get(w.fd) is w:
            del self._fds[w.fd]

    def _on_ready(self, rid: bytes, dialect: int, service_raw: bytes, now: float) -> None:
        old = self._workers.get(rid)
        if old is not None:
            self._violation(rid, dialect, "second READY")
            return
        # connections closed so far: read before this worker's fd is taken, so a worker on a
        # reused fd is never taken for the one that left it (see ``_read_monitor``)
        monitor = self._monitor
        if monitor is not None and _get_opt(monitor, _EVENTS) & _POLLIN:
            self._read_monitor(monitor)
        if len(service_raw) > self.broker.max_name_length:
            self._violation(rid, dialect, "READY with a service name too long")
            return
        service = _decode_name(service_raw)
        if service is None:
            self._violation(rid, dialect, "READY with a service name that is not UTF-8")
            return
        if service.startswith("mmi."):
            self._violation(rid, dialect, "READY for an mmi.* service")
            return
        session = self.broker.open_session(
            "mdp", self, self._identity, now, label=f"mdp:{rid.hex()}"
        )
        mw = _MdpWorker(rid, dialect, session, self._source_fd())
        self._workers[rid] = mw  # before add_worker, which may dispatch to it at once
        if mw.fd >= 0:
            self._fds[mw.fd] = mw
        try:
            mw.worker = self.broker.register_worker(
                session,
                service,
                now,
                credit=self.config.worker_credit,
                max_credit=self.config.worker_credit_max,
                pipeline_below=self.config.worker_pipeline_below,
                tag=mw,
                label=f"mdp:{rid.hex()}",
                address=peer_address(mw.fd),
                idle_timeout=self.idle_timeout,
            )
        except MaitredError as exc:
            del self._workers[rid]
            self._forget(mw)
            self.stats[f"mdp.ready_refused.{exc.code.name.lower()}"] += 1
            self.rejections.note("refused", rid.hex(), f"READY for {service}: {exc.reason}")
            self._send(rid, codec.worker_disconnect(dialect))
            self.broker.close_session(session, now, f"refused: {exc.reason}")
            return
        worker = mw.worker
        log.debug(
            "worker %s ready for %s (%s)", worker.label, service, codec.DIALECT_NAMES.get(dialect)
        )

    def _source_fd(self) -> int:
        """The fd of the connection the message being handled came in on (-1: none, e.g.
        inproc, where libzmq has no fd to report)."""
        head = self._head
        if head is None:
            return self._srcfd  # the compiled loop's (frames.py), else -1
        try:
            fd = head.get(_SRCFD)
        except zmq.ZMQError:
            return -1
        return fd if isinstance(fd, int) else -1

    def _violation(self, rid: bytes, dialect: int, reason: str) -> None:
        """A worker broke the protocol: DISCONNECT it and forget it."""
        self._reject(rid, reason)
        self._send(rid, codec.worker_disconnect(dialect))
        w = self._workers.pop(rid, None)
        if w is not None:
            self._forget(w)
            self.broker.close_session(w.session, self.port.clock(), f"protocol violation: {reason}")

    def _heartbeat(self) -> None:
        if self._closed or self._loop is None:
            return
        for w in self._workers.values():
            self._send(w.rid, codec.worker_heartbeat(w.dialect))
        self._hb_timer = self._loop.call_later(self.heartbeat_interval, self._heartbeat)

    def worker_removed(self, worker: Worker, reason: str) -> None:
        w: _MdpWorker | None = worker.tag
        if w is None:
            return
        self._send(w.rid, codec.worker_disconnect(w.dialect))
        self._forget(w)
        if self._workers.get(w.rid) is w:
            del self._workers[w.rid]
        if self._loop is not None:
            self._loop.call_soon(self._close_worker_session, w.session, reason)

    def _close_worker_session(self, session: Session, reason: str) -> None:
        self.broker.close_session(session, self.port.clock(), reason)
