"""The event loop's worst lag while a broker with a big state answers GET /metrics and MMI
listings (bench.lag.LagProbe); the figures of issue 11.

    .venv/bin/python -m bench.big_state [--services 20000]

One anonymous MDP client creates the services (one queued request each) over TCP; then one
GET /metrics, one mmi.services and one ``hello`` of the JSON WebSocket dialect listing 60,000
methods each run while the probe measures how late a 1 ms sleep wakes up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import zmq

from bench.lag import LagProbe
from tests.e2e.helpers import BrokerThread, RawClient, wait_until
from tests.e2e.http_helpers import RawHttp, endpoint_of, http_toml


def _measure(broker: BrokerThread, what: str, action: Any) -> None:
    probe = LagProbe.on(broker.loop)
    started = time.monotonic()
    detail = action()
    took = time.monotonic() - started
    worst = probe.stop_from_thread(broker.loop)
    print(f"{what:<34} {took * 1000:8.1f} ms  worst loop lag {worst * 1000:8.1f} ms  {detail}")


def _hello(endpoint: str, methods: int) -> str:
    from websockets.asyncio.client import connect

    async def run() -> str:
        hello = {
            "type": "hello",
            "key": "xyzzy",
            "name": "big",
            "methods": [f"m{i:05d}" for i in range(methods)],
        }
        text = json.dumps(hello)
        async with connect(
            endpoint,
            subprotocols=["maitred.json"],  # type: ignore[list-item]
            max_size=None,
        ) as ws:
            await ws.send(text)
            answer = await ws.recv()
            return f"hello {len(text)} B -> {str(answer)[:60]}"

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20_000)
    parser.add_argument("--methods", type=int, default=60_000)
    args = parser.parse_args()
    broker = BrokerThread(
        http_toml(["127.0.0.1:0"], "switch = false\n")
        + '[transports.ws]\nlisten = "127.0.0.1:0"\nmax_frame_size = 4194304\n'
        + "[services.default]\nrequest_timeout = 600.0\n"
        + f"[broker]\nmax_services = {args.services + 100}\n"
        + '[transports.mdp]\nendpoints = ["tcp://127.0.0.1:0"]\n'
    )
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        client = RawClient(ctx, broker.endpoint, "0.1-dealer")
        started = time.monotonic()
        for i in range(args.services):
            client.send(f"anon.{i:05d}".encode(), b"x")
        wait_until(
            lambda: broker.call(lambda: len(broker.broker.router.services)) >= args.services,
            timeout=300,
        )
        print(f"{args.services} services created in {time.monotonic() - started:.1f} s")
        http = RawHttp(endpoint_of(broker, "http://"), timeout=60)

        def metrics() -> str:
            status, _, body = (http.send("GET", "/metrics"), http.read())[1]
            return f"{status}, {len(body):,} B"

        def mmi() -> str:
            answer = client.call(b"mmi.services", b"", timeout=60)[-1]
            return f"{len(answer):,} B"

        _measure(broker, "GET /metrics", metrics)
        _measure(broker, "mmi.services", mmi)
        ws = broker.endpoints["ws"][0]
        _hello(ws, 1)  # warm-up: the first JSON connection imports the dialect
        _measure(broker, "JSON hello, 256 methods", lambda: _hello(ws, 256))
        _measure(broker, f"JSON hello, {args.methods} methods", lambda: _hello(ws, args.methods))
        http.close()
        client.close()
    finally:
        broker.stop(drain_timeout=0)
        ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
