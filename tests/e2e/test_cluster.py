"""A cluster of ``maitred serve`` processes on a real ``nats-server``: requests, replies and
errors cross nodes from every protocol, publications and ``$sys`` events cross, management sees
the cluster, two processes share one port (failures: test_cluster_failures.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
import zmq

from maitred.core.errors import ErrorCode, MaitredError
from maitred.plugins import nats_testing
from maitred.plugins.nats_testing import NatsStarter
from maitred.plugins.testing import ServeStarter
from maitred.transports.ws.client import JsonClient, payload_of
from tests.e2e import cluster_helpers, matrix_peers
from tests.e2e.cluster_helpers import (
    http,
    mdp,
    mmi,
    post,
    run,
    start_node,
    stats,
    wait_service,
    worker_on_c,
    ws,
)
from tests.e2e.helpers import RawClient, RawWorker

pytestmark = pytest.mark.slow

# the fixtures: a real nats-server, maitred serve subprocesses
nats_server = nats_testing.nats_server
maitred_serve = cluster_helpers.graceful_serve

Ctx = zmq.Context[Any]
BINARY = bytes(range(256)) * 3


def test_callers_on_a_reach_a_worker_only_on_c(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    a, _c, worker = worker_on_c(nats_server().url, maitred_serve, tmp_path, ctx, "echo")
    # MDP client on A: partials in order, bytes intact
    client = RawClient(ctx, mdp(a), "rfc")
    client.send(b"echo", BINARY, b"")
    addr, body = worker.request()
    assert body == [BINARY, b""]
    worker.partial(addr, b"p1")
    worker.partial(addr, b"p2")
    worker.final(addr, b"done", BINARY)
    assert [client.recv() for _ in range(3)] == [
        (False, [b"p1"]),
        (False, [b"p2"]),
        (True, [b"done", BINARY]),
    ]
    # REST caller on A
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(r=post(http(a), "echo", BINARY)))
    thread.start()
    addr, body = worker.request()
    assert body == [BINARY]
    worker.final(addr, BINARY[::-1])
    thread.join(10)
    assert result["r"] == (200, BINARY[::-1])

    # WebSocket (maitred.json) caller on A
    async def json_call() -> bytes:
        async with await JsonClient.connect(ws(a), "xyzzy") as jc:
            call = asyncio.ensure_future(jc.request("echo", data=b"\x00ws\xff", timeout=5))
            addr, body = await asyncio.to_thread(worker.request)
            assert body == [b"\x00ws\xff"]
            worker.final(addr, b"\xffback\x00")
            reply = await call
            import base64

            return base64.b64decode(reply.data) if isinstance(reply.data, str) else b""

    assert run(json_call()) == b"\xffback\x00"
    # the worker on C is shown on A as node c's
    workers = json.loads(mmi(ctx, a, "mmi.workers", b"echo"))
    assert [(w["worker"], w["address"]) for w in workers] == [("c/echo", "node c")]
    nodes = json.loads(mmi(ctx, a, "mmi.nodes"))
    assert [(n["node"], n["self"]) for n in nodes] == [("a", True), ("c", False)]
    assert nodes[1]["services"] == 1
    client.close()
    worker.close()


def test_a_local_worker_is_preferred(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    a, _c, remote = worker_on_c(nats_server().url, maitred_serve, tmp_path, ctx, "svc")
    local = RawWorker(ctx, mdp(a), "rfc", b"svc")
    local.ready()
    deadline = time.monotonic() + 5
    while len(json.loads(mmi(ctx, a, "mmi.workers", b"svc"))) < 2:  # a knows both
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client = RawClient(ctx, mdp(a), "rfc")
    for i in range(5):
        client.send(b"svc", str(i).encode())
        addr, body = local.request()
        assert body == [str(i).encode()]
        local.final(addr, b"local")
        assert client.recv() == (True, [b"local"])
    workers = json.loads(mmi(ctx, a, "mmi.workers", b"svc"))
    served = {w["worker"]: w["served"] for w in workers}
    assert served["c/svc"] == 0 and len(served) == 2
    client.close()
    local.close()
    remote.close()


def test_mmi_service_follows_the_remote_worker(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    url = nats_server().url
    a = start_node(maitred_serve, tmp_path, url, "a")
    c = start_node(maitred_serve, tmp_path, url, "c")
    assert mmi(ctx, a, "mmi.service", b"only.c") == b"404"
    worker = RawWorker(ctx, mdp(c), "rfc", b"only.c")
    worker.ready()
    wait_service(ctx, a, "only.c")
    worker.disconnect()
    assert wait_service(ctx, a, "only.c", b"404", timeout=3.0) < 3.0
    worker.close()


def test_a_forwarded_request_fails_with_504_at_its_deadline(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    a, _c, worker = worker_on_c(nats_server().url, maitred_serve, tmp_path, ctx, "slow")

    async def call() -> int:
        async with await JsonClient.connect(ws(a), "xyzzy") as jc:
            try:
                await jc.request("slow", data=b"x", timeout=0.5)
            except MaitredError as exc:
                return int(exc.code)
            return 200

    assert run(call()) == ErrorCode.TIMEOUT
    addr, _ = worker.request()  # it got the request; its late answer goes nowhere
    worker.final(addr, b"late")
    worker.close()


def test_pubsub_crosses_three_nodes_once_per_session_without_echo(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    url = nats_server().url
    nodes = [start_node(maitred_serve, tmp_path, url, n) for n in ("a", "b", "c")]
    for n in nodes:
        wait_nodes(ctx, n, 3)

    async def main() -> None:
        sa = await JsonClient.connect(ws(nodes[0]), "xyzzy")
        sb = await JsonClient.connect(ws(nodes[1]), "xyzzy")
        sc = await JsonClient.connect(ws(nodes[2]), "xyzzy")
        await sa.subscribe("a.*")
        await sa.subscribe("a.>")  # the same session twice: once per message still
        await sb.subscribe("a.>")
        await sc.subscribe("a.*")
        # the NATS subscriptions follow the local ones: wait until a probe gets through
        for sub in (sa, sb):
            for attempt in range(100):
                await sc.publish("a.probe", data=str(attempt).encode())
                try:
                    event = await sub.next_event(timeout=0.1)
                except TimeoutError:
                    continue
                if event.topic == "a.probe":
                    break
            else:
                raise AssertionError("publications never crossed")
        for s in (sa, sb, sc):
            await drain(s)
        await sc.publish("a.x", data=b"1")
        await sa.publish("a.y.z", data=b"2")
        await sb.publish("a.end", data=b"3")
        got_a = await until(sa, "a.end")
        got_b = await until(sb, "a.end")
        got_c = await until(sc, "a.end")
        # each once (order across publishers on different nodes is not defined)
        assert sorted(got_a) == ["a.end", "a.x", "a.y.z"]
        assert sorted(got_b) == ["a.end", "a.x", "a.y.z"]
        assert sorted(got_c) == ["a.end", "a.x"]
        # a system event of node c reaches a's subscriber, with c's name
        await sa.subscribe("$sys.worker.ready")
        for attempt in range(50):
            worker = RawWorker(ctx, mdp(nodes[2]), "rfc", f"w{attempt}".encode())
            worker.ready()
            try:
                event = await sa.next_event(timeout=0.2)
            except TimeoutError:
                continue
            finally:
                worker.close()
            payload = payload_of(event)
            assert payload["node"] == "c"
            assert payload["service"] == f"w{attempt}"
            break
        else:
            raise AssertionError("$sys.worker.ready never crossed")
        # and a's own events say a (not only those that crossed)
        worker = RawWorker(ctx, mdp(nodes[0]), "rfc", b"on.a")
        worker.ready()
        try:
            while True:
                payload = payload_of(await sa.next_event(timeout=5))
                if payload["service"] == "on.a":
                    assert payload["node"] == "a"
                    break
        finally:
            worker.close()
        for s in (sa, sb, sc):
            await s.close()

    run(main())


def wait_nodes(ctx: Ctx, node: Any, count: int, timeout: float = 5.0) -> None:
    start = time.monotonic()
    while len(json.loads(mmi(ctx, node, "mmi.nodes"))) != count:
        assert time.monotonic() - start < timeout, "the nodes never met"
        time.sleep(0.05)


async def drain(client: JsonClient) -> None:
    while True:
        try:
            await client.next_event(timeout=0.2)
        except TimeoutError:
            return


async def until(client: JsonClient, last: str) -> list[str]:
    topics = []
    while True:
        event = await client.next_event(timeout=5)
        topics.append(event.topic)
        if event.topic == last:
            await asyncio.sleep(0.2)  # a duplicate would come right behind
            while not client.events.empty():
                topics.append((await client.next_event()).topic)
            return topics


def test_two_processes_share_one_http_and_one_ws_port(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    from maitred.plugins.nats_testing import free_port

    url = nats_server().url
    http_port, ws_port = free_port(), free_port()
    shared = (
        f'[transports.http]\nlisten = ["127.0.0.1:{http_port}"]\nreuse_port = true\n'
        f'[transports.ws]\nlisten = "127.0.0.1:{ws_port}"\nping_interval = 0\nreuse_port = true\n'
    )
    nodes = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.toml"
        text = NODE_SHARED.format(url=url, node=name) + shared
        path.write_text(text)
        nodes.append(maitred_serve("-c", str(path)))
    a, b = nodes
    assert http(a) == http(b) == f"http://127.0.0.1:{http_port}"
    stop = threading.Event()

    def serve() -> None:
        worker = RawWorker(ctx, mdp(a), "rfc", b"shared")
        worker.ready()
        while not stop.is_set():
            try:
                addr, body = worker.request(timeout=0.2)
            except AssertionError:
                continue
            worker.final(addr, b"from a:" + body[0])
        worker.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        wait_service(ctx, b, "shared")
        results = [post(http(a), "shared", str(i).encode()) for i in range(24)]

        async def over_ws() -> list[Any]:
            out = []
            for _ in range(8):
                async with await JsonClient.connect(f"ws://127.0.0.1:{ws_port}", "xyzzy") as jc:
                    out.append((await jc.request("shared", data=b"w", timeout=5)).data)
            return out

        ws_results = run(over_ws())
    finally:
        stop.set()
        thread.join(10)
    assert results == [(200, b"from a:" + str(i).encode()) for i in range(24)]
    assert len(ws_results) == 8
    served = [
        json.loads(mmi(ctx, n, "mmi.info"))["traffic"].get("http", {}).get("requests", 0)
        for n in (a, b)
    ]
    assert all(n > 0 for n in served), served  # the kernel spread the connections


NODE_SHARED = """
[store]
backend = "memory"
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
[cluster]
nats = ["{url}"]
node = "{node}"
"""


#: a trusted WebSocket key with the name the matrix's workers present
MATRIX_KEY = (
    f'[[transports.ws.keys]]\nkey = "{matrix_peers.WS_KEY}"\ntrusted = true\n'
    'identity = "ws"\nroles = ["trusted"]\n'
    '[[transports.ws.keys]]\nkey = "xyzzy"\ntrusted = true\nidentity = "service"\n'
    'roles = ["trusted"]\n'
)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("json", BINARY),  # maitred.json: any bytes (base64 on the wire)
        ("middleman", "text\nwith . lines\n.and a dot\u00e9".encode()),  # middleman: text
        ("switch", 'text \u00e9 "quoted" {json}'.encode()),  # message-switch: text
    ],
)
def test_rest_and_mdp_callers_on_a_reach_a_ws_or_switch_worker_only_on_c(
    nats_server: NatsStarter,
    maitred_serve: ServeStarter,
    tmp_path: Path,
    ctx: Ctx,
    kind: str,
    body: bytes,
) -> None:
    url = nats_server().url
    a = start_node(maitred_serve, tmp_path, url, "a", extra=MATRIX_KEY)
    c = start_node(maitred_serve, tmp_path, url, "c", extra=MATRIX_KEY)
    service = f"echo.{kind}"
    worker = matrix_peers.make_worker(kind, cast(Any, c), service, ctx)
    try:
        wait_service(ctx, a, service)
        workers = json.loads(mmi(ctx, a, "mmi.workers", service.encode()))
        assert [w["address"] for w in workers] == ["node c"]  # only C has it
        assert post(http(a), service, body) == (200, body)
        client = RawClient(ctx, mdp(a), "rfc")
        try:
            assert client.call(service.encode(), body, timeout=10.0) == [body]
            if kind == "json":  # partial replies cross in order
                marked = matrix_peers.PARTIAL_MARK + body
                client.send(service.encode(), marked)
                assert [client.recv(10.0) for _ in range(3)] == [
                    (False, [b"p1"]),
                    (False, [b"p2"]),
                    (True, [marked]),
                ]
        finally:
            client.close()
        assert worker.failure is None
    finally:
        worker.stop()


def test_a_callers_cancel_reaches_the_serving_node(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    import socket
    from urllib.parse import urlsplit

    a, c, worker = worker_on_c(nats_server().url, maitred_serve, tmp_path, ctx, "slow")
    client = RawClient(ctx, mdp(a), "rfc")
    client.send(b"slow", b"first")
    addr, body = worker.request()  # the worker is busy with it
    assert body == [b"first"]
    # a REST caller on A whose request crosses to C and waits there behind "first"
    where = urlsplit(http(a))
    sock = socket.create_connection((where.hostname, where.port), timeout=5)
    sock.sendall(
        b"POST /v1/services/slow HTTP/1.1\r\nHost: a\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 6\r\n\r\nsecond"
    )
    wait_until_stat(ctx, c, "cluster.served", 2)
    sock.close()  # the caller goes away: A cancels it, and tells C
    wait_until_stat(ctx, c, "cluster.cancelled", 1)
    assert stats(ctx, a).get("cluster.cancels_sent") == 1
    worker.final(addr, b"one")
    assert client.recv(5.0) == (True, [b"one"])
    # the cancelled request never reaches the worker: the next one it gets is the next call
    client.send(b"slow", b"third")
    addr, body = worker.request()
    assert body == [b"third"]
    worker.final(addr, b"three")
    assert client.recv(5.0) == (True, [b"three"])
    client.close()
    worker.close()


def wait_until_stat(ctx: Ctx, node: Any, name: str, value: int, timeout: float = 5.0) -> None:
    start = time.monotonic()
    while stats(ctx, node).get(name, 0) < value:
        assert time.monotonic() - start < timeout, f"{name} never reached {value}"
        time.sleep(0.02)
