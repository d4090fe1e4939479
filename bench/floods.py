"""Memory floods against a broker subprocess: what a peer that misbehaves makes the broker hold.

    python bench/floods.py                       # every flood, the broker's embedded defaults
    python bench/floods.py --only names,sse      # some of them
    python bench/floods.py --scale 0.1           # a tenth of each flood (a quick look)
    python bench/floods.py --pythonpath DIR      # run the broker from another tree (DIR holds a
                                                 # maitred/ package), e.g. an older release

Each flood starts a fresh broker (``python -m maitred.core serve`` with MDP, WebSocket and HTTP
on free ports and otherwise default settings), reads its resident memory (``VmRSS`` in
``/proc/PID/status``) before, the peak (``VmHWM``) and after, and prints one row per flood:

- ``names``: MDP requests, each to a distinct service name of 256 KiB, no worker; "after" is
  read once every request has been answered (an error, or the 504 of its deadline);
- ``mdp-lazy``: an MDP client sends requests to an echo worker and never reads the replies;
- ``ws-lazy``: a WebSocket (middleman) subscriber stops reading while events are published;
- ``sse-lazy``: an HTTP caller asks for a stream of partial replies and never reads it;
- ``no-worker``: 1 MiB requests to a service that has no worker;
- ``services`` (only with ``--big``): the same over many services (up to ``[broker]
  max_memory``, 1 GiB by default, is then held on purpose).

Every flood is bounded in count and in time (``--timeout`` per flood); the broker runs under
``bench/guard.py`` so it cannot outlive the run. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from websockets.sync.client import ClientConnection, connect

KIB = 1024
MIB = 1024 * KIB
HERE = Path(__file__).resolve().parent

C02, W02 = b"MDPC02", b"MDPW02"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * KIB
    return out


@dataclass
class Broker:
    proc: subprocess.Popen[bytes]
    mdp: str
    ws: str
    http: tuple[str, int]

    @property
    def rss(self) -> int:
        return status(self.proc.pid)["VmRSS"]

    @property
    def peak(self) -> int:
        return status(self.proc.pid)["VmHWM"]

    def settle(self, seconds: float = 1.0, limit: float = 20.0) -> int:
        """Wait until the RSS moves less than 1 MiB for ``seconds`` (``limit`` at most)."""
        end = time.monotonic() + limit
        last = self.rss
        stable_since = time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.1)
            now = self.rss
            if abs(now - last) > MIB:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= seconds:
                break
        return self.rss


@contextlib.contextmanager
def broker(pythonpath: str | None, timeout: float, extra: str = "") -> Iterator[Broker]:
    mdp = f"tcp://127.0.0.1:{free_port()}"
    ws_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="floods") as tmp:
        conf = Path(tmp) / "maitred.toml"
        conf.write_text(
            f'[broker]\nlog_level = "warning"\n{extra}\n'
            f'[transports.mdp]\nendpoints = ["{mdp}"]\n'
            f'[transports.ws]\nlisten = "127.0.0.1:{ws_port}"\nping_interval = 0\n'
            f'[transports.http]\nlisten = ["127.0.0.1:{http_port}"]\nstore = "memory"\n'
        )
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        cmd = [
            sys.executable,
            str(HERE / "guard.py"),
            "--ppid",
            str(os.getpid()),
            "--max-seconds",
            str(int(timeout) + 60),
            "--",
            sys.executable,
            "-m",
            "maitred.core",
            "serve",
            "-c",
            str(conf),
        ]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", http_port), 0.2).close()
                    socket.create_connection(("127.0.0.1", ws_port), 0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the broker did not start") from None
                    time.sleep(0.1)
            b = Broker(proc, mdp, f"ws://127.0.0.1:{ws_port}", ("127.0.0.1", http_port))
            b.settle(0.5, 5)
            yield b
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class EchoWorker(threading.Thread):
    """An MDP/0.2 worker for ``service`` in a thread: answers every request with ``reply``
    (``partials`` partial replies of ``partial`` bytes first)."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: str,
        service: bytes,
        reply: bytes,
        partials: int = 0,
        partial: bytes = b"",
    ) -> None:
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(endpoint)
        self.sock.send_multipart([W02, b"\x01", service])
        self.reply, self.partials, self.partial = reply, partials, partial
        self.answered = 0
        self.stop = threading.Event()

    def run(self) -> None:
        sock = self.sock
        while not self.stop.is_set():
            if not sock.poll(100):
                continue
            frames = sock.recv_multipart()
            if frames[1] == b"\x02":  # a request: client address, empty, body
                addr = frames[2]
                for _ in range(self.partials):
                    if self.stop.is_set():
                        return
                    sock.send_multipart([W02, b"\x03", addr, b"", self.partial])
                sock.send_multipart([W02, b"\x04", addr, b"", self.reply])
                self.answered += 1
            elif frames[1] == b"\x05":
                sock.send_multipart([W02, b"\x05"])


@dataclass
class Row:
    flood: str
    offered: str
    before: int = 0
    peak: int = 0
    after: int = 0
    outcome: str = ""
    notes: list[str] = field(default_factory=list)


def _mib(n: int) -> str:
    return f"{n / MIB:.0f}"


# -- the floods ---------------------------------------------------------------------------------


def flood_names(b: Broker, ctx: zmq.Context[Any], n: int, timeout: float) -> Row:
    row = Row("names", f"{n} x 256 KiB distinct names")
    row.before = b.rss
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(b.mdp)
    codes: dict[bytes, int] = {}
    got = 0
    deadline = time.monotonic() + timeout
    for i in range(n):
        name = b"%06d" % i + b"n" * (256 * KIB - 6)
        sock.send_multipart([C02, b"\x01", name, b"x"])
        while sock.poll(0):
            frames = sock.recv_multipart()
            codes[frames[3][:3]] = codes.get(frames[3][:3], 0) + 1
            got += 1
    peak_held = b.rss
    while got < n and time.monotonic() < deadline:
        if sock.poll(200):
            frames = sock.recv_multipart()
            codes[frames[3][:3]] = codes.get(frames[3][:3], 0) + 1
            got += 1
    sock.close(0)
    row.after = b.settle()
    row.peak = b.peak
    row.outcome = f"{got}/{n} answered: " + ", ".join(
        f"{k.decode(errors='replace')} x{v}" for k, v in sorted(codes.items())
    )
    row.notes.append(f"RSS when the last was sent: {_mib(peak_held)} MiB")
    return row


def flood_mdp_lazy(b: Broker, ctx: zmq.Context[Any], n: int, timeout: float) -> Row:
    size = 2 * KIB
    row = Row("mdp-lazy", f"{n} replies x {size // KIB} KiB, never read")
    worker = EchoWorker(ctx, b.mdp, b"echo", b"r" * size)
    worker.start()
    time.sleep(0.3)
    row.before = b.rss
    lazy = ctx.socket(zmq.DEALER)
    lazy.setsockopt(zmq.LINGER, 0)
    lazy.setsockopt(zmq.RCVHWM, 1)
    lazy.setsockopt(zmq.RCVBUF, 4096)
    lazy.setsockopt(zmq.SNDHWM, 0)
    lazy.connect(b.mdp)
    deadline = time.monotonic() + timeout
    sent = 0
    while sent < n and time.monotonic() < deadline:
        # in windows of 5000, under the service's max_queue (10 000): every request is served
        window = min(5000, n - sent)
        for _ in range(window):
            lazy.send_multipart([C02, b"\x01", b"echo", b"q"])
        sent += window
        while worker.answered < sent and time.monotonic() < deadline:
            time.sleep(0.01)
    row.after = b.settle()
    row.peak = b.peak
    row.outcome = f"{worker.answered}/{n} answered by the worker"
    lazy.close(0)
    row.notes.append(f"after the client closed: {_mib(b.settle())} MiB")
    worker.stop.set()
    worker.join(2)
    worker.sock.close(0)
    return row


def lazy_subscriber(url: str, stack: contextlib.ExitStack) -> ClientConnection:
    host, _, port = url.removeprefix("ws://").rpartition(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    ws = stack.enter_context(connect(url, sock=sock, open_timeout=5, max_queue=4, max_size=None))
    ws.send("xyzzy")
    ws.recv(timeout=5)
    ws.recv(timeout=5)
    ws.send("SUB flood\r\n\r\n.\r\n")
    return ws


def flood_ws_lazy(b: Broker, ctx: zmq.Context[Any], n: int, timeout: float) -> Row:
    size = 48 * KIB
    row = Row("ws-lazy", f"{n} events x {size // KIB} KiB to a subscriber that stopped reading")
    row.before = b.rss
    with contextlib.ExitStack() as stack:
        return _ws_lazy(b, n, timeout, row, stack)


def _ws_lazy(b: Broker, n: int, timeout: float, row: Row, stack: contextlib.ExitStack) -> Row:
    size = 48 * KIB
    lazy = lazy_subscriber(b.ws, stack)
    pub = stack.enter_context(connect(b.ws, open_timeout=5, max_size=None))
    pub.send("xyzzy")
    pub.recv(timeout=5)
    pub.recv(timeout=5)
    pub.send("SUB sync\r\n\r\n.\r\n")
    time.sleep(0.2)
    frame = "PUB flood\r\n\r\n" + "e" * size + "\r\n.\r\n"
    deadline = time.monotonic() + timeout
    for i in range(n):
        pub.send(frame)
        if i % 1000 == 999 and time.monotonic() > deadline:
            break
    pub.send("PUB sync\r\n\r\ndone\r\n.\r\n")
    with contextlib.suppress(TimeoutError):
        while "done" not in str(pub.recv(timeout=max(1.0, deadline - time.monotonic()))):
            pass
    row.after = b.settle()
    row.peak = b.peak
    try:
        lazy.send("PUB sync\r\n\r\nstill here\r\n.\r\n")
        row.outcome = "subscriber still connected"
    except Exception as exc:
        row.outcome = f"subscriber closed ({type(exc).__name__})"
    for ws in (lazy, pub):
        with contextlib.suppress(Exception):
            ws.close()
    row.notes.append(f"after both closed: {_mib(b.settle())} MiB")
    return row


def flood_sse_lazy(b: Broker, ctx: zmq.Context[Any], n: int, timeout: float) -> Row:
    size = 64 * KIB
    row = Row("sse-lazy", f"{n} partials x {size // KIB} KiB to an SSE caller that never reads")
    worker = EchoWorker(ctx, b.mdp, b"gen", b"end", partials=n, partial=b"p" * size)
    worker.start()
    time.sleep(0.3)
    row.before = b.rss
    caller = socket.socket()
    caller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    caller.connect(b.http)
    caller.sendall(
        b"POST /v1/services/gen HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        b"X-Maitred-Timeout: 600\r\nContent-Length: 2\r\n\r\ngo"
    )
    deadline = time.monotonic() + timeout
    while worker.answered < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    row.after = b.settle()
    row.peak = b.peak
    row.outcome = "the worker sent them all" if worker.answered else "the worker did not finish"
    caller.close()
    row.notes.append(f"after the caller closed: {_mib(b.settle())} MiB")
    worker.stop.set()
    worker.join(2)
    worker.sock.close(0)
    return row


def flood_no_worker(
    b: Broker, ctx: zmq.Context[Any], n: int, timeout: float, services: int = 1
) -> Row:
    row = Row(
        "no-worker" if services == 1 else "services",
        f"{n} x 1 MiB requests over {services} service(s) with no worker",
    )
    row.before = b.rss
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(b.mdp)
    body = b"x" * (MIB - 64)
    codes: dict[bytes, int] = {}
    for i in range(n):
        sock.send_multipart([C02, b"\x01", b"idle-%d" % (i % services), body])
    # the refusals come back at once; what is accepted waits for its deadline (30 s)
    end = time.monotonic() + min(timeout, 5.0)
    while time.monotonic() < end:
        if sock.poll(200):
            frames = sock.recv_multipart()
            codes[frames[3][:3]] = codes.get(frames[3][:3], 0) + 1
    row.after = b.settle()
    row.peak = b.peak
    refused = ", ".join(f"{k.decode(errors='replace')} x{v}" for k, v in sorted(codes.items()))
    row.outcome = f"refused at once: {refused or 'none'}; held: {n - sum(codes.values())}"
    sock.close(0)
    return row


FLOODS: dict[str, Callable[..., Row]] = {
    "names": flood_names,
    "mdp-lazy": flood_mdp_lazy,
    "ws-lazy": flood_ws_lazy,
    "sse-lazy": flood_sse_lazy,
    "no-worker": flood_no_worker,
}
SIZES = {"names": 2400, "mdp-lazy": 100_000, "ws-lazy": 10_000, "sse-lazy": 6000, "no-worker": 650}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FLOODS), help="comma-separated floods")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every flood's size")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per flood at most")
    parser.add_argument("--pythonpath", default=None, help="PYTHONPATH of the broker process")
    parser.add_argument(
        "--big", action="store_true", help="also flood 40 services (holds up to max_memory)"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    for name in names:
        if name not in FLOODS:
            parser.error(f"unknown flood {name!r} (one of {', '.join(FLOODS)})")
    rows: list[Row] = []
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        for name in names:
            n = max(1, int(SIZES[name] * args.scale))
            print(f"flood {name} ({n}) ...", file=sys.stderr, flush=True)
            with broker(args.pythonpath, args.timeout) as b:
                rows.append(FLOODS[name](b, ctx, n, args.timeout))
        if args.big:
            n = max(1, int(1600 * args.scale))
            print(f"flood services ({n}) ...", file=sys.stderr, flush=True)
            with broker(args.pythonpath, args.timeout) as b:
                rows.append(flood_no_worker(b, ctx, n, args.timeout, services=40))
    finally:
        ctx.destroy(0)
    print("| flood | offered | RSS before (MiB) | peak (MiB) | after (MiB) | outcome |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        outcome = "; ".join([r.outcome, *r.notes])
        print(
            f"| {r.flood} | {r.offered} | {_mib(r.before)} | {_mib(r.peak)} | "
            f"{_mib(r.after)} | {outcome} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
