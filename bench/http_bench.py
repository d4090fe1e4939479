"""HTTP transport benchmark: REST call rate and p99 vs a raw aiohttp echo server (same body size),
the switch RPC rate, and the durable path (persisted + acked messages/s, SQLite store).

    .venv/bin/python bench/http_bench.py [--runs 3] [--requests 4000] [--concurrency 64]

Each leg is bounded in count and time; the median of ``--runs`` is printed with the ratio.
The broker and the raw echo server run as subprocesses; the MDP echo worker is a thread of this
process on its own zmq socket; load comes from aiohttp clients in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import zmq

PY = sys.executable
MAITRED = str(Path(PY).parent / "maitred")


def _echo_server() -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())


def start(
    cmd: list[str], marker: str, cfg: str | None = None
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    found: dict[str, str] = {}
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("maitred: ") and " listening on " in line:
            name = line.split()[1]
            found[name] = line.split(" listening on ")[1].split()[0]
        elif line.startswith("http://"):
            found["echo"] = line.strip()
        if marker in found:
            return proc, found
    proc.kill()
    raise RuntimeError(f"{cmd} did not start")


def mdp_echo_worker(endpoint: str, stop: threading.Event) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    sock.send_multipart([b"MDPW02", b"\x01", b"echo"])
    while not stop.is_set():
        if not sock.poll(100):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frames[1] == b"\x02":
                sock.send_multipart([b"MDPW02", b"\x04", frames[2], b"", *frames[4:]])
            elif frames[1] == b"\x05":
                sock.send_multipart([b"MDPW02", b"\x05"])
    sock.close()


async def load(url: str, n: int, concurrency: int, body: bytes) -> tuple[float, float]:
    """(req/s, p99 ms) of ``n`` POSTs with ``concurrency`` in flight."""
    lat: list[float] = []
    left = n
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    data = await resp.read()
                    if resp.status != 200 or len(data) != len(body):
                        raise RuntimeError(f"bad reply {resp.status}")
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(concurrency))), 120)
        elapsed = time.perf_counter() - t0
    lat.sort()
    return n / elapsed, lat[int(len(lat) * 0.99) - 1] * 1000


def switch_rpc_rate(url: str, n: int) -> float:
    from maitred.transports.http.client import SwitchClient

    with SwitchClient(url, token="bench:srv") as srv, SwitchClient(url, token="bench:cli") as cli:
        srv.create("bench.rpc")
        t = threading.Thread(
            target=srv.serve,
            args=("bench.rpc", lambda p: p),
            kwargs={"max_requests": n, "poll": 1.0},
        )
        t.start()
        t0 = time.perf_counter()
        for _ in range(n):
            cli.rpc("bench.rpc", b"x" * 64, timeout=10)
        rate = n / (time.perf_counter() - t0)
        t.join(10)
    return rate


async def durable_rate(url: str, n: int, senders: int) -> float:
    """Messages sent into a persistent (SQLite) queue and transferred + acked, per second."""
    async with aiohttp.ClientSession() as session:

        async def login(token: str) -> aiohttp.ClientSession:
            s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            async with s.get(f"{url}/login/{token}") as r:
                assert r.status == 200
            return s

        admin = await login("bench:admin")
        async with admin.get(f"{url}/persistent/bench.durable") as r:
            assert r.status == 200
        consumer = await login("bench:consumer")
        sent = 0
        acked = 0

        async def send(i: int) -> None:
            nonlocal sent
            s = await login(f"bench:snd{i}")
            while sent < n:
                sent += 1
                async with s.post(f"{url}/request/bench.durable/nobody", data=b"m" * 256) as r:
                    assert r.status == 200
            await s.close()

        async def consume() -> None:
            nonlocal acked
            cursor = -1
            while acked < n:
                req = {"timeout": 5.0, "queues": ["bench.durable"], "from": str(cursor)}
                async with consumer.post(f"{url}/transfer", data=json.dumps(req)) as r:
                    got = json.loads(await r.read())
                cursor = int(got["next"])
                for (q, m), _ in got["messages"]:
                    async with consumer.get(f"{url}/ack/{q}/{m}") as r:
                        assert r.status == 200
                    acked += 1

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(consume(), *(send(i) for i in range(senders))), 120)
        rate = n / (time.perf_counter() - t0)
        await admin.close()
        await consumer.close()
        del session
    return rate


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rpc", type=int, default=300)
    ap.add_argument("--durable", type=int, default=3000)
    ap.add_argument("_role", nargs="?", default="")
    args = ap.parse_args()
    if args._role == "echo-server":
        _echo_server()
        return 0
    body = b"x" * args.size
    tmp = Path(tempfile.mkdtemp(prefix="mhbench"))
    cfg = tmp / "maitred.toml"
    cfg.write_text(
        f"""[broker]
log_level = "warning"
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
[transports.http]
listen = ["127.0.0.1:0"]
store = "sqlite"
store_path = "{tmp / "store.sqlite3"}"
switch_credit = 256
"""
    )
    echo, eps = start([PY, __file__, "echo-server"], "echo")
    broker, beps = start([MAITRED, "serve", "-c", str(cfg)], "http")
    stop = threading.Event()
    wt = threading.Thread(target=mdp_echo_worker, args=(beps["mdp"], stop), daemon=True)
    wt.start()
    results: dict[str, list[Any]] = {"raw": [], "rest": [], "rpc": [], "durable": []}
    try:
        asyncio.run(load(f"{beps['http']}/v1/services/echo", 200, 8, body))  # warm-up
        for run in range(args.runs):
            results["raw"].append(
                asyncio.run(load(f"{eps['echo']}/echo", args.requests, args.concurrency, body))
            )
            results["rest"].append(
                asyncio.run(
                    load(f"{beps['http']}/v1/services/echo", args.requests, args.concurrency, body)
                )
            )
            results["rpc"].append(switch_rpc_rate(beps["http"], args.rpc))
            results["durable"].append(asyncio.run(durable_rate(beps["http"], args.durable, 16)))
            print(f"run {run + 1}: " + json.dumps({k: v[-1] for k, v in results.items()}))
    finally:
        stop.set()
        broker.kill()
        echo.kill()
        broker.wait()
        echo.wait()
    raw_rate = statistics.median(r for r, _ in results["raw"])
    raw_p99 = statistics.median(p for _, p in results["raw"])
    rest_rate = statistics.median(r for r, _ in results["rest"])
    rest_p99 = statistics.median(p for _, p in results["rest"])
    print(f"raw aiohttp echo     {raw_rate:8.0f} req/s  p99 {raw_p99:6.2f} ms")
    print(
        f"maitred REST->MDP    {rest_rate:8.0f} req/s  p99 {rest_p99:6.2f} ms  "
        f"ratio {rest_rate / raw_rate:.2f}"
    )
    print(f"switch RPC (serial)  {statistics.median(results['rpc']):8.0f} calls/s")
    print(f"durable send+ack     {statistics.median(results['durable']):8.0f} msg/s (sqlite)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
