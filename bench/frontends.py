"""The front ends against raw echo servers, in the same run: WebSocket and REST request/reply.

    .venv/bin/python bench/frontends.py --runs 5            # the five legs, rotated, medians
    .venv/bin/python bench/frontends.py --smoke             # one short run of each

Legs (each measurement on fresh processes; the load generator is this process, 64 requests of
1 KiB in flight, warm-up then a timed phase):

- ``ws-raw``: a plain ``websockets`` echo server (the frame comes straight back);
- ``ws-mdp``: middleman ``REQ`` → maitred → MDP echo worker (``maitred.plugins.bench.loadgen``,
  its own process);
- ``ws-ws``: middleman ``REQ`` → maitred → a middleman responder on another WebSocket
  connection (its own process);
- ``http-raw``: a plain aiohttp server answering ``POST /echo`` with the body;
- ``rest``: ``POST /v1/services/echo`` → maitred → MDP echo worker (its own process);
- ``rest-b`` (only when named, with ``--b-maitred PATH``): ``rest`` against another build's
  ``maitred`` (e.g. a pristine checkout's venv), for an A/B in the same run;
- ``ws-raw-uvloop`` (only when named in ``--legs``): ``ws-raw`` on uvloop, the event loop maitred
  runs on by default; the ratios stay against ``ws-raw``.

The HTTP legs' load comes from bench/httpload.py by default: lean keep-alive client processes
(``--http-procs``, 1 by default) with pre-built requests, which report their own CPU so that a
reader can tell whether the server or the client was the limit; ``--http-client aiohttp`` keeps
the earlier one-process aiohttp client (the limit of both legs at ~2k req/s on a 2-CPU machine).

The WebSocket legs are bench/ws.py's; the HTTP ones are here, with the MDP worker in its own
process (bench/http_bench.py runs it as a thread of the load generator, which then competes with
the client for the GIL). Besides req/s and latency, each leg reports the server's CPU time per
request (``cpu_us_req``: maitred's, or the raw echo server's), which other load on the machine
moves less than the rate. Ratios: ``ws-mdp`` and ``ws-ws`` against ``ws-raw``, ``rest`` against
``http-raw``, as the ratio of the medians and the median of the per-run ratios (legs of the same
round). ``--json PATH`` writes every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench import http_bench, httpload
from bench import ws as wsb
from maitred.plugins.bench import loadgen

PY = sys.executable
LEGS = ("ws-raw", "ws-mdp", "ws-ws", "http-raw", "rest")
#: legs run only when named: ``rest-b`` is ``rest`` with ``--b-maitred`` (an A/B in one run);
#: ``ws-raw-uvloop`` the websockets echo on uvloop (maitred's default event loop)
EXTRA_LEGS = ("rest-b", "ws-raw-uvloop")
PAIRS = {"ws-mdp": "ws-raw", "ws-ws": "ws-raw", "rest": "http-raw", "rest-b": "http-raw"}


def maitred_http_cmd(http_port: int, mdp_port: int, maitred: str = "") -> list[str]:
    config = os.environ.get("MAITRED_BENCH_CONFIG", "")
    return [
        maitred or wsb.MAITRED,
        "serve",
        *(["-c", config] if config else []),
        "--http",
        f"127.0.0.1:{http_port}",
        "--mdp",
        f"tcp://127.0.0.1:{mdp_port}",
        "--log-level",
        "warning",
    ]


def worker_cmd(mdp_port: int) -> list[str]:
    return [PY, loadgen.__file__, "worker", "--endpoint", f"tcp://127.0.0.1:{mdp_port}"]


async def http_probe(url: str, body: bytes, timeout: float = 15.0) -> None:
    """Until one POST is answered with the body (the server, and the worker behind it, are up)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(url, data=body) as resp:
                    if resp.status == 200 and await resp.read() == body:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no echo through {url}")
            await asyncio.sleep(0.05)


async def http_load(
    url: str, inflight: int, size: int, warmup: float, duration: float, server_pid: int
) -> dict[str, float]:
    """``inflight`` keep-alive connections each posting one request after the other: req/s,
    latency and the server's CPU µs per request in the timed phase."""
    body = b"x" * size
    lat: list[float] = []
    phase = {"measuring": False}
    t_measure = time.perf_counter() + warmup
    t_end = t_measure + duration
    conn = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one() -> None:
            for _ in range(10_000_000):  # bounded; the clock ends it first
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                async with session.post(url, data=body) as resp:
                    data = await resp.read()
                    if resp.status != 200 or len(data) != size:
                        raise RuntimeError(f"bad reply {resp.status} ({len(data)} bytes)")
                now = time.perf_counter()
                if now >= t_measure and t0 >= t_measure:
                    lat.append(now - t0)

        async def mark() -> float:
            await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
            phase["measuring"] = True
            return wsb.cpu_seconds(server_pid)

        marker = asyncio.ensure_future(mark())
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(inflight))), duration + 60)
        cpu0 = await marker
        cpu = wsb.cpu_seconds(server_pid) - cpu0
        elapsed = max(1e-9, time.perf_counter() - t_measure)
    lat.sort()
    count = len(lat)
    return {
        "req_s": count / elapsed,
        "p50_ms": 1000 * lat[count // 2] if lat else 0.0,
        "p99_ms": 1000 * lat[int(count * 0.99)] if lat else 0.0,
        "cpu_us_req": 1e6 * cpu / count if count else 0.0,
    }


def run_http_leg(leg: str, args: argparse.Namespace) -> dict[str, float]:
    http_port, mdp_port = wsb.free_port(), wsb.free_port()
    with contextlib.ExitStack() as stack:
        if leg == "http-raw":
            # http_bench's echo server binds port 0 and prints its URL
            echo, found = http_bench.start([PY, http_bench.__file__, "echo-server"], "echo")
            stack.callback(wsb.stop, echo)
            url = f"{found['echo']}/echo"
            pid = echo.pid
        else:
            maitred = args.b_maitred if leg == "rest-b" else ""
            p = stack.enter_context(wsb.proc(*maitred_http_cmd(http_port, mdp_port, maitred)))
            stack.enter_context(wsb.proc(*worker_cmd(mdp_port)))
            url = f"http://127.0.0.1:{http_port}/v1/services/echo"
            pid = p.pid
        asyncio.run(http_probe(url, b"x" * args.size))
        if args.http_client == "aiohttp":
            return asyncio.run(
                http_load(url, args.inflight, args.size, args.warmup, args.duration, pid)
            )
        return httpload.load(
            url, args.inflight, args.size, args.warmup, args.duration, pid, args.http_procs
        )


def run_leg(leg: str, args: argparse.Namespace) -> dict[str, float]:
    if leg.startswith("ws-"):
        name = leg.removeprefix("ws-") if leg.startswith("ws-raw") else leg
        return wsb.run_leg(name, args)
    return run_http_leg(leg, args)


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--legs", default=",".join(LEGS))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--http-client",
        choices=("lean", "aiohttp"),
        default="lean",
        help="the HTTP legs' load generator: bench/httpload.py's (default) or one aiohttp client",
    )
    ap.add_argument("--http-procs", type=int, default=1, help="lean client processes")
    ap.add_argument(
        "--b-maitred",
        default="",
        help="the maitred executable of the rest-b leg (e.g. another checkout's venv/bin/maitred)",
    )
    ap.add_argument("--smoke", action="store_true", help="1 run of 0.2 s + 0.5 s")
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.warmup, args.duration = 1, 0.2, 0.5
    legs = [x for x in args.legs.split(",") if x]
    if bad := set(legs) - set(LEGS) - set(EXTRA_LEGS):
        ap.error(f"unknown legs {sorted(bad)}")
    if "rest-b" in legs and not args.b_maitred:
        ap.error("the rest-b leg needs --b-maitred")
    runs: list[dict[str, Any]] = []
    for r in range(args.runs):
        order = legs[r % len(legs) :] + legs[: r % len(legs)]
        for leg in order:
            load = loadavg()
            result = run_leg(leg, args)
            result.update(leg=leg, run=r + 1, loadavg=load)
            runs.append(result)
            print(f"run {r + 1} {leg}: {json.dumps(result)}", file=sys.stderr, flush=True)
    med: dict[str, dict[str, float]] = {}
    for leg in legs:
        mine = [x for x in runs if x["leg"] == leg]
        med[leg] = {
            k: statistics.median(float(x[k]) for x in mine)
            for k in (
                "req_s",
                "p50_ms",
                "p99_ms",
                "cpu_us_req",
                "server_cpu_pct",
                "client_cpu_us_req",
                "client_cpu_pct",
            )
            if all(k in x for x in mine)
        }
    print(
        f"front ends: {args.inflight} in flight, {args.size} B, medians of {args.runs} rotated "
        f"run(s) of {args.warmup:g} s + {args.duration:g} s; load average "
        f"{min(x['loadavg'] for x in runs):.1f}-{max(x['loadavg'] for x in runs):.1f}"
    )
    ratios: dict[str, dict[str, float]] = {}
    for leg in legs:
        m = med[leg]
        line = (
            f"  {leg:<9} req/s {m['req_s']:>9,.0f}  p50 {m['p50_ms']:6.2f} ms  "
            f"p99 {m['p99_ms']:6.2f} ms  server CPU {m.get('cpu_us_req', 0):6.1f} µs/req"
        )
        if "client_cpu_pct" in m:
            line += (
                f" ({m['server_cpu_pct']:3.0f} % of a CPU; client {m['client_cpu_us_req']:5.1f}"
                f" µs/req, {m['client_cpu_pct']:3.0f} %)"
            )
        base = PAIRS.get(leg)
        if base in med:
            per_run = [
                x["req_s"] / y["req_s"]
                for x in runs
                for y in runs
                if x["leg"] == leg and y["leg"] == base and x["run"] == y["run"] and y["req_s"]
            ]
            ratios[leg] = {
                "of_medians": m["req_s"] / med[base]["req_s"],
                "median_per_run": statistics.median(per_run),
            }
            line += (
                f"  ÷ {base}: {ratios[leg]['of_medians']:.2f}x "
                f"(median of per-run ratios {ratios[leg]['median_per_run']:.2f}x)"
            )
        print(line, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"medians": med, "ratios": ratios, "runs": runs, "args": vars(args)},
                indent=2,
                default=str,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
