"""Two ``maitred serve`` brokers on one JetStream stream, over a
real ``nats-server -js``: each pulls only what its own free workers can take (no broker hoards;
one without a worker pulls nothing); a killed broker's unanswered messages reach the other
broker after the ack wait (``busy_timeout``); a message whose last allowed delivery died with
its broker goes to the dead letters (the consumer's ``max_deliver``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from maitred.core.jetstream_pull import consumer_name
from maitred.plugins.nats_testing import (  # noqa: F401  (fixtures)
    NatsStarter,
    nats_server,
)
from maitred.plugins.testing import ServeProcess
from tests.e2e.helpers import RawWorker, zmq_context
from tests.system.test_store_jetstream import config, get_json, http_conn, post_async

pytest.importorskip("nats")
pytestmark = pytest.mark.slow


def counter(served: ServeProcess, name: str) -> float:
    conn = http_conn(served)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = re.search(rf'maitred_store_total{{counter="{name}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


async def _consumer(url: str) -> tuple[int, int | None]:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info("MAITRED_DURABLE", consumer_name("jobs"))
    except NotFoundError:
        return 0, None  # not made yet: nothing was pulled
    finally:
        await nc.close()
    return info.num_ack_pending, info.num_pending


def consumer(url: str) -> tuple[int, int | None]:
    """(messages pulled and not answered, messages not pulled) of the service's consumer."""
    return asyncio.run(_consumer(url))


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def stays(url: str, held: int, waiting: int, seconds: float = 0.4) -> None:
    """The consumer shows ``held`` messages pulled and ``waiting`` not pulled, throughout."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pulled, left = consumer(url)
        assert pulled == held and left in (None, waiting), (pulled, left)


def test_two_brokers_pull_by_free_credit_and_a_killed_ones_messages_come_back(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    total = 20
    with (
        zmq_context() as ctx,
        ServeProcess("-c", str(config(tmp_path, server.url, name="a", busy=1.0))) as a,
        ServeProcess("-c", str(config(tmp_path, server.url, name="b", busy=1.0))) as b,
    ):
        conn = http_conn(a)
        for i in range(total):
            assert post_async(conn, b"job-%d" % i)[0] == 202
        conn.close()
        stays(server.url, 0, total)  # no broker has a worker: none pulls anything
        # b has three workers, a one; each holds what it gets, unanswered
        on_b = [RawWorker(ctx, b.endpoint("mdp"), "rfc", b"jobs") for _ in range(3)]
        on_a = RawWorker(ctx, a.endpoint("mdp"), "rfc", b"jobs")
        try:
            for w in [*on_b, on_a]:
                w.ready()
            held_b = {w.request(timeout=10)[1][-1] for w in on_b}
            addr, body = on_a.request(timeout=10)
            assert len(held_b) == 3
            wait_for(lambda: consumer(server.url)[0] == 4, "4 pulled")
            stays(server.url, 4, total - 4)  # and no more: nobody hoards
            assert (counter(a, "pulled"), counter(b, "pulled")) == (1, 3)
            b.kill()  # its three come back to a after the ack wait (busy_timeout = 1)
            got = [body[-1]]
            on_a.final(addr, b"ok")
            while len(set(got)) < total:
                addr, body = on_a.request(timeout=10)
                on_a.final(addr, b"ok")
                got.append(body[-1])
            assert set(got) == {b"job-%d" % i for i in range(total)}
            assert held_b <= set(got)
            wait_for(lambda: consumer(server.url) == (0, 0), "all answered")
        finally:
            for w in [*on_b, on_a]:
                w.close()


def test_a_message_whose_last_delivery_died_with_its_broker_goes_to_the_dead_letters(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    once = "max_deliveries = 1"
    with (
        zmq_context() as ctx,
        ServeProcess("-c", str(config(tmp_path, server.url, extra=once, name="a", busy=1.0))) as a,
    ):
        conn = http_conn(a)
        assert post_async(conn, b"poison")[0] == 202
        with ServeProcess(
            "-c", str(config(tmp_path, server.url, extra=once, name="b", busy=1.0))
        ) as b:
            on_b = RawWorker(ctx, b.endpoint("mdp"), "rfc", b"jobs")
            try:
                on_b.ready()
                assert on_b.request(timeout=10)[1][-1] == b"poison"
                b.kill()
            finally:
                on_b.close()
        on_a = RawWorker(ctx, a.endpoint("mdp"), "rfc", b"jobs")  # waits, never gets it
        try:
            on_a.ready()
            dead: list[Any] = []
            deadline = time.monotonic() + 10
            while not dead and time.monotonic() < deadline:
                on_a.heartbeat()
                dead = get_json(conn, "/v1/dead-letters")
                time.sleep(0.05)
            assert [(d["queue"], d["id"], d["payload"]) for d in dead] == [("jobs", 0, "poison")]
            assert consumer(server.url)[1] == 0
            assert counter(a, "pulled") == 0
        finally:
            on_a.close()
            conn.close()
