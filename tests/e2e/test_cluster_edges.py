"""The cluster's edges: bad input on its subjects, what start refuses (a name in use, NATS
unreachable, a NATS max_payload too small), serving locally without NATS, and nats-py left
unimported without [cluster]."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from maitred.plugins import nats_testing
from maitred.plugins.nats_testing import NatsServer, NatsStarter, free_port
from maitred.plugins.testing import MAITRED_COMMAND, ServeStarter
from maitred.transports.cluster import codec
from tests.e2e import cluster_helpers
from tests.e2e.cluster_helpers import NODE, mdp, start_node, stats, wait_service, worker_on_c
from tests.e2e.helpers import RawClient, RawWorker

pytestmark = pytest.mark.slow

# the fixtures: a real nats-server, maitred serve subprocesses
nats_server = nats_testing.nats_server
maitred_serve = cluster_helpers.graceful_serve

Ctx = zmq.Context[Any]


def _serve_fails(tmp_path: Path, text: str, name: str = "x") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    done = subprocess.run(
        [*MAITRED_COMMAND, "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0, done.stdout
    return done.stderr


def test_garbage_on_the_cluster_subjects_is_dropped_and_counted(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    url = nats_server().url
    a, _c, worker = worker_on_c(url, maitred_serve, tmp_path, ctx, "echo")

    async def send() -> None:
        import nats

        nc = await nats.connect(url)
        for subject in (
            "maitred.state.zz",
            "maitred.req.a",
            "maitred.rep.a",
            "maitred.pub.t",
            "maitred.cancel.a",
        ):
            await nc.publish(subject, b"\xc1 not msgpack")
        # cancels from a node nobody knows and from an old epoch of c
        await nc.publish("maitred.cancel.a", codec.encode(codec.Cancel(1, "ghost", 7)))
        await nc.publish("maitred.cancel.a", codec.encode(codec.Cancel(1, "c", 1)))
        # well formed, from nodes nobody knows or an old epoch of c
        fwd = codec.Forward(1, b"echo", 1.0, "ghost", 7, [b"x"])
        await nc.publish("maitred.req.a", codec.encode(fwd))
        reply = codec.Reply(123456, int(codec.Kind.FINAL), "c", 1, [b"x"])
        await nc.publish("maitred.rep.a", codec.encode(reply))
        await nc.flush()
        await nc.close()

    asyncio.run(send())
    want = {
        "cluster.dropped.malformed": 4,
        "cluster.dropped.unknown_node": 2,
        "cluster.dropped.late_reply": 1,
        "cluster.dropped.stale_epoch": 1,
    }
    deadline = time.monotonic() + 5
    while True:
        got = stats(ctx, a)
        if all(got.get(k, 0) >= n for k, n in want.items()):
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.05)
    # a still works
    client = RawClient(ctx, mdp(a), "rfc")
    client.send(b"echo", b"still")
    addr, body = worker.request()
    worker.final(addr, *body)
    assert client.recv() == (True, [b"still"])
    client.close()
    worker.close()


@pytest.mark.allow_error_logs()
def test_a_node_name_in_use_is_refused_with_the_other_address(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path
) -> None:
    url = nats_server().url
    a = start_node(maitred_serve, tmp_path, url, "a")
    stderr = _serve_fails(tmp_path, NODE.format(url=url, node="a", interval=1.0), "again")
    assert "node name 'a' is in use" in stderr
    assert a.endpoint("mdp") in stderr


def test_nats_unreachable_at_start(maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    text = NODE.format(url=url, node="lonely", interval=1.0) + "connect_timeout = 0.5\n"
    stderr = _serve_fails(tmp_path, text)
    assert "cannot reach NATS" in stderr and "required = false" in stderr
    # with required = false it serves its local workers
    path = tmp_path / "local.toml"
    path.write_text(text + "required = false\n")
    node = maitred_serve("-c", str(path))
    worker = RawWorker(ctx, mdp(node), "rfc", b"local")
    worker.ready()
    client = RawClient(ctx, mdp(node), "rfc")
    client.send(b"local", b"hi")
    addr, body = worker.request()
    worker.final(addr, *body)
    assert client.recv() == (True, [b"hi"])
    client.close()
    worker.close()


def test_a_nats_max_payload_below_max_message_size_is_refused(
    nats_server: NatsStarter, tmp_path: Path
) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 1000\n")
    server = NatsServer(extra_args=["-c", str(conf)])  # the fixture skips without the binary
    try:
        stderr = _serve_fails(tmp_path, NODE.format(url=server.url, node="small", interval=1.0))
    finally:
        server.close()
    assert "max_payload is 1000 bytes" in stderr and "max_message_size" in stderr


def test_without_cluster_nats_is_not_imported() -> None:
    code = (
        "import sys\n"
        "from maitred.plugins.testing import make_broker, running_broker\n"
        "import asyncio\n"
        "async def main():\n"
        "    async with running_broker(('[transports.mdp]\\n"
        'endpoints = ["tcp://127.0.0.1:0"]\\n\')):\n'
        "        pass\n"
        "asyncio.run(main())\n"
        "assert 'nats' not in sys.modules, 'nats was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_node_started_without_nats_joins_when_nats_comes(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    path = tmp_path / "early.toml"
    path.write_text(
        NODE.format(url=url, node="early", interval=0.2)
        + "connect_timeout = 0.3\nrequired = false\n"
    )
    early = maitred_serve("-c", str(path))
    server = NatsServer(extra_args=["-p", str(port)])  # NATS comes up after the node
    try:
        late = start_node(maitred_serve, tmp_path, url, "late", interval=0.2)
        worker = RawWorker(ctx, mdp(late), "rfc", b"joined")
        worker.ready()
        wait_service(ctx, early, "joined", timeout=8.0)
        worker.close()
    finally:
        server.close()


def test_nodes_keep_serving_locally_without_nats_and_meet_again(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    server = nats_server()
    port = server.port
    a = start_node(maitred_serve, tmp_path, server.url, "a", interval=0.2)
    c = start_node(maitred_serve, tmp_path, server.url, "c", interval=0.2)
    worker = RawWorker(ctx, mdp(c), "rfc", b"svc")
    worker.ready()
    wait_service(ctx, a, "svc")
    server.kill()
    wait_service(ctx, a, "svc", b"404", timeout=5.0)  # c is gone for a
    client = RawClient(ctx, mdp(c), "rfc")  # c still serves its own callers
    client.send(b"svc", b"local")
    addr, body = worker.request()
    worker.final(addr, *body)
    assert client.recv() == (True, [b"local"])
    again = NatsServer(extra_args=["-p", str(port)])  # NATS is back: nats-py reconnects
    try:
        wait_service(ctx, a, "svc", timeout=10.0)
    finally:
        again.close()
        client.close()
        worker.close()
