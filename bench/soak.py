"""A bounded soak: the three front ends at once, at a fixed rate, sampling the broker's memory.

    .venv/bin/python bench/soak.py --measure-peak 20     # 10 minutes at half the mix's peak
    .venv/bin/python bench/soak.py --minutes 1 --peak /tmp/frontends.json

One ``maitred serve`` (WebSocket, HTTP and MDP listeners), one MDP echo worker process
(``maitred.plugins.bench.loadgen``, service ``echo``), one middleman responder process on a
WebSocket connection (bench/ws.py ``mm-service``, service ``wsecho``), and this process as the
load: WebSocket → MDP (``REQ echo``), WebSocket → WebSocket (``REQ wsecho``) and REST → MDP
(``POST /v1/services/echo``), 1 KiB each, all three at the same time, each at a fixed rate:
half its peak (``--fraction``): the peak of this mix measured first (``--measure-peak SECONDS``:
the three paths at once, as fast as they go), or each path's peak alone from a
``bench/frontends.py --json`` file (``--peak``; the three at once then ask 1.5 times what the
machine gave one path at a time), or the rates given (``--ws-mdp-rate``, ``--ws-ws-rate``,
``--rest-rate``). Every ``--every`` seconds it
samples the broker's resident memory (VmRSS from /proc) and counts the replies and errors.

The report: RSS after the first minute and at the end (and their ratio), the largest sample,
the rate each path achieved, the errors, and the RSS curve as a text sparkline. Every loop is
bounded by the clock (``--minutes``) and by counts; the children are ended on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench import ws as wsb
from maitred.plugins.bench import loadgen

PY = sys.executable
SPARKS = "▁▂▃▄▅▆▇█"


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))] for v in values)


class Counter:
    def __init__(self) -> None:
        self.replies = 0
        self.errors = 0
        self.last_error = ""


async def paced(rate: float, concurrency: int, stop_at: float, call: Any, count: Counter) -> None:
    """``concurrency`` tasks share ``rate`` requests/s: task k sends at t0 + (k + i*concurrency)
    / rate; a late reply delays only its own task (the rate is a ceiling, not a backlog)."""
    t0 = time.monotonic()

    async def task(k: int) -> None:
        for i in range(100_000_000):  # bounded; the clock ends it first
            due = t0 + (k + i * concurrency) / rate
            now = time.monotonic()
            if due >= stop_at or now >= stop_at:
                return
            if due > now:
                await asyncio.sleep(due - now)
            try:
                await asyncio.wait_for(call(), 10)
                count.replies += 1
            except (TimeoutError, OSError, RuntimeError, aiohttp.ClientError) as exc:
                count.errors += 1
                count.last_error = f"{type(exc).__name__}: {exc}"[:200]

    await asyncio.gather(*(task(k) for k in range(concurrency)))


class WsCaller:
    """Middleman REQ frames on one connection, replies matched by their Reqid."""

    def __init__(self, url: str, service: str, size: int) -> None:
        self.url, self.service, self.body = url, service, "x" * size
        self.pending: dict[int, asyncio.Future[str]] = {}
        self.seq = 0
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.ws = await wsb.login(self.url)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if not isinstance(msg, str) or "Reqid: " not in msg:
                continue
            rid = int(msg.split("Reqid: ", 1)[1].split("\r\n", 1)[0])
            fut = self.pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def __call__(self) -> None:
        self.seq += 1
        rid = self.seq
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.ws.send(f"REQ {self.service}\r\nReqID: {rid}\r\n\r\n{self.body}\r\n.\r\n")
        try:
            reply = await fut
        finally:
            self.pending.pop(rid, None)
        if not reply.startswith("RES "):
            raise RuntimeError(reply[:120])

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        await self.ws.close()


async def soak(
    args: argparse.Namespace, broker_pid: int, ws_url: str, http_url: str
) -> dict[str, Any]:
    rates = {"ws-mdp": args.ws_mdp_rate, "ws-ws": args.ws_ws_rate, "rest": args.rest_rate}
    ws_mdp = WsCaller(ws_url, "echo", args.size)
    ws_ws = WsCaller(ws_url, "wsecho", args.size)
    await ws_mdp.start()
    await ws_ws.start()
    body = b"x" * args.size
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency))

    async def rest() -> None:
        async with session.post(f"{http_url}/v1/services/echo", data=body) as resp:
            data = await resp.read()
            if resp.status != 200 or len(data) != args.size:
                raise RuntimeError(f"REST reply {resp.status}")

    callers: dict[str, Any] = {"ws-mdp": ws_mdp, "ws-ws": ws_ws, "rest": rest}
    peak: dict[str, float] = {}
    if args.measure_peak > 0:
        # the peak of this very mix: the three paths at once, closed loop (each of the
        # --concurrency tasks sends its next request when its reply is in), for a while
        t_peak = time.monotonic()
        peak_end = t_peak + args.measure_peak
        peak_counts = {name: Counter() for name in rates}
        await asyncio.gather(
            *(paced(1e9, args.concurrency, peak_end, callers[n], peak_counts[n]) for n in rates)
        )
        took = time.monotonic() - t_peak
        peak = {n: round(c.replies / took, 1) for n, c in peak_counts.items()}
        rates = {n: args.fraction * peak[n] for n in rates}
        print(f"peak of the mix: {json.dumps(peak)}; soaking at {rates}", file=sys.stderr)
    counts = {name: Counter() for name in rates}
    start = time.monotonic()
    stop_at = start + args.minutes * 60
    samples: list[dict[str, Any]] = []

    async def sampler() -> None:
        last = {name: 0 for name in counts}
        while True:
            t = time.monotonic() - start
            rss = rss_kib(broker_pid)
            sample: dict[str, Any] = {"t": round(t, 1), "rss_kib": rss}
            for name, c in counts.items():
                sample[f"{name}_per_s"] = round((c.replies - last[name]) / args.every, 1)
                last[name] = c.replies
            if samples:  # the first sample has no interval before it
                sample["errors"] = sum(c.errors for c in counts.values())
            samples.append(sample)
            print(json.dumps(sample), file=sys.stderr, flush=True)
            if time.monotonic() >= stop_at:
                return
            await asyncio.sleep(min(args.every, max(0.0, stop_at - time.monotonic())))

    sampling = asyncio.ensure_future(sampler())
    try:
        await asyncio.gather(
            *(paced(rates[n], args.concurrency, stop_at, callers[n], counts[n]) for n in rates)
        )
        await asyncio.wait_for(sampling, args.every + 5)
    finally:
        sampling.cancel()
        await session.close()
        await ws_mdp.close()
        await ws_ws.close()
    elapsed = time.monotonic() - start
    return {
        "samples": samples,
        "elapsed": elapsed,
        "peak_of_the_mix": peak,
        "rates_asked": rates,
        "rates_got": {n: round(c.replies / elapsed, 1) for n, c in counts.items()},
        "errors": {n: c.errors for n, c in counts.items()},
        "last_errors": {n: c.last_error for n, c in counts.items() if c.last_error},
    }


async def ready(url: str, service: str, timeout: float = 15.0) -> None:
    """Until one request to ``service`` is answered (its responder is up; bounded)."""
    caller = WsCaller(url, service, 8)
    await caller.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                await asyncio.wait_for(caller(), 2)
                return
            except (TimeoutError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await caller.close()


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    samples = [s for s in result["samples"] if s.get("rss_kib")]
    rss = [s["rss_kib"] / 1024 for s in samples]
    after_1 = next((s["rss_kib"] / 1024 for s in samples if s["t"] >= 60), rss[0] if rss else 0)
    end = rss[-1] if rss else 0
    lines = [
        f"soak: {args.minutes:g} min, the three front ends at once, {args.size} B; "
        f"samples every {args.every:g} s",
        "rates asked (req/s): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in result["rates_asked"].items()),
        "rates achieved:      "
        + ", ".join(f"{k} {v:,.0f}" for k, v in result["rates_got"].items()),
        "errors: " + ", ".join(f"{k} {v}" for k, v in result["errors"].items()),
        f"broker RSS: after the first minute {after_1:.1f} MiB, at the end {end:.1f} MiB "
        f"({100 * (end / after_1 - 1) if after_1 else 0:+.1f} %), "
        f"largest {max(rss, default=0):.1f} MiB",
        f"RSS curve ({min(rss, default=0):.1f}-{max(rss, default=0):.1f} MiB, one mark per "
        f"{args.every:g} s): {sparkline(rss)}",
    ]
    if result.get("last_errors"):
        lines.append(f"last errors: {result['last_errors']}")
    return "\n".join(lines)


def rates_from_peak(path: Path, fraction: float) -> dict[str, float]:
    data = json.loads(path.read_text())
    med = data["medians"]
    return {leg: fraction * med[leg]["req_s"] for leg in ("ws-mdp", "ws-ws", "rest") if leg in med}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--peak", type=Path, default=None, help="bench/frontends.py --json output")
    ap.add_argument(
        "--measure-peak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first run the three paths at once as fast as they go for SECONDS, then soak at "
        "--fraction of the rates each reached (the peak of this mix, not of each path alone)",
    )
    ap.add_argument("--fraction", type=float, default=0.5, help="of the peak rates")
    ap.add_argument("--ws-mdp-rate", type=float, default=1000.0)
    ap.add_argument("--ws-ws-rate", type=float, default=1000.0)
    ap.add_argument("--rest-rate", type=float, default=500.0)
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight per path")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    def stop(signum: int, _frame: object) -> None:  # unwind, so the children are ended
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    if args.peak is not None:
        peak = rates_from_peak(args.peak, args.fraction)
        args.ws_mdp_rate = peak.get("ws-mdp", args.ws_mdp_rate)
        args.ws_ws_rate = peak.get("ws-ws", args.ws_ws_rate)
        args.rest_rate = peak.get("rest", args.rest_rate)
    if args.minutes <= 0 or args.every <= 0:
        ap.error("--minutes and --every must be > 0")
    ws_port, http_port, mdp_port = wsb.free_port(), wsb.free_port(), wsb.free_port()
    cmd = [
        wsb.MAITRED, "serve", "--ws", f"127.0.0.1:{ws_port}", "--http", f"127.0.0.1:{http_port}",
        "--mdp", f"tcp://127.0.0.1:{mdp_port}", "--log-level", "warning",
    ]  # fmt: skip
    ws_url, http_url = f"ws://127.0.0.1:{ws_port}", f"http://127.0.0.1:{http_port}"
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(wsb.proc(*cmd))
        stack.enter_context(
            wsb.proc(
                PY,
                loadgen.__file__,
                "worker",
                "--endpoint",
                f"tcp://127.0.0.1:{mdp_port}",
                "--max-seconds",
                str(args.minutes * 60 + 120),
            )
        )
        asyncio.run(wsb.probe(ws_url))  # the MDP worker answers through the broker
        stack.enter_context(wsb.proc(PY, str(Path(wsb.__file__)), "mm-service", ws_url, "wsecho"))
        asyncio.run(ready(ws_url, "wsecho"))
        result = asyncio.run(soak(args, broker.pid, ws_url, http_url))
    text = report(result, args)
    print(text, flush=True)
    if args.json:
        args.json.write_text(json.dumps({**result, "report": text}, indent=2) + "\n")
    mid = [s["rss_kib"] for s in result["samples"] if s.get("rss_kib")]
    return 0 if mid and statistics.median(mid) > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
