"""The MDP broker's frame loop: compiled where it could be built, pure Python elsewhere.

About half the broker's CPU per request went to pyzmq's per-frame calls (a Python call, a Frame
or bytes object and a few checks for each of the ~24 frames a request and its reply take through
the broker). ``_frames`` (a Cython extension, built when the package is installed where Cython
and a C compiler are at hand) reads whole batches of messages and sends whole queues in one call
each, straight through libzmq's C API. It calls the libzmq pyzmq itself loaded: the functions are
looked up in pyzmq's own extension module (whose dependencies include its libzmq), so there is
never a second copy of libzmq in the process.

Chosen once, at import: the compiled loop when ``_frames`` imports and its functions resolve;
the pure-Python loop (adapter.py, pyzmq's socket methods) when it was not built, cannot be
bound, or ``MAITRED_PURE=1`` is set in the environment. ``IMPLEMENTATION`` says which and
``REASON`` why; the MDP transport reports it as the ``mdp.frame_loop.compiled`` counter (1 or
0) in ``mmi.info`` and ``/metrics``, and logs it at start.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import zmq

from maitred.transports.mdp.config import MdpConfig

__all__ = ["IMPLEMENTATION", "LOOP", "REASON", "SHORT_TURN", "CompiledLoop", "FrameLoop", "load"]

#: what the compiled module calls, resolved in pyzmq's libzmq
log = logging.getLogger("maitred.transports.mdp")

FUNCTIONS = (
    "zmq_msg_init",
    "zmq_msg_close",
    "zmq_msg_recv",
    "zmq_msg_data",
    "zmq_msg_size",
    "zmq_msg_more",
    "zmq_msg_get",
    "zmq_send",
    "zmq_errno",
)


class FrameLoop(Protocol):
    """What ``_frames`` offers (a socket is its ``Socket.underlying`` address)."""

    def recv_batch(
        self, socket: int, limit: int, out: list[list[bytes]], fds: list[int]
    ) -> int: ...

    def send_batch(
        self, socket: int, queue: Sequence[Sequence[bytes]]
    ) -> list[tuple[bytes, int]] | None: ...

    def send(self, socket: int, rid: bytes, frames: Sequence[bytes]) -> int: ...


def _pyzmq_functions() -> dict[str, int]:
    """The addresses of :data:`FUNCTIONS` in the libzmq pyzmq's extension uses (a lookup through
    that module's handle searches the libraries it depends on: the very copy it calls)."""
    from zmq.backend.cython import _zmq  # the Cython backend (not PyPy's CFFI one)

    path = _zmq.__file__
    if path is None:
        raise ImportError("pyzmq's backend has no file")
    lib = ctypes.CDLL(path)
    version = ctypes.CFUNCTYPE(
        None,
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_int),
    )(("zmq_version", lib))
    parts = [ctypes.c_int() for _ in range(3)]
    version(*(ctypes.byref(p) for p in parts))
    if tuple(p.value for p in parts) != zmq.zmq_version_info():
        raise ImportError("the libzmq found is not the one pyzmq reports")
    found: dict[str, int] = {}
    for name in FUNCTIONS:
        address = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        if not address:
            raise ImportError(f"{name} not found in pyzmq's libzmq")
        found[name] = address
    return found


def load(environ: Mapping[str, str]) -> tuple[FrameLoop | None, str]:
    """The compiled loop (or None: the pure one) and why."""
    if environ.get("MAITRED_PURE", "") not in ("", "0"):
        return None, "MAITRED_PURE is set"
    try:
        _frames = importlib.import_module("maitred.transports.mdp._frames")
        functions = _pyzmq_functions()
    except (ImportError, AttributeError, OSError) as exc:
        return None, f"not available ({exc})"
    _frames.bind(functions, zmq.ZMQError)
    loop: FrameLoop = _frames
    return loop, "built and bound to pyzmq's libzmq"


#: a turn that read fewer messages than this is short: the next one answers its first message
#: before it reads the others (the pure loop's ``_PEEK`` rule, adapter.py)
SHORT_TURN = 4

LOOP, REASON = load(os.environ)
#: "compiled" or "pure"
IMPLEMENTATION = "pure" if LOOP is None else "compiled"


class CompiledLoop:
    """The MDP transport's receive loop over :data:`LOOP` (a mixin of ``MdpTransport``; its
    pure-Python twin is ``MdpTransport._on_readable``, which calls this when the compiled loop
    is in use: no CURVE, which needs each message's properties)."""

    config: MdpConfig
    _lone: bool
    _outq: list[list[bytes]]
    _lost: list[Any]
    #: the compiled loop and the socket's address, when in use
    _io: FrameLoop | None
    _sock_ptr: int
    #: the fd the message being handled came on (-1: none), for ``MdpWorkers._source_fd``
    _srcfd: int
    stats: Counter[str]
    _handle: Callable[[list[bytes], float], None]
    _send_failed: Callable[[bytes, zmq.ZMQError], None]
    _flush_out: Callable[[], None]
    _reschedule: Callable[[], None]
    _drop_lost: Callable[[float], None]

    def _choose_loop(self, sock: zmq.Socket[Any], loop: FrameLoop | None) -> None:
        """At start: the compiled loop when there is one (``loop``), counted either way."""
        self._io, self._sock_ptr = loop, sock.underlying
        self.stats["mdp.frame_loop.compiled"] = int(loop is not None)
        log.debug("mdp: the %s frame loop (%s)", IMPLEMENTATION if loop else "pure", REASON)

    def _send_compiled(self, io: FrameLoop, queue: list[list[bytes]]) -> list[list[bytes]]:
        """Send ``queue`` (routing id first in each) in one call; an empty list back (for
        ``_flush_out``'s pure loop, which then has nothing left to send)."""
        for rid, errno in io.send_batch(self._sock_ptr, queue) or ():
            self._send_failed(rid, zmq.ZMQError(errno))
        return []

    def _drain_compiled(self, io: FrameLoop, now: float) -> None:
        """Read, handle and answer in batches until a receive finds nothing: that last
        receive, after the answers went out, re-arms the edge-triggered FD (as the pure loop's
        ZMQ_EVENTS does) and picks up whatever slipped in meanwhile."""
        handle = self._handle
        budget = self.config.batch
        # After a short turn (fewer than SHORT_TURN messages: strict MDP, where a turn is a
        # worker's reply, often with a client's refill) the first SHORT_TURN messages are read
        # one at a time, each answer sent before the next read (a worker's next request is the
        # critical path: it must not wait for the refill's handling). A burst (pipelining) is
        # read in batches and answered together.
        short = self._lone
        limit = 1 if short else budget
        read = 0
        msgs: list[list[bytes]] = []
        fds: list[int] = []
        try:
            while True:
                n = io.recv_batch(self._sock_ptr, limit, msgs, fds)
                if not n:
                    break
                for i in range(n):
                    self._srcfd = fds[i]
                    handle(msgs[i], now)
                msgs.clear()
                fds.clear()
                read += n
                # what the batch produced goes out together: one wake-up of libzmq's I/O
                # thread for the burst rather than one per message
                if self._outq:
                    self._flush_out()
                if read >= budget:
                    self._lone = False
                    self._reschedule()  # let timers and other transports run, then go on
                    return
                limit = 1 if short and read < SHORT_TURN else budget - read
            self._lone = read < SHORT_TURN
            if self._lost:
                self._drop_lost(now)  # all they sent before their connection closed is read
        finally:
            self._srcfd = -1
