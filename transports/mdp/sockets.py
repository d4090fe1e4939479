"""How maitred's Python ZeroMQ peers (client, worker, subscriber, publisher; sync and asyncio)
open their sockets, in one place."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar, cast

import zmq
import zmq.asyncio

from maitred.transports.mdp.curve import ClientKeys, apply_client_curve

__all__ = ["SocketT", "connect_socket", "recv_future"]

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
