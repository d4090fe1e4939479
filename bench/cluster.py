"""The cluster hop: a caller on node A to a worker on node B, against the same caller to a
worker on A (the local hop), at 1 and 64 requests in flight; medians of several runs.

    python bench/cluster.py                 # 3 runs x {1, 64} x {local, remote}, ~1 min
    python bench/cluster.py --runs 5 --duration 3

One nats-server, two ``maitred serve`` nodes (MDP + cluster), one MDP echo worker process (on
A for the local leg, on B for the remote one), the caller (maitred's AsyncClient) in this
process. Reports requests per second, the ratio remote/local, p50 latency at 1 in flight and
the added p50, and CPU microseconds per request of each node (from /proc: user + system).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maitred.plugins.nats_testing import NatsServer  # noqa: E402
from maitred.plugins.testing import ServeProcess  # noqa: E402
from maitred.transports.mdp.client import AsyncClient  # noqa: E402

WORKER = """
import sys
from maitred.transports.mdp.worker import Worker
Worker(sys.argv[1], "echo", lambda body: body).run()
"""
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def load(endpoint: str, inflight: int, duration: float) -> tuple[int, list[float]]:
    client = AsyncClient(endpoint, max_in_flight=inflight, timeout=10.0)
    done = 0
    latencies: list[float] = []
    stop = time.monotonic() + duration

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await client.request("echo", b"x" * 64)
            latencies.append(time.perf_counter() - t0)
            done += 1

    await asyncio.gather(*(loop() for _ in range(inflight)))
    client.close()
    return done, latencies


def wait_service(endpoint: str) -> None:
    async def probe() -> bool:
        client = AsyncClient(endpoint, timeout=2.0)
        try:
            reply = await client.request("mmi.service", b"echo")
        finally:
            client.close()
        return reply[-1] == b"200"

    for _ in range(100):
        if asyncio.run(probe()):
            return
        time.sleep(0.05)
    raise RuntimeError("echo never appeared")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    server = NatsServer()
    nodes = [
        ServeProcess(
            "--mdp",
            "tcp://127.0.0.1:0",
            "--cluster",
            server.url,
            "--node",
            name,
            "--log-level",
            "warning",
        )
        for name in ("a", "b")
    ]
    a, b = nodes
    results: dict[str, Any] = {}
    try:
        for leg, where in (("local", a), ("remote", b)):
            worker = subprocess.Popen([sys.executable, "-c", WORKER, where.endpoint("mdp")])
            try:
                wait_service(a.endpoint("mdp"))
                time.sleep(1.2)  # the announced credit settles
                for inflight in args.inflight:
                    runs = []
                    for _ in range(args.runs):
                        asyncio.run(load(a.endpoint("mdp"), inflight, 0.3))  # warm-up
                        cpu0 = [cpu_seconds(n.pid) for n in nodes]
                        done, lat = asyncio.run(load(a.endpoint("mdp"), inflight, args.duration))
                        cpu1 = [cpu_seconds(n.pid) for n in nodes]
                        runs.append(
                            {
                                "rps": done / args.duration,
                                "p50_ms": statistics.median(lat) * 1000,
                                "cpu_us_a": (cpu1[0] - cpu0[0]) / done * 1e6,
                                "cpu_us_b": (cpu1[1] - cpu0[1]) / done * 1e6,
                            }
                        )
                    results[f"{leg}/{inflight}"] = {
                        k: statistics.median(r[k] for r in runs) for k in runs[0]
                    }
            finally:
                worker.terminate()
                worker.wait(10)
    finally:
        for n in nodes:
            n.close()
        server.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument(
        "--inflight", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64]
    )
    args = parser.parse_args(argv)
    results = measure(args)
    print(f"{'leg':<12}{'req/s':>10}{'p50 ms':>9}{'cpu us/req A':>14}{'cpu us/req B':>14}")
    for key, r in results.items():
        print(
            f"{key:<12}{r['rps']:>10.0f}{r['p50_ms']:>9.3f}{r['cpu_us_a']:>14.1f}"
            f"{r['cpu_us_b']:>14.1f}"
        )
    for inflight in args.inflight:
        local, remote = results[f"local/{inflight}"], results[f"remote/{inflight}"]
        print(
            f"in flight {inflight}: remote/local = {remote['rps'] / local['rps']:.2f}x, "
            f"added p50 {remote['p50_ms'] - local['p50_ms']:.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
