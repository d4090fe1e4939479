"""Helpers for end-to-end tests: an embedded broker in its own thread and event loop, bound to
127.0.0.1 on an ephemeral port; raw MDP peers of every dialect, frame by frame, written from
docs/reference/mdp.md (not with maitred's codec, so the tests check the codec too)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import zmq

from maitred.core.app import build_broker
from maitred.core.config import parse_config
from maitred.core.runtime import Broker

T = TypeVar("T")

BASE = """
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
"""


class BrokerThread:
    """A broker on a private event loop in a daemon thread."""

    def __init__(
        self, toml: str, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    ) -> None:
        self.config = parse_config(toml, "<test>")
        self.loop = (loop_factory or asyncio.new_event_loop)()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.broker: Broker = self.run(self._build())
        self.run(self.broker.start())
        self.endpoints = self.broker.endpoints()
        self.endpoint = self.endpoints["mdp"][0] if "mdp" in self.endpoints else ""

    async def _build(self) -> Broker:
        return build_broker(self.config)

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run ``fn`` on the broker's loop (to read router state safely)."""
        fut: Future[T] = Future()

        def _do() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(_do)
        return fut.result(timeout)

    def stats(self) -> dict[str, int]:
        return self.call(lambda: dict(self.broker.router.stats))

    def stop(self, drain_timeout: float | None = None) -> None:
        if self.loop.is_closed():
            return
        if self.broker.state != "stopped":
            self.run(self.broker.stop(drain_timeout), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def recv(sock: zmq.Socket[Any], timeout: float = 3.0) -> list[bytes]:
    """The next message, or an AssertionError after ``timeout`` seconds."""
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"no message within {timeout}s")
    return sock.recv_multipart()


def nothing(sock: zmq.Socket[Any], timeout: float = 0.3) -> bool:
    """True when no message arrives within ``timeout`` (for checks that something is dropped)."""
    return not sock.poll(int(timeout * 1000))


#: sockets made by :func:`socket`, closed by the ``ctx`` fixture after each test (so none is
#: garbage-collected unclosed when a test function returns)
OPEN_SOCKETS: list[zmq.Socket[Any]] = []


def close_sockets() -> None:
    while OPEN_SOCKETS:
        OPEN_SOCKETS.pop().close(0)


@contextlib.contextmanager
def zmq_context() -> Iterator[zmq.Context[Any]]:
    """A zmq context destroyed (every socket closed, linger 0) when the block ends, however it
    ends: an unclosed context warns when it is garbage-collected, and with warnings as errors
    that fails whichever test is running then."""
    context: zmq.Context[Any] = zmq.Context()
    try:
        yield context
    finally:
        close_sockets()
        context.destroy(linger=0)


#: a CURVE client's keys (Z85): the server's public key, its own public and secret key
CurveKeys = tuple[bytes, bytes, bytes]


def socket(
    ctx: zmq.Context[Any], kind: int, endpoint: str, curve: CurveKeys | None = None
) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    OPEN_SOCKETS.append(sock)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:  # plain pyzmq, as any libzmq program does it
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    sock.connect(endpoint)
    return sock


C01, W01, C02, W02 = b"MDPC01", b"MDPW01", b"MDPC02", b"MDPW02"

CLIENT_KINDS = ("0.1-req", "0.1-dealer", "rfc", "majortomo")
WORKER_KINDS = ("0.1", "rfc", "majortomo")


class RawClient:
    def __init__(
        self, ctx: zmq.Context[Any], endpoint: str, kind: str, curve: CurveKeys | None = None
    ) -> None:
        self.kind = kind
        self.sock = socket(ctx, zmq.REQ if kind == "0.1-req" else zmq.DEALER, endpoint, curve)

    def send(self, service: bytes, *body: bytes) -> None:
        if self.kind == "0.1-req":
            self.sock.send_multipart([C01, service, *body])
        elif self.kind == "0.1-dealer":
            self.sock.send_multipart([b"", C01, service, *body])
        elif self.kind == "rfc":
            self.sock.send_multipart([C02, b"\x01", service, *body])
        else:
            self.sock.send_multipart([b"", C02, b"\x02", service, *body])

    def recv(self, timeout: float = 3.0) -> tuple[bool, list[bytes]]:
        """(final, body) of the next reply, checking the exact frame layout of the dialect."""
        frames = recv(self.sock, timeout)
        if self.kind == "0.1-req":
            assert frames[0] == C01, frames
            return True, frames[2:]
        if self.kind == "0.1-dealer":
            assert frames[:2] == [b"", C01], frames
            return True, frames[3:]
        if self.kind == "rfc":
            assert frames[0] == C02 and frames[1] in (b"\x02", b"\x03"), frames
            return frames[1] == b"\x03", frames[3:]
        assert frames[:2] == [b"", C02] and frames[2] in (b"\x03", b"\x04"), frames
        return frames[2] == b"\x04", frames[3:]

    def recv_raw(self, timeout: float = 3.0) -> list[bytes]:
        return recv(self.sock, timeout)

    def call(self, service: bytes, *body: bytes, timeout: float = 3.0) -> list[bytes]:
        """Send and return the final body (partials skipped)."""
        self.send(service, *body)
        while True:
            final, got = self.recv(timeout)
            if final:
                return got

    def close(self) -> None:
        self.sock.close(0)


class RawWorker:
    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: str,
        kind: str,
        service: bytes,
        curve: CurveKeys | None = None,
    ) -> None:
        self.kind = kind
        self.service = service
        self.sock = socket(ctx, zmq.DEALER, endpoint, curve)
        self.heartbeats = 0
        self.disconnected = False

    @property
    def header(self) -> bytes:
        return W01 if self.kind == "0.1" else W02

    def _send(self, *frames: bytes) -> None:
        lead = [] if self.kind == "rfc" else [b""]
        self.sock.send_multipart([*lead, self.header, *frames])

    def ready(self) -> None:
        self._send(b"\x01", self.service)

    def heartbeat(self) -> None:
        self._send(b"\x04" if self.kind == "0.1" else b"\x05")

    def disconnect(self) -> None:
        self._send(b"\x05" if self.kind == "0.1" else b"\x06")

    def _strip(self, frames: list[bytes]) -> list[bytes]:
        if self.kind != "rfc":
            assert frames[0] == b"", frames
            frames = frames[1:]
        assert frames[0] == self.header, frames
        return frames[1:]

    def next(self, timeout: float = 3.0) -> tuple[str, list[bytes]]:
        """('request', [addr, body...]) / ('heartbeat', []) / ('disconnect', [])."""
        frames = self._strip(recv(self.sock, timeout))
        cmd = frames[0]
        hb, dc = (b"\x04", b"\x05") if self.kind == "0.1" else (b"\x05", b"\x06")
        if cmd == b"\x02":
            assert frames[2] == b"", frames
            return "request", [frames[1], *frames[3:]]
        if cmd == hb:
            self.heartbeats += 1
            return "heartbeat", []
        if cmd == dc:
            self.disconnected = True
            return "disconnect", []
        raise AssertionError(f"unexpected command to worker: {frames}")

    def request(
        self, timeout: float = 3.0, keepalive: float | None = None
    ) -> tuple[bytes, list[bytes]]:
        """The next request (heartbeats skipped): (client address, body). ``keepalive``: send
        a HEARTBEAT every that many seconds while waiting, as a real worker does (a wait longer
        than the broker's liveness window would otherwise get the worker dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.01, deadline - time.monotonic())
            if keepalive is not None and left > keepalive and nothing(self.sock, keepalive):
                self.heartbeat()
                continue
            kind, frames = self.next(left)
            if kind == "request":
                return frames[0], frames[1:]
            if kind == "disconnect":
                raise AssertionError("DISCONNECT while waiting for a request")

    def expect_disconnect(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            kind, _ = self.next(max(0.01, deadline - time.monotonic()))
            if kind == "disconnect":
                return
            if kind == "request":
                raise AssertionError("a request while waiting for DISCONNECT")

    def partial(self, addr: bytes, *body: bytes) -> None:
        assert self.kind != "0.1"
        self._send(b"\x03", addr, b"", *body)

    def final(self, addr: bytes, *body: bytes) -> None:
        self._send(b"\x03" if self.kind == "0.1" else b"\x04", addr, b"", *body)

    def close(self) -> None:
        self.sock.close(0)


def wait_until(check: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    """Poll a cheap condition until true; the broker runs on another thread, so this waits on
    its state, not on time."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
