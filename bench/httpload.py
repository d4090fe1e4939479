"""A lean HTTP/1.1 load generator: one that a Python HTTP server, not the client, is the limit of.

    .venv/bin/python bench/httpload.py --url http://127.0.0.1:8080/echo --inflight 64 --procs 1

Each of ``--inflight`` keep-alive connections (an :class:`asyncio.Protocol` on uvloop when it
is installed) writes one pre-built request (``POST``, ``Content-Length``, the body) and, when
the answer is complete, the next one: one request in flight per connection, no task, no future,
no header object per request. An answer is parsed by its ``Content-Length`` only (HTTP/1.1
servers that answer with chunked bodies are not supported: an answer without the header is an
error); its status must be 200 and its body as long as the request's (an echo), else the run
fails. The connections may be spread over ``--procs`` client processes (round-robin), so that
one client process's CPU is not the ceiling.

The clock: ``--warmup`` seconds, then ``--duration`` measured; every answer completed inside the
measured window counts (the rate), the latency of those sent inside it too. Each client process
reports its own CPU time in the window (``client_cpu_us_req``, ``client_cpu_pct`` of one CPU,
summed over the processes) and, when given the server's pid, the server's (``cpu_us_req``,
``server_cpu_pct``): a server near 100 % of a CPU with clients well below it is the server's
limit being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PY = sys.executable


def build_request(url: str, size: int, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one ``POST url`` with a body of ``size`` bytes."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/octet-stream",
        f"Content-Length: {size}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + b"x" * size


class _Run:
    """What the connections of one client process share: the phase and the counts."""

    __slots__ = ("done", "error", "lat", "measuring", "replies", "request", "size", "stopping")

    def __init__(self, request: bytes, size: int, done: asyncio.Future[None]) -> None:
        self.request = request
        self.size = size
        self.done = done
        self.measuring = False
        self.stopping = False
        self.replies = 0
        self.lat: list[float] = []
        self.error: str | None = None

    def fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.stopping = True
        if not self.done.done():
            self.done.set_result(None)


class _Conn(asyncio.Protocol):
    """One keep-alive connection with one request in flight at a time."""

    __slots__ = ("buf", "need", "run", "sent", "t0", "transport")

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buf = bytearray()
        self.need = -1  # the length of the whole answer once its head is parsed
        self.t0 = 0.0
        self.sent = False  # t0 is inside the measured window
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.run.stopping:
            self.run.fail(f"connection lost: {exc}")

    def _send(self) -> None:
        run = self.run
        self.sent = run.measuring
        self.t0 = time.perf_counter()
        assert self.transport is not None
        self.transport.write(run.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            if head[9:12] != b"200":
                self.run.fail(f"status {bytes(buf[:end])[:200]!r}")
                return
            i = head.find(b"\r\ncontent-length:")
            if i < 0:
                self.run.fail("an answer without Content-Length")
                return
            j = head.find(b"\r\n", i + 17)
            length = int(head[i + 17 : j if j >= 0 else len(head)])
            if length != self.run.size:
                self.run.fail(f"a body of {length} bytes, not {self.run.size}")
                return
            self.need = end + 4 + length
        if len(buf) < self.need:
            return
        if len(buf) > self.need:
            self.run.fail("more bytes than one answer")
            return
        now = time.perf_counter()
        buf.clear()
        self.need = -1
        run = self.run
        if run.measuring:
            run.replies += 1
            if self.sent:
                run.lat.append(now - self.t0)
        if not run.stopping:
            self._send()


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    """One client process: ``args.conns`` connections; the window is given in wall-clock time
    (``args.t_measure`` .. ``args.t_end``, ``time.time()``) so that several processes agree."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(args.url)
    run = _Run(build_request(args.url, args.size), args.size, loop.create_future())
    transports = []
    for _ in range(args.conns):
        transport, _proto = await loop.create_connection(
            lambda: _Conn(run), parts.hostname, parts.port
        )
        transports.append(transport)
    marks: dict[str, float] = {}

    def start() -> None:
        run.measuring = True
        marks["cpu0"] = time.process_time()
        marks["t0"] = time.perf_counter()

    def stop() -> None:
        marks["cpu1"] = time.process_time()
        marks["t1"] = time.perf_counter()
        run.measuring = False
        run.stopping = True
        if not run.done.done():
            run.done.set_result(None)

    now = time.time()
    loop.call_later(max(0.0, args.t_measure - now), start)
    loop.call_later(max(0.0, args.t_end - now), stop)
    await asyncio.wait_for(run.done, args.t_end - now + 30)
    for t in transports:
        t.close()
    if run.error is not None:
        return {"error": run.error}
    return {
        "replies": run.replies,
        "elapsed": marks["t1"] - marks["t0"],
        "cpu": marks["cpu1"] - marks["cpu0"],
        "lat_us": [round(x * 1e6) for x in run.lat],
    }


def _client_main(args: argparse.Namespace) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_client(args))
    sys.stdout.write(json.dumps(result))
    return 0


def load(
    url: str,
    inflight: int,
    size: int,
    warmup: float,
    duration: float,
    server_pid: int | None = None,
    procs: int = 1,
) -> dict[str, float]:
    """Run ``procs`` client processes with ``inflight`` connections between them against
    ``url``: req/s, p50/p99 latency (ms), the server's and the clients' CPU per request (µs)
    and share of one CPU (%) in the measured window. RuntimeError when an answer is wrong."""
    from bench.ws import cpu_seconds  # the parent's only (the clients need not load it)

    procs = max(1, min(procs, inflight))
    start_at = time.time() + 0.3  # connections open before the warm-up counts
    t_measure = start_at + warmup
    t_end = t_measure + duration
    children = []
    for n in range(procs):
        conns = inflight // procs + (1 if n < inflight % procs else 0)
        cmd = [PY, __file__, "client", "--url", url, "--conns", str(conns), "--size", str(size)]
        cmd += ["--t-measure", repr(t_measure), "--t-end", repr(t_end)]
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE))
    try:
        time.sleep(max(0.0, t_measure - time.time()))
        cpu0, wall0 = cpu_seconds(server_pid), time.perf_counter()
        time.sleep(max(0.0, t_end - time.time()))
        cpu1, wall1 = cpu_seconds(server_pid), time.perf_counter()
        outs = [c.communicate(timeout=duration + warmup + 60)[0] for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    results = [json.loads(o or b'{"error": "no output"}') for o in outs]
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"load generator: {errors[0]}")
    count = sum(r["replies"] for r in results)
    elapsed = max(1e-9, *(r["elapsed"] for r in results))
    lat = sorted(x for r in results for x in r["lat_us"])
    client_cpu = sum(r["cpu"] for r in results)
    server_cpu = cpu1 - cpu0
    out = {
        "req_s": count / elapsed,
        "p50_ms": lat[len(lat) // 2] / 1000 if lat else 0.0,
        "p99_ms": lat[int(len(lat) * 0.99)] / 1000 if lat else 0.0,
        "client_cpu_us_req": 1e6 * client_cpu / count if count else 0.0,
        "client_cpu_pct": 100 * client_cpu / elapsed,
        "client_procs": float(procs),
    }
    if server_pid is not None:
        out["cpu_us_req"] = 1e6 * server_cpu / count if count else 0.0
        out["server_cpu_pct"] = 100 * server_cpu / max(1e-9, wall1 - wall0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="role")
    c = sub.add_parser("client", help="one client process (started by the others)")
    c.add_argument("--url", required=True)
    c.add_argument("--conns", type=int, required=True)
    c.add_argument("--size", type=int, default=1024)
    c.add_argument("--t-measure", type=float, required=True)
    c.add_argument("--t-end", type=float, required=True)
    ap.add_argument("--url", default="")
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--server-pid", type=int, default=None)
    args = ap.parse_args(argv)
    if args.role == "client":
        return _client_main(args)
    if not args.url:
        ap.error("--url is needed")
    result = load(
        args.url,
        args.inflight,
        args.size,
        args.warmup,
        args.duration,
        args.server_pid,
        args.procs,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
