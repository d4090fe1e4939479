"""``maitred serve`` brokers on one JetStream stream, over a real ``nats-server -js``, seen as
with SQLite: requests that wait in the stream are listed by ``mmi.queues`` (a service with no
worker anywhere is listed with its depth), and a pulled request whose worker died goes back to
the stream for another broker's worker when its broker has no other free worker for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from maitred.plugins.nats_testing import (  # noqa: F401  (fixtures)
    NatsStarter,
    nats_server,
)
from maitred.plugins.testing import ServeProcess
from tests.e2e.helpers import RawWorker, zmq_context
from tests.system.test_store_jetstream import config, get_json, http_conn, post_async
from tests.system.test_store_jetstream_shared import consumer, counter, wait_for

pytest.importorskip("nats")
pytestmark = pytest.mark.slow


def queues(served: ServeProcess) -> Any:
    conn = http_conn(served)
    try:
        return get_json(conn, "/v1/queues")["services"]
    finally:
        conn.close()


def test_requests_waiting_in_the_stream_are_listed_with_no_worker_anywhere(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    with (
        ServeProcess("-c", str(config(tmp_path, server.url, name="a"))) as a,
        ServeProcess("-c", str(config(tmp_path, server.url, name="b"))) as b,
    ):
        conn = http_conn(a)
        for i in range(5):
            assert post_async(conn, b"job-%d" % i)[0] == 202
        conn.close()
        waiting = {"jobs": {"queued": 5, "inflight": 0}}
        wait_for(lambda: queues(a) == waiting, f"a lists 5 waiting: {queues(a)}")
        # b accepted none of them, yet they wait for its workers too
        wait_for(lambda: queues(b) == waiting, f"b lists 5 waiting: {queues(b)}")


def test_a_request_whose_worker_died_goes_to_another_brokers_worker(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    # the ack wait (busy_timeout) is far beyond the test: JetStream's own redelivery of a
    # message whose broker died does not bring it to b in time
    with (
        zmq_context() as ctx,
        ServeProcess("-c", str(config(tmp_path, server.url, name="a", busy=60.0))) as a,
        ServeProcess("-c", str(config(tmp_path, server.url, name="b", busy=60.0))) as b,
    ):
        on_a = RawWorker(ctx, a.endpoint("mdp"), "rfc", b"jobs")
        on_b = RawWorker(ctx, b.endpoint("mdp"), "rfc", b"jobs")
        try:
            on_a.ready()
            conn = http_conn(a)
            assert post_async(conn, b"job")[0] == 202
            conn.close()
            assert on_a.request(timeout=10)[1][-1] == b"job"
            on_b.ready()  # b's worker is free; nothing waits in the stream for it yet
            wait_for(lambda: consumer(server.url) == (1, 0), "a holds it")
            on_a.close()  # a's worker dies holding it, without a reply
            addr, body = on_b.request(timeout=10)
            assert body[-1] == b"job"
            on_b.final(addr, b"ok")
            wait_for(lambda: consumer(server.url) == (0, 0), "answered")
            assert counter(a, "given_back") == 1
            assert counter(b, "pulled") == 1
        finally:
            on_a.close()
            on_b.close()
