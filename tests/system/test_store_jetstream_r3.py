"""A replicated store survives losing a machine: with the stream on three nats-servers (R3),
a broker accepts N durable requests (REST ``Prefer: respond-async``: 202 once JetStream
acknowledged each), then that broker and one nats-server are killed with SIGKILL. A new broker
on the two servers left, with a worker, delivers every accepted request at least once: none
lost; duplicates are counted (there can be none here: no worker ran before the kill).

N is 1,000 here (the suite runs on two shared cores); bench/durable_jetstream.py runs the
10,000 of the issue with the same steps (``--loss``)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maitred.plugins.nats_testing import (  # noqa: F401  (fixtures)
    NatsClusterStarter,
    nats_cluster,
)
from maitred.plugins.testing import ServeProcess
from tests.e2e.helpers import RawWorker, zmq_context

pytest.importorskip("nats")
pytestmark = pytest.mark.slow

N = int(os.environ.get("MAITRED_R3_REQUESTS", "1000"))
CALLERS = 8


def config(tmp_path: Path, urls: list[str]) -> Path:
    path = tmp_path / "maitred.toml"
    servers = ", ".join(f'"{u}"' for u in urls)
    path.write_text(
        f"""
[broker]
drain_timeout = 0.5

[store]
backend = "jetstream"
jetstream_nats = [{servers}]
jetstream_replicas = 3
jetstream_timeout = 5.0

[services.jobs]
on_no_worker = "store"
request_timeout = 120.0
max_queue = 100000

[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]

[transports.http]
listen = ["127.0.0.1:0"]
store = "memory"
switch = false
"""
    )
    return path


async def stream_leader(url: str) -> str:
    import nats

    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info("MAITRED_DURABLE")
        assert info.cluster is not None and info.cluster.leader is not None
        return info.cluster.leader
    finally:
        await nc.close()


def post_many(endpoint: str, numbers: range) -> list[tuple[int, bytes]]:
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    out = []
    try:
        for i in numbers:
            conn.request(
                "POST",
                "/v1/services/jobs",
                body=b"job-%d" % i,
                headers={"Prefer": "respond-async"},
            )
            resp = conn.getresponse()
            out.append((resp.status, resp.read()))
    finally:
        conn.close()
    return out


def test_r3_loses_nothing_when_a_nats_server_and_the_broker_die(
    tmp_path: Path,
    nats_cluster: NatsClusterStarter,  # noqa: F811
) -> None:
    servers = nats_cluster(3, jetstream=True)
    cfg = config(tmp_path, [s.url for s in servers])
    accepted: set[bytes] = set()
    with zmq_context() as ctx:
        first = ServeProcess("-c", str(cfg), timeout=30)
        try:
            step = N // CALLERS
            parts = [
                range(i * step, N if i == CALLERS - 1 else (i + 1) * step) for i in range(CALLERS)
            ]
            with ThreadPoolExecutor(CALLERS) as pool:
                for part, results in zip(
                    parts,
                    pool.map(lambda r: post_many(first.endpoint("http"), r), parts),
                    strict=True,
                ):
                    for i, (status, body) in zip(part, results, strict=True):
                        assert status == 202, (status, body)
                        assert json.loads(body)["service"] == "jobs"
                        accepted.add(b"job-%d" % i)
            assert len(accepted) == N
        finally:
            first.close()  # SIGKILL
        # one machine of three gone: the stream keeps its quorum. A follower here: losing the
        # leader costs the cluster an election of ~10 s first (bench/durable_jetstream.py
        # --loss kills the leader)
        leader = asyncio.run(stream_leader(servers[0].url))
        victim = next(s for s in servers if s.name != leader)
        victim.kill()

        with ServeProcess("-c", str(cfg), timeout=30) as second:
            worker = RawWorker(ctx, second.endpoint("mdp"), "rfc", b"jobs")
            try:
                worker.ready()
                got: list[bytes] = []
                while not accepted <= set(got):
                    # the stream may pause while it settles on two servers: beat meanwhile,
                    # or a wait past the liveness window (7.5 s) gets the worker dropped
                    addr, body = worker.request(timeout=30, keepalive=2.0)
                    worker.final(addr, b"ok")
                    got.append(body[-1])
            finally:
                worker.close()
            assert second.stop() == 0
        duplicates = len(got) - len(set(got))
        print(f"R3: {N} accepted, {len(set(got))} delivered, {duplicates} duplicates, 0 lost")
        assert set(got) == accepted
        assert duplicates == 0
