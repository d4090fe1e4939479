"""The cluster hop: a caller on node A to a worker on node B, against the same caller to a
worker on A (the local hop), at 1 and 64 requests in flight; and pub/sub fan-out across nodes:
medians of several runs.

    python bench/cluster.py                 # 3 runs x {1, 64} x {local, remote}, ~1 min
    python bench/cluster.py --runs 5 --duration 3
    python bench/cluster.py --only fanout --subscribers 8 --messages 2000

One nats-server, two ``maitred serve`` nodes (MDP + cluster), one MDP echo worker process (on
A for the local leg, on B for the remote one), the caller (maitred's AsyncClient) in this
process. Reports requests per second, the ratio remote/local, p50 latency at 1 in flight and
the added p50, and CPU microseconds per request of each node (from /proc: user + system).

Fan-out: three nodes (WebSocket + cluster), a publisher on A (maitred.json, ``--window``
publications awaiting their ack at once), ``--subscribers`` sessions subscribed to ``fan.>``:
all on A (the local leg), or half on B and half on C (the cluster leg). Each run publishes
``--messages`` messages of 64 bytes, then ``fan.end``; it reports messages delivered per second
(every subscriber's count, summed, over the time from the first publication to the last
``fan.end`` received), the share delivered (pub/sub is at most once), and CPU microseconds per
delivered message of each node and of this process (``clients``: the subscribers and the
publisher run here, on one event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maitred.plugins.nats_testing import NatsServer  # noqa: E402
from maitred.plugins.testing import ServeProcess  # noqa: E402
from maitred.transports.mdp.client import AsyncClient  # noqa: E402
from maitred.transports.ws.client import JsonClient  # noqa: E402

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


async def fanout_run(
    publisher_url: str, subscriber_urls: list[str], messages: int, window: int
) -> dict[str, float]:
    """One run: (deliveries/s, delivered share) with the subscribers on ``subscriber_urls``."""
    # "xyzzy": the development key a broker without [transports.ws] keys accepts
    pub = await JsonClient.connect(publisher_url, "xyzzy")
    subs = [await JsonClient.connect(url, "xyzzy") for url in subscriber_urls]
    for sub in subs:
        await sub.subscribe("fan.>")
    # the NATS subscriptions follow the local ones: probe until every subscriber hears
    waiting = set(range(len(subs)))
    for attempt in range(200):
        await pub.publish("fan.probe", data=str(attempt).encode())
        for i in list(waiting):
            with suppress(TimeoutError):
                while (await subs[i].next_event(timeout=0.05)).topic == "fan.probe":
                    waiting.discard(i)
                    break
        if not waiting:
            break
    else:
        raise RuntimeError(f"{len(waiting)} subscribers never heard the publisher")
    await asyncio.sleep(0.3)
    for sub in subs:  # the probes still on the way
        while not sub.events.empty():
            sub.events.get_nowait()

    async def count(sub: JsonClient) -> int:
        got = 0
        while True:
            event = await sub.next_event(timeout=30.0)
            if event.topic == "fan.end":
                return got
            if event.topic == "fan.m":
                got += 1

    counters = [asyncio.ensure_future(count(sub)) for sub in subs]
    body = b"x" * 64
    gate = asyncio.Semaphore(window)

    async def one() -> None:
        async with gate:
            await pub.publish("fan.m", data=body)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(messages)))
    await pub.publish("fan.end", data=b"")
    counts = await asyncio.gather(*counters)
    elapsed = time.perf_counter() - t0
    for client in (pub, *subs):
        await client.close()
    delivered = sum(counts)
    return {
        "dps": delivered / elapsed,
        "share": delivered / (messages * len(subs)),
        "delivered": float(delivered),
    }


def fanout(args: argparse.Namespace) -> dict[str, Any]:
    server = NatsServer()
    names = ("a", "b", "c")
    nodes = [
        ServeProcess(
            "--ws",
            "127.0.0.1:0",
            "--cluster",
            server.url,
            "--node",
            name,
            "--log-level",
            "warning",
        )
        for name in names
    ]
    a, b, c = (n.endpoint("ws") for n in nodes)
    n = args.subscribers
    legs = {
        "local (all on A)": [a] * n,
        "cluster (B and C)": [b] * (n - n // 2) + [c] * (n // 2),
    }
    results: dict[str, Any] = {}
    try:
        time.sleep(1.2)  # the nodes meet
        runs: dict[str, list[dict[str, float]]] = {leg: [] for leg in legs}
        for _ in range(args.runs):
            for leg, urls in legs.items():  # round robin: each run compares like with like
                pids = [node.pid for node in nodes] + [os.getpid()]
                cpu0 = [cpu_seconds(pid) for pid in pids]
                r = asyncio.run(fanout_run(a, urls, args.messages, args.window))
                cpu1 = [cpu_seconds(pid) for pid in pids]
                for name, t0, t1 in zip((*names, "clients"), cpu0, cpu1, strict=True):
                    r[f"cpu_us_{name}"] = (t1 - t0) / max(1.0, r["delivered"]) * 1e6
                runs[leg].append(r)
        for leg, rs in runs.items():
            results[leg] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    finally:
        for node in nodes:
            node.close()
        server.close()
    return results


def print_fanout(args: argparse.Namespace, results: dict[str, Any]) -> None:
    print(
        f"fan-out: {args.messages} messages from A to {args.subscribers} subscribers, "
        f"medians of {args.runs}"
    )
    print(
        f"{'leg':<20}{'deliveries/s':>14}{'delivered':>11}{'cpu us A':>10}{'B':>8}{'C':>8}"
        f"{'clients':>9}"
    )
    for leg, r in results.items():
        print(
            f"{leg:<20}{r['dps']:>14.0f}{r['share']:>10.1%}{r['cpu_us_a']:>10.1f}"
            f"{r['cpu_us_b']:>8.1f}{r['cpu_us_c']:>8.1f}{r['cpu_us_clients']:>9.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument(
        "--inflight", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64]
    )
    parser.add_argument("--only", choices=["hop", "fanout"], default=None)
    parser.add_argument("--subscribers", type=int, default=8)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args(argv)
    if args.only != "hop":
        print_fanout(args, fanout(args))
    if args.only == "fanout":
        return 0
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
