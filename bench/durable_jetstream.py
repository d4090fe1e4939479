"""Durable requests on the JetStream store (R1, R3) against the SQLite store, same run.

    .venv/bin/python bench/durable_jetstream.py [--runs 3] [--duration 3] [--inflight 64]
    .venv/bin/python bench/durable_jetstream.py --loss [--requests 10000]

Two legs per store, each against a fresh ``maitred serve`` (and fresh nats-servers):

- ``accept``: REST callers with ``Prefer: respond-async`` and no worker: a 202 comes once the
  store committed the request (SQLite: the group commit; JetStream: the PubAck), so the
  requests/s are the store's acceptance rate and the latency p50/p99 is the ack latency a caller
  sees. ``--inflight`` requests outstanding (one aiohttp client).
- ``mdp``: bench/loadgen.py's MDP client and echo worker on an ``on_no_worker = "store"``
  service (each request written, and deleted once answered), as bench/durable_mdp.py.

- ``store``: the store alone, in this process (no broker, no HTTP): ``--inflight`` writers each
  put a message through the journal and await its commit, again and again: the acceptance rate
  and ack latency of the store itself.

Legs rotate their order each round; the report is the median of ``--runs`` rounds.

``--loss`` runs the issue's durability check instead: R3 over three nats-servers, ``--requests``
durable requests accepted with no worker, the stream leader and the broker killed with SIGKILL,
a new broker and a worker on the servers left: every accepted request is delivered, the lost
ones and the duplicates are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.durable_mdp import mmi_info  # noqa: E402
from maitred.plugins.nats_testing import NatsServer, start_cluster  # noqa: E402
from maitred.plugins.testing import ServeProcess  # noqa: E402

PY = sys.executable
LOADGEN = str(ROOT / "bench" / "loadgen.py")
BODY = b"x" * 256


def store_section(kind: str, tmp: Path, urls: list[str], stream: str) -> str:
    if kind == "sqlite":
        return f'[store]\npath = "{tmp / f"store-{time.monotonic_ns()}.sqlite3"}"\n'
    replicas = 3 if kind == "jetstream-r3" else 1
    servers = ", ".join(f'"{u}"' for u in urls)
    return (
        f'[store]\nbackend = "jetstream"\njetstream_nats = [{servers}]\n'
        f'jetstream_stream = "{stream}"\njetstream_replicas = {replicas}\n'
    )


def write_config(tmp: Path, section: str) -> Path:
    path = tmp / f"maitred-{time.monotonic_ns()}.toml"
    path.write_text(
        f"""[broker]
log_level = "warning"
drain_timeout = 0.5

{section}
[services.jobs]
on_no_worker = "store"
request_timeout = 600.0
max_queue = 10000000
max_queue_bytes = 4000000000

[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]

[transports.http]
listen = ["127.0.0.1:0"]
store = "memory"
switch = false
"""
    )
    return path


async def accept_load(url: str, inflight: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def caller(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t = time.perf_counter()
            async with session.post(
                url + "/v1/services/jobs", data=BODY, headers={"Prefer": "respond-async"}
            ) as resp:
                await resp.read()
                if resp.status == 202:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(caller(session) for _ in range(inflight)))
        took = time.perf_counter() - start
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3

    return {
        "req_per_s": len(latencies) / took,
        "accepted": len(latencies),
        "errors": errors,
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
    }


def mdp_load(endpoint: str, inflight: int, duration: float, pid: int) -> dict[str, Any]:
    common = ["--endpoint", endpoint, "--service", "jobs"]
    worker = subprocess.Popen(
        [PY, LOADGEN, "worker", *common, "--max-seconds", "120"], stderr=subprocess.DEVNULL
    )
    load = ["--inflight", str(inflight), "--duration", str(duration), "--watch", f"broker={pid}"]
    try:
        out = subprocess.run(
            [PY, LOADGEN, "client", *common, *load],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
        )
        r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        store = mmi_info(endpoint).get("store", {})
        return {
            "req_per_s": r["req_per_s"],
            "p50_ms": r["latency_us"]["p50"] / 1e3,
            "p99_ms": r["latency_us"]["p99"] / 1e3,
            # how many of the stored requests were really written (SQLite rows; JetStream
            # messages and records): one answered before its batch left is never written
            "written": store.get("inserted", store.get("published")),
            "appended": store.get("appended"),
        }
    finally:
        worker.terminate()
        worker.wait(10)


async def store_load(kind: str, tmp: Path, urls: list[str], args: argparse.Namespace) -> Any:
    from maitred.core.durable import StoreJournal
    from maitred.core.store import SQLiteStore, StoredMessage
    from maitred.core.store_jetstream import JetStreamSettings, open_jetstream

    if kind == "sqlite":
        store: Any = SQLiteStore(tmp / f"store-{time.monotonic_ns()}.sqlite3")
    else:
        replicas = 3 if kind == "jetstream-r3" else 1
        store = await open_jetstream(JetStreamSettings(tuple(urls), "BENCH", replicas, 10.0))
    journal = StoreJournal(store)
    latencies: list[float] = []
    stop = time.perf_counter() + args.duration

    async def writer() -> None:
        while time.perf_counter() < stop:
            n = journal.next_id("q")
            t = time.perf_counter()
            journal.put(StoredMessage("q", n, BODY, b"k", "bench", 0))
            await journal.committed()
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(args.inflight)))
    took = time.perf_counter() - start
    commits = store.flushed
    if hasattr(store, "drain"):
        await store.drain()
    else:
        store.close()
    latencies.sort()
    return {
        "req_per_s": len(latencies) / took,
        "accepted": len(latencies),
        "commits": commits,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


def one(kind: str, leg: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    servers: list[NatsServer] = []
    if kind == "jetstream-r1":
        servers = [NatsServer(jetstream=True)]
    elif kind == "jetstream-r3":
        servers = start_cluster(3, jetstream=True)
    try:
        if leg == "store":
            r: dict[str, Any] = asyncio.run(store_load(kind, tmp, [s.url for s in servers], args))
            return r
        cfg = write_config(tmp, store_section(kind, tmp, [s.url for s in servers], "BENCH"))
        with ServeProcess("-c", str(cfg), timeout=60) as served:
            if leg == "accept":
                r = asyncio.run(accept_load(served.endpoint("http"), args.inflight, args.duration))
            else:
                r = mdp_load(served.endpoint("mdp"), args.inflight, args.duration, served.pid)
            served.stop()
        return r
    finally:
        for s in servers:
            s.close()


def bench(args: argparse.Namespace) -> int:
    kinds = ["sqlite", "jetstream-r1", "jetstream-r3"]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    load = os.getloadavg()
    print(f"cpus {os.cpu_count()}, load average at start {load[0]:.2f} {load[1]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="maitred-bench-js-") as d:
        tmp = Path(d)
        for i in range(args.runs):
            for leg in args.legs.split(","):
                order = kinds[i % 3 :] + kinds[: i % 3]  # rotate: drift hits every store
                for kind in order:
                    r = one(kind, leg, tmp, args)
                    results.setdefault((leg, kind), []).append(r)
                    print(f"run {i + 1} {leg:6} {kind:13} {json.dumps(r)}", flush=True)
    print(f"\nmedians of {args.runs} runs, {args.inflight} in flight, {len(BODY)}-byte bodies:")
    print("| leg | store | requests/s | × SQLite | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for leg in args.legs.split(","):
        base = statistics.median(r["req_per_s"] for r in results[(leg, "sqlite")])
        for kind in kinds:
            rs = results[(leg, kind)]

            def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
                return statistics.median(r[key] for r in rs)

            print(
                f"| {leg} | {kind} | {med('req_per_s'):,.0f} | {med('req_per_s') / base:.2f} "
                f"| {med('p50_ms'):.2f} | {med('p99_ms'):.2f} |"
            )
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f}")
    return 0


def loss(args: argparse.Namespace) -> int:
    import nats

    from tests.e2e.helpers import RawWorker, zmq_context

    servers = start_cluster(3, jetstream=True)
    try:
        with tempfile.TemporaryDirectory(prefix="maitred-loss-") as d:
            tmp = Path(d)
            urls = [s.url for s in servers]
            cfg = write_config(tmp, store_section("jetstream-r3", tmp, urls, "LOSS"))
            t0 = time.monotonic()
            with ServeProcess("-c", str(cfg), timeout=60) as first:
                ok = asyncio.run(send_all(first.endpoint("http"), args.requests, args.inflight))
                first.kill()
            took = time.monotonic() - t0

            async def leader() -> str:
                nc = await nats.connect(urls[0])
                try:
                    info = await nc.jetstream().stream_info("LOSS")
                    assert info.cluster is not None and info.cluster.leader is not None
                    return info.cluster.leader
                finally:
                    await nc.close()

            name = asyncio.run(leader())
            victim = next(s for s in servers if s.name == name)
            victim.kill()
            print(f"accepted {len(ok)} in {took:.1f}s; killed the broker and {name} (leader)")
            t1 = time.monotonic()
            got: list[bytes] = []
            with zmq_context() as ctx, ServeProcess("-c", str(cfg), timeout=120) as second:
                started = time.monotonic() - t1
                worker = RawWorker(ctx, second.endpoint("mdp"), "rfc", b"jobs")
                try:
                    worker.ready()
                    deadline = time.monotonic() + 300
                    while not ok <= set(got) and time.monotonic() < deadline:
                        addr, body = worker.request(timeout=30)
                        worker.final(addr, b"ok")
                        got.append(body[-1])
                finally:
                    worker.close()
                second.stop()
            lost = len(ok - set(got))
            dups = len(got) - len(set(got))
            print(
                f"new broker ready in {started:.1f}s; delivered {len(set(got))} of {len(ok)} "
                f"accepted, {lost} lost, {dups} duplicates, in {time.monotonic() - t1:.1f}s"
            )
            return 0 if lost == 0 else 1
    finally:
        for s in servers:
            s.close()


async def send_all(url: str, total: int, inflight: int) -> set[bytes]:
    accepted: set[bytes] = set()
    numbers = iter(range(total))

    async def caller(session: aiohttp.ClientSession) -> None:
        for i in numbers:
            body = b"job-%d" % i
            async with session.post(
                url + "/v1/services/jobs", data=body, headers={"Prefer": "respond-async"}
            ) as resp:
                await resp.read()
                if resp.status == 202:
                    accepted.add(body)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight)) as s:
        await asyncio.gather(*(caller(s) for _ in range(inflight)))
    return accepted


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--legs", default="store,accept,mdp")
    ap.add_argument("--loss", action="store_true", help="the R3 durability check instead")
    ap.add_argument("--requests", type=int, default=10_000)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up the servers too
    run: Callable[[argparse.Namespace], int] = loss if args.loss else bench
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
