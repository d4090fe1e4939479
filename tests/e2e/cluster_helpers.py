"""Nodes of a cluster for the e2e tests: ``maitred serve`` subprocesses on one real
``nats-server``, each with MDP, REST and WebSocket on ephemeral ports."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from maitred.plugins.testing import ServeProcess, ServeStarter
from tests.e2e.helpers import RawClient, RawWorker

T = TypeVar("T")

NODE = """
[broker]
tick_interval = 0.02
drain_timeout = 0.5
[store]
backend = "memory"
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
[transports.http]
listen = ["127.0.0.1:0"]
[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
[cluster]
nats = ["{url}"]
node = "{node}"
announce_interval = {interval}
"""


@pytest.fixture(name="maitred_serve")
def graceful_serve() -> Iterator[ServeStarter]:
    """``maitred serve`` subprocesses stopped with SIGTERM after the test (a drain: they write
    their coverage data), killed only when that fails."""
    started: list[ServeProcess] = []

    def start(*args: str, env: Mapping[str, str] | None = None, **kw: Any) -> ServeProcess:
        served = ServeProcess(*args, env=env, **kw)
        started.append(served)
        return served

    yield start  # type: ignore[misc]
    for served in started:
        if served.proc.poll() is None:
            try:
                served.stop(timeout=10)
            except RuntimeError:
                pass
        served.close()


def start_node(
    serve: ServeStarter,
    tmp_path: Path,
    url: str,
    node: str,
    *,
    interval: float = 1.0,
    extra: str = "",
) -> ServeProcess:
    path = tmp_path / f"{node}.toml"
    path.write_text(NODE.format(url=url, node=node, interval=interval) + extra)
    return serve("-c", str(path))


def mdp(node: ServeProcess) -> str:
    return node.endpoint("mdp")


def http(node: ServeProcess) -> str:
    return node.endpoint("http")


def ws(node: ServeProcess) -> str:
    return node.endpoint("ws")


def mmi(ctx: zmq.Context[Any], node: ServeProcess, service: str, arg: bytes = b"") -> bytes:
    client = RawClient(ctx, mdp(node), "rfc")
    try:
        return client.call(service.encode(), arg, timeout=5.0)[-1]
    finally:
        client.close()


def wait_service(
    ctx: zmq.Context[Any],
    node: ServeProcess,
    service: str,
    want: bytes = b"200",
    timeout: float = 5.0,
) -> float:
    """Poll ``mmi.service`` on ``node`` until it answers ``want``; the seconds it took."""
    start = time.monotonic()
    while True:
        if mmi(ctx, node, "mmi.service", service.encode()) == want:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"mmi.service {service} on {node.args} never {want!r}")
        time.sleep(0.05)


def stats(ctx: zmq.Context[Any], node: ServeProcess) -> dict[str, int]:
    info = json.loads(mmi(ctx, node, "mmi.info"))
    return dict(info.get("stats", {}))


def post(base: str, service: str, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{base}/v1/services/{service}", data=body, method="POST")
    request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def worker_on_c(
    nats_url: str, serve: ServeStarter, tmp_path: Path, ctx: zmq.Context[Any], service: str
) -> tuple[ServeProcess, ServeProcess, RawWorker]:
    """Nodes ``a`` and ``c`` on the NATS at ``nats_url``, a raw MDP worker of ``service`` on
    ``c`` only, returned once ``a`` sees the service."""
    a = start_node(serve, tmp_path, nats_url, "a")
    c = start_node(serve, tmp_path, nats_url, "c")
    worker = RawWorker(ctx, mdp(c), "rfc", service.encode())
    worker.ready()
    wait_service(ctx, a, service)
    return a, c, worker
