"""The majortomo package's own Client and Worker (from PyPI) against every other kind of MDP
peer, through maitred: partial replies and MMI included. And random frame lists thrown at a
live broker never hurt it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from majortomo import Client as MtClient
from majortomo import Worker as MtWorker

from tests.e2e.helpers import (
    C01,
    C02,
    W01,
    W02,
    BrokerThread,
    RawClient,
    RawWorker,
    nothing,
    socket,
    wait_until,
)

Ctx = zmq.Context[Any]


def _workers(broker: BrokerThread, name: str) -> int:
    def count() -> int:
        svc = broker.broker.router.services.get(name)
        return len(svc.workers) if svc else 0

    return broker.call(count)


class MajortomoWorkerThread:
    """majortomo.Worker serving ``service``: one PARTIAL then a FINAL per request."""

    def __init__(self, ctx: Ctx, endpoint: str, service: bytes, count: int) -> None:
        self.worker = MtWorker(endpoint, service, zmq_context=ctx)
        self.worker.connect()
        self.thread = threading.Thread(target=self._serve, args=(count,), daemon=True)
        self.thread.start()

    def _serve(self, count: int) -> None:
        for _ in range(count):
            addr, req = self.worker.wait_for_request()
            self.worker.send_reply_partial(addr, [b"working"])
            self.worker.send_reply_final(addr, [b"mt", *req])

    def close(self) -> None:
        self.thread.join(5)
        self.worker.close()


@pytest.fixture
def mt_worker(broker: BrokerThread, ctx: Ctx) -> Iterator[MajortomoWorkerThread]:
    w = MajortomoWorkerThread(ctx, broker.endpoint, b"mtsvc", 1)
    wait_until(lambda: _workers(broker, "mtsvc") == 1)
    yield w
    w.close()


@pytest.mark.parametrize("ckind", ["0.1-req", "0.1-dealer", "rfc", "majortomo"])
def test_every_client_reaches_a_majortomo_worker(
    broker: BrokerThread, ctx: Ctx, mt_worker: MajortomoWorkerThread, ckind: str
) -> None:
    client = RawClient(ctx, broker.endpoint, ckind)
    client.send(b"mtsvc", b"q")
    replies = []
    while True:
        final, body = client.recv()
        replies.append((final, body))
        if final:
            break
    if ckind.startswith("0.1"):
        assert replies == [(True, [b"mt", b"q"])]
    else:
        assert replies == [(False, [b"working"]), (True, [b"mt", b"q"])]


def test_maitred_client_reaches_a_majortomo_worker(
    broker: BrokerThread, ctx: Ctx, mt_worker: MajortomoWorkerThread
) -> None:
    from maitred.transports.mdp.client import Client

    with Client(broker.endpoint, context=ctx, timeout=5) as client:
        assert list(client.stream("mtsvc", b"q")) == [
            (False, [b"working"]),
            (True, [b"mt", b"q"]),
        ]


@pytest.mark.parametrize("wkind", ["0.1", "rfc", "majortomo", "maitred"])
def test_majortomo_client_reaches_every_worker(broker: BrokerThread, ctx: Ctx, wkind: str) -> None:
    stop = threading.Event()
    thread = None
    if wkind == "maitred":
        from maitred.transports.mdp.client import FinalReply, Worker

        def handler(body: list[bytes]) -> Iterator[Any]:
            yield [b"working"]
            yield FinalReply([b"done", *body])

        worker = Worker(broker.endpoint, "any", handler, context=ctx)
        thread = threading.Thread(target=worker.run, kwargs={"stop_event": stop}, daemon=True)
        thread.start()
    else:
        raw = RawWorker(ctx, broker.endpoint, wkind, b"any")
        raw.ready()
    wait_until(lambda: _workers(broker, "any") == 1)
    client = MtClient(broker.endpoint, zmq_context=ctx)
    client.connect()
    try:
        client.send(b"any", b"x", b"y")
        if wkind != "maitred":
            addr, body = raw.request()
            assert body == [b"x", b"y"]
            if wkind != "0.1":
                raw.partial(addr, b"working")
            raw.final(addr, b"done", *body)
        got = client.recv_all_as_list(timeout=5)
        expected = [b"done", b"x", b"y"] if wkind == "0.1" else [b"working", b"done", b"x", b"y"]
        assert got == expected
        # MMI through the majortomo client, in its own dialect
        client.send(b"mmi.service", b"any")
        assert client.recv_all_as_list(timeout=5) == [b"200"]
        client.send(b"mmi.service", b"none")
        assert client.recv_all_as_list(timeout=5) == [b"404"]
        client.send(b"mmi.bogus", b"x")
        assert client.recv_all_as_list(timeout=5) == [b"501"]
    finally:
        client.close()
        stop.set()
        if thread is not None:
            thread.join(5)
            worker.close()


frames = st.lists(
    st.one_of(
        st.sampled_from([b"", C01, C02, W01, W02, b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"]),
        st.binary(max_size=12),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(frames, min_size=1, max_size=5))
def test_random_frames_never_hurt_the_broker(
    broker: BrokerThread, ctx: Ctx, batch: list[list[bytes]]
) -> None:
    noise = socket(ctx, zmq.DEALER, broker.endpoint)
    for message in batch:
        noise.send_multipart(message)
    # the broker still answers a well-behaved client (after handling everything sent before)
    probe = RawClient(ctx, broker.endpoint, "rfc")
    assert probe.call(b"mmi.service", b"nothing.here") == [b"404"]
    # what the noise did is either refused or real MDP: no worker survives a garbage sender
    # that breaks the rules, and the broker never answers garbage with anything but MDP
    while not nothing(noise, 0.0):
        reply = noise.recv_multipart()
        assert any(h in reply[:2] for h in (C01, C02, W01, W02)), reply
    noise.close(0)
    probe.close()
    broker.call(broker.broker.router.snapshot)
