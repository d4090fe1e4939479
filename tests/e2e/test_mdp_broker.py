"""maitred's MDP transport over real sockets: every client dialect × every worker dialect,
partials, MMI, worker death, deadlines, heartbeats, bad input, endpoints, drain."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from tests.e2e.helpers import (
    C01,
    C02,
    CLIENT_KINDS,
    W01,
    W02,
    WORKER_KINDS,
    BrokerThread,
    RawClient,
    RawWorker,
    nothing,
    recv,
    socket,
    wait_until,
)

Ctx = zmq.Context[Any]


def workers_of(broker: BrokerThread, service: str) -> int:
    def count() -> int:
        svc = broker.broker.router.services.get(service)
        return len(svc.workers) if svc else 0

    return broker.call(count)


def ready(broker: BrokerThread, worker: RawWorker, n: int = 1) -> None:
    worker.ready()
    name = worker.service.decode()
    wait_until(lambda: workers_of(broker, name) >= n, what=f"{n} worker(s) of {name}")


@pytest.mark.parametrize("wkind", WORKER_KINDS)
@pytest.mark.parametrize("ckind", CLIENT_KINDS)
def test_every_client_reaches_every_worker(
    broker: BrokerThread, ctx: Ctx, ckind: str, wkind: str
) -> None:
    worker = RawWorker(ctx, broker.endpoint, wkind, b"echo")
    ready(broker, worker)
    client = RawClient(ctx, broker.endpoint, ckind)
    body = [b"hello", b"\x00\xff binary \r\n", b""]
    client.send(b"echo", *body)
    addr, got = worker.request()
    assert got == body
    partials = wkind != "0.1"
    if partials:
        worker.partial(addr, b"part-1")
        worker.partial(addr, b"part-2", b"x")
    worker.final(addr, *reversed(body))
    replies = []
    while True:
        final, frames = client.recv()
        replies.append((final, frames))
        if final:
            break
    if partials and ckind not in ("0.1-req", "0.1-dealer"):
        assert replies == [
            (False, [b"part-1"]),
            (False, [b"part-2", b"x"]),
            (True, list(reversed(body))),
        ]
    else:
        # MDP/0.1 has one reply per request: its clients get the final only
        assert replies == [(True, list(reversed(body)))]
    # nothing more arrives for that request
    assert nothing(client.sock, 0.1)


def test_exact_frames_per_client_dialect(broker: BrokerThread, ctx: Ctx) -> None:
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"svc")
    ready(broker, worker)
    expected = {
        "0.1-dealer": ([b"", C01, b"svc", b"R"], None),
        "rfc": ([C02, b"\x03", b"svc", b"R"], [C02, b"\x02", b"svc", b"P"]),
        "majortomo": ([b"", C02, b"\x04", b"R"], [b"", C02, b"\x03", b"P"]),
    }
    for kind, (final_frames, partial_frames) in expected.items():
        client = RawClient(ctx, broker.endpoint, kind)
        client.send(b"svc", b"q")
        addr, _ = worker.request()
        worker.partial(addr, b"P")
        worker.final(addr, b"R")
        if partial_frames is not None:
            assert client.recv_raw() == partial_frames
        assert client.recv_raw() == final_frames
        client.close()


def test_exact_frames_to_each_worker_dialect(broker: BrokerThread, ctx: Ctx) -> None:
    client = RawClient(ctx, broker.endpoint, "majortomo")
    for kind, head in (("0.1", [b"", W01]), ("rfc", [W02]), ("majortomo", [b"", W02])):
        worker = RawWorker(ctx, broker.endpoint, kind, kind.encode())
        ready(broker, worker)
        client.send(kind.encode(), b"body")
        frames = recv(worker.sock)
        assert frames[: len(head) + 1] == [*head, b"\x02"]
        addr = frames[len(head) + 1]
        assert frames[len(head) + 2 :] == [b"", b"body"]
        worker.final(addr, b"ok")
        assert client.recv() == (True, [b"ok"])
        worker.close()


def test_majortomo_package_client_and_worker(broker: BrokerThread, ctx: Ctx) -> None:
    import threading

    from majortomo import Client, Worker

    done = threading.Event()

    def serve() -> None:
        w = Worker(broker.endpoint, b"mt", zmq_context=ctx)
        w.connect()
        try:
            for _ in range(2):
                addr, req = w.wait_for_request()
                w.send_reply_partial(addr, [b"half"])
                w.send_reply_final(addr, [b"mt:" + req[0]])
        finally:
            w.close()
            done.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    wait_until(lambda: workers_of(broker, "mt") == 1)
    # a majortomo client and an RFC 18 client both reach the majortomo worker
    c = Client(broker.endpoint, zmq_context=ctx)
    c.connect()
    c.send(b"mt", b"one")
    assert c.recv_all_as_list(timeout=3) == [b"half", b"mt:one"]
    rfc = RawClient(ctx, broker.endpoint, "rfc")
    assert rfc.call(b"mt", b"two") == [b"mt:two"]
    assert done.wait(3)
    # and a majortomo client reaches an MDP/0.1 worker
    w01 = RawWorker(ctx, broker.endpoint, "0.1", b"old")
    ready(broker, w01)
    c.send(b"old", b"three")
    addr, body = w01.request()
    w01.final(addr, b"from 0.1:", *body)
    assert c.recv_all_as_list(timeout=3) == [b"from 0.1:", b"three"]
    c.close()


@pytest.mark.parametrize("ckind", CLIENT_KINDS)
def test_mmi_in_every_dialect(broker: BrokerThread, ctx: Ctx, ckind: str) -> None:
    client = RawClient(ctx, broker.endpoint, ckind)
    assert client.call(b"mmi.service", b"echo") == [b"404"]
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"echo")
    ready(broker, worker)
    assert client.call(b"mmi.service", b"echo") == [b"200"]
    # the last frame is replaced; earlier frames are echoed
    assert client.call(b"mmi.service", b"keep", b"echo") == [b"keep", b"200"]
    assert client.call(b"mmi.nonsense", b"x") == [b"501"]
    rows = json.loads(client.call(b"mmi.services")[0])
    assert {"name": "echo", "workers": 1}.items() <= rows[0].items()
    workers = json.loads(client.call(b"mmi.workers", b"echo")[0])
    assert len(workers) == 1 and workers[0]["service"] == "echo"
    assert workers[0]["transport"] == "mdp"
    info = json.loads(client.call(b"mmi.info")[0])
    assert info["transports"]["mdp"] == [broker.endpoint]
    assert "version" in info and "uptime" in info
    assert json.loads(client.call(b"mmi.queues")[0])["echo"] == {"queued": 0, "inflight": 0}
    assert json.loads(client.call(b"mmi.topics")[0]) == {}


def test_mmi_service_counts_live_workers_not_requests(broker: BrokerThread, ctx: Ctx) -> None:
    client = RawClient(ctx, broker.endpoint, "rfc")
    client.send(b"ghost", b"x")  # queued: the service exists but has no worker
    assert client.call(b"mmi.service", b"ghost") == [b"404"]
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"ghost")
    ready(broker, worker)
    addr, _ = worker.request()
    worker.final(addr, b"done")
    assert client.recv() == (True, [b"done"])
    assert client.call(b"mmi.service", b"ghost") == [b"200"]
    worker.disconnect()
    wait_until(lambda: workers_of(broker, "ghost") == 0)
    assert client.call(b"mmi.service", b"ghost") == [b"404"]


def test_lru_dispatch_over_two_workers(broker: BrokerThread, ctx: Ctx) -> None:
    w1 = RawWorker(ctx, broker.endpoint, "rfc", b"lb")
    w2 = RawWorker(ctx, broker.endpoint, "majortomo", b"lb")
    ready(broker, w1)
    ready(broker, w2, 2)
    client = RawClient(ctx, broker.endpoint, "rfc")
    client.send(b"lb", b"1")
    client.send(b"lb", b"2")
    a1, b1 = w1.request()
    a2, b2 = w2.request()
    assert (b1, b2) == ([b"1"], [b"2"])
    client.send(b"lb", b"3")  # both busy: waits for the first free worker
    assert nothing(w1.sock, 0.1) and nothing(w2.sock, 0.05)
    w2.final(a2, b"r2")
    a3, b3 = w2.request()
    assert b3 == [b"3"]
    w1.final(a1, b"r1")
    w2.final(a3, b"r3")
    got = {tuple(client.recv()[1]) for _ in range(3)}
    assert got == {(b"r1",), (b"r2",), (b"r3",)}


def test_unknown_service_expires_at_deadline(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker("[services.default]\nrequest_timeout = 0.3\n")
    client = RawClient(ctx, broker.endpoint, "rfc")
    client.send(b"nobody", b"x")
    assert nothing(client.sock, 0.15)  # still waiting: a worker could come
    final, body = client.recv(3)
    assert final and body[0] == b"504"
    assert broker.stats()["requests.expired_queued"] == 1


def test_request_waits_for_a_worker_that_comes_late(broker: BrokerThread, ctx: Ctx) -> None:
    client = RawClient(ctx, broker.endpoint, "0.1-req")
    client.send(b"late", b"x")
    worker = RawWorker(ctx, broker.endpoint, "0.1", b"late")
    worker.ready()
    addr, _ = worker.request()
    worker.final(addr, b"finally")
    assert client.recv() == (True, [b"finally"])


def test_fail_fast_policy(make_broker: Callable[..., BrokerThread], ctx: Ctx) -> None:
    broker = make_broker('[services.fast]\non_no_worker = "fail"\n')
    client = RawClient(ctx, broker.endpoint, "majortomo")
    client.send(b"fast", b"x")
    final, body = client.recv()
    assert final and body[0] == b"503"


def test_error_replies_off_means_silence(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker('[services.fast]\non_no_worker = "fail"\n', mdp="error_replies = false\n")
    client = RawClient(ctx, broker.endpoint, "rfc")
    client.send(b"fast", b"x")
    assert nothing(client.sock, 0.3)
    assert broker.stats()["mdp.errors.503"] == 1


def test_worker_death_without_redeliver_fails_the_request(broker: BrokerThread, ctx: Ctx) -> None:
    worker = RawWorker(ctx, broker.endpoint, "majortomo", b"fragile")
    ready(broker, worker)
    client = RawClient(ctx, broker.endpoint, "rfc")
    client.send(b"fragile", b"x")
    worker.request()
    worker.disconnect()
    final, body = client.recv()
    assert final and body[0] == b"502"


def test_worker_death_with_redeliver_reaches_another_worker(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker("[services.idem]\nredeliver = true\n")
    w1 = RawWorker(ctx, broker.endpoint, "rfc", b"idem")
    ready(broker, w1)
    client = RawClient(ctx, broker.endpoint, "0.1-dealer")
    client.send(b"idem", b"job")
    w1.request()
    w2 = RawWorker(ctx, broker.endpoint, "0.1", b"idem")
    ready(broker, w2, 2)
    w1.disconnect()  # dies mid-request
    addr, body = w2.request()
    assert body == [b"job"]
    w2.final(addr, b"done by w2")
    assert client.recv() == (True, [b"done by w2"])


def test_silent_worker_expires_and_is_told(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker("", mdp="heartbeat_interval = 0.05\nliveness = 3\n")
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"hb")
    ready(broker, worker)
    # the broker heartbeats an idle worker every interval
    assert worker.next() == ("heartbeat", [])
    # a worker that answers heartbeats stays
    for _ in range(6):
        assert worker.next()[0] == "heartbeat"
        worker.heartbeat()
    assert workers_of(broker, "hb") == 1
    # one that goes silent is expired and told DISCONNECT
    worker.expect_disconnect(3)
    wait_until(lambda: workers_of(broker, "hb") == 0)
    assert broker.stats()["workers.expired"] == 1


def test_protocol_violations_get_disconnect_and_no_state(broker: BrokerThread, ctx: Ctx) -> None:
    ep = broker.endpoint
    # HEARTBEAT / reply without READY
    for kind in WORKER_KINDS:
        w = RawWorker(ctx, ep, kind, b"x")
        w.heartbeat()
        w.expect_disconnect()
        w.final(b"1", b"reply")
        w.expect_disconnect()
        w.close()
    # READY for mmi.*
    w = RawWorker(ctx, ep, "rfc", b"mmi.service")
    w.ready()
    w.expect_disconnect()
    # a second READY: DISCONNECT and forgotten
    w = RawWorker(ctx, ep, "majortomo", b"twice")
    ready(broker, w)
    w.ready()
    w.expect_disconnect()
    wait_until(lambda: workers_of(broker, "twice") == 0)
    # no state was created for any of them
    assert broker.call(lambda: sorted(broker.broker.router.services)) == []
    # the broker still works for others
    good = RawWorker(ctx, ep, "rfc", b"ok")
    ready(broker, good)
    client = RawClient(ctx, ep, "rfc")
    client.send(b"ok", b"x")
    addr, _ = good.request()
    good.final(addr, b"fine")
    assert client.recv() == (True, [b"fine"])


@pytest.mark.parametrize(
    "frames",
    [
        [b""],
        [b"garbage"],
        [b"", b"MDPC03", b"svc"],
        [b"MDPC01", b"svc", b"x"],  # 0.1 without the empty frame
        [C02, b"\x09", b"svc"],
        [C02, b"\x01"],  # no service
        [b"", W02, b"\x07"],
        [W02],
        [b"", W01, b"\x01", b"svc", b"extra"],  # READY with extra frames
        [W02, b"\x04", b"addr", b"not-empty", b"x"],  # reply without the empty frame
        [b"", C01, b"\xff\xfe"],  # service not UTF-8
    ],
)
def test_garbage_is_dropped_and_counted(
    broker: BrokerThread, ctx: Ctx, frames: list[bytes]
) -> None:
    bad = socket(ctx, zmq.DEALER, broker.endpoint)
    bad.send_multipart(frames)
    wait_until(lambda: broker.stats().get("mdp.rejected", 0) >= 1, what="the rejection count")
    assert nothing(bad, 0.05)
    assert broker.call(lambda: len(broker.broker.router.services)) == 0
    client = RawClient(ctx, broker.endpoint, "rfc")
    assert client.call(b"mmi.service", b"x") == [b"404"]


def test_oversized_request_is_refused(make_broker: Callable[..., BrokerThread], ctx: Ctx) -> None:
    broker = make_broker("", mdp="max_message_size = 1000\nmax_frames = 4\n")
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"big")
    ready(broker, worker)
    client = RawClient(ctx, broker.endpoint, "rfc")
    client.send(b"big", b"x" * 1001)
    final, body = client.recv()
    assert final and body[0] == b"413"
    client.send(b"big", *[b"f"] * 5)
    assert client.recv()[1][0] == b"413"
    assert nothing(worker.sock, 0.1)
    # an oversized reply becomes a 413 for the caller
    client.send(b"big", b"ok")
    addr, _ = worker.request()
    worker.final(addr, b"y" * 1001)
    assert client.recv()[1][0] == b"413"


@pytest.mark.parametrize("scheme", ["ipc", "inproc"])
def test_ipc_and_inproc_endpoints(tmp_path: Any, scheme: str) -> None:
    import asyncio

    from maitred.core.app import embedded
    from maitred.transports.mdp.adapter import MdpTransport

    endpoint = f"ipc://{tmp_path}/mdp.sock" if scheme == "ipc" else "inproc://maitred-test"

    async def main() -> list[bytes]:
        async with embedded(mdp=[endpoint]) as broker:
            transport = broker.transport("mdp")
            assert isinstance(transport, MdpTransport)
            assert transport.endpoints() == [endpoint]
            ctx = transport.context  # inproc:// needs the broker's own context
            loop = asyncio.get_running_loop()

            def peers() -> list[bytes]:
                worker = RawWorker(ctx, endpoint, "rfc", b"e")
                worker.ready()
                client = RawClient(ctx, endpoint, "rfc")
                client.send(b"e", b"ping")
                addr, body = worker.request()
                worker.final(addr, *body, b"pong")
                assert client.recv() == (True, [b"ping", b"pong"])
                result = client.call(b"mmi.service", b"e")
                worker.close()
                client.close()
                return result

            return await loop.run_in_executor(None, peers)

    assert asyncio.run(main()) == [b"200"]


def test_drain_finishes_inflight_and_disconnects_workers(broker: BrokerThread, ctx: Ctx) -> None:
    import threading

    worker = RawWorker(ctx, broker.endpoint, "majortomo", b"slow")
    ready(broker, worker)
    client = RawClient(ctx, broker.endpoint, "rfc")
    client.send(b"slow", b"x")
    addr, _ = worker.request()
    stopper = threading.Thread(target=broker.stop, kwargs={"drain_timeout": 5.0}, daemon=True)
    stopper.start()
    wait_until(lambda: broker.broker.state == "draining", what="drain to begin")
    # new requests are refused while draining
    late = RawClient(ctx, broker.endpoint, "rfc")
    late.send(b"slow", b"late")
    assert late.recv()[1][0] == b"530"
    # the in-flight one still completes
    worker.final(addr, b"made it")
    assert client.recv() == (True, [b"made it"])
    worker.expect_disconnect()
    stopper.join(10)
    assert broker.broker.state == "stopped"


def test_worker_credit_pipelines_requests(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker("", mdp="worker_credit = 2\n")
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"pipe")
    ready(broker, worker)
    client = RawClient(ctx, broker.endpoint, "rfc")
    for i in range(3):
        client.send(b"pipe", b"%d" % i)
    a0, b0 = worker.request()
    a1, b1 = worker.request()  # the second arrives while the first is still being served
    assert (b0, b1) == ([b"0"], [b"1"])
    assert nothing(worker.sock, 0.1)  # but never more than the credit
    worker.final(a0, b"r0")
    a2, b2 = worker.request()
    assert b2 == [b"2"]
    worker.final(a1, b"r1")
    worker.final(a2, b"r2")
    assert [client.recv()[1] for _ in range(3)] == [[b"r0"], [b"r1"], [b"r2"]]


@pytest.mark.parametrize("ckind", CLIENT_KINDS)
@pytest.mark.parametrize("wkind", WORKER_KINDS)
def test_empty_bodies_both_ways(broker: BrokerThread, ctx: Ctx, ckind: str, wkind: str) -> None:
    worker = RawWorker(ctx, broker.endpoint, wkind, b"void")
    ready(broker, worker)
    client = RawClient(ctx, broker.endpoint, ckind)
    client.send(b"void")
    addr, body = worker.request()
    assert body == []
    worker.final(addr)
    frames = client.recv_raw()
    expected = {
        "0.1-req": [C01, b"void"],
        "0.1-dealer": [b"", C01, b"void"],
        "rfc": [C02, b"\x03", b"void"],
        "majortomo": [b"", C02, b"\x04"],
    }[ckind]
    assert frames == expected


def _zmq_io_threads() -> set[int]:
    import os

    tids = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/comm") as f:
                if f.read().startswith("ZMQbg/IO"):
                    tids.add(int(task))
        except OSError:
            pass
    return tids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
@pytest.mark.parametrize("sched", ["batch", "default"])
def test_io_thread_sched(sched: str) -> None:
    import os

    from maitred.transports.mdp.sockets import new_context

    before = _zmq_io_threads()
    context = new_context(sched)
    sock = context.socket(zmq.ROUTER)  # libzmq starts its threads with the first socket
    try:
        # a libzmq thread names itself once it runs: wait for the name to show
        wait_until(lambda: bool(_zmq_io_threads() - before), what="libzmq's I/O thread")
        new = _zmq_io_threads() - before
        want = os.SCHED_BATCH if sched == "batch" else os.SCHED_OTHER
        assert {os.sched_getscheduler(tid) for tid in new} == {want}
    finally:
        sock.close(0)
        context.term()
