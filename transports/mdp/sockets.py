"""How maitred's Python ZeroMQ peers (client, worker, subscriber, publisher; sync and asyncio)
open their sockets, and how the broker's endpoints bind, in one place."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, TypeVar, cast

import zmq
import zmq.asyncio

from maitred.transports.mdp.curve import ClientKeys, apply_client_curve

log = logging.getLogger("maitred.transports.mdp")

__all__ = ["SocketT", "bind_address", "connect_socket", "new_context", "recv_future"]

#: a sync (``zmq.Socket``) or asyncio (``zmq.asyncio.Socket``) socket
SocketT = TypeVar("SocketT", bound="zmq.Socket[Any]")


def connect_socket(
    context: zmq.Context[SocketT],
    kind: int,
    endpoint: str,
    *,
    linger: int = 0,
    curve: ClientKeys | None = None,
) -> SocketT:
    """A new socket of ``kind`` from ``context`` (the socket type follows it: sync or asyncio),
    connected to ``endpoint``, with LINGER ``linger`` ms; a CURVE client with ``curve`` (the
    keys :func:`~maitred.transports.mdp.curve.client_curve` reads) when given."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, linger)
    apply_client_curve(sock, curve)
    sock.connect(endpoint)
    return sock


def recv_future(sock: zmq.asyncio.Socket) -> asyncio.Future[list[bytes]]:
    """``sock.recv_multipart()`` as the Future it is (pyzmq types it loosely)."""
    return cast("asyncio.Future[list[bytes]]", sock.recv_multipart())


def bind_address(endpoint: str) -> str:
    """``endpoint`` as ZeroMQ binds it: a TCP port 0 becomes ``*`` (any free port)."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        return endpoint[:-2] + ":*"
    return endpoint


def new_context(sched: str) -> zmq.Context[Any]:
    """A ZeroMQ context whose background threads (created with the first socket) run under
    ``sched`` (see ``MdpConfig.io_thread_sched``).

    Why: libzmq's I/O thread sleeps whenever it has nothing to do and is woken for the next
    message sent. Under CFS a freshly woken thread may preempt the one that woke it on the same
    CPU, so with few cores each send can cost the event loop tens of microseconds. SCHED_BATCH
    (no privilege needed) turns that wake-up preemption off for those threads only."""
    context: zmq.Context[Any] = zmq.Context()
    policy = getattr(os, "SCHED_BATCH", None)
    option = getattr(zmq, "THREAD_SCHED_POLICY", None)
    if sched == "batch" and sys.platform.startswith("linux") and policy and option is not None:
        try:
            context.set(option, policy)
        except zmq.ZMQError as exc:  # an old libzmq: run with the default policy
            log.debug("mdp: cannot set the I/O thread policy: %s", exc)
    return context
