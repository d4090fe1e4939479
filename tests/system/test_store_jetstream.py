"""The durable store on NATS JetStream (``[store] backend = "jetstream"``), each test against
its own ``nats-server -js`` on an ephemeral port and a ``maitred serve`` subprocess: durable
requests accepted with no worker reach a worker that comes later, across ``kill -9`` of the
broker; a stream of other settings is refused with the difference named; JetStream down or
the stream deleted gives 503 (never "accepted"); a message past the stream's size limit 413;
dead letters after ``max_deliveries`` survive a restart."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest

from maitred.plugins.nats_testing import (  # noqa: F401  (fixtures)
    NatsServer,
    NatsStarter,
    nats_server,
)
from maitred.plugins.testing import ServeProcess
from tests.e2e.helpers import RawWorker, zmq_context
from tests.e2e.http_helpers import RawHttp, short_socket_path

pytest.importorskip("nats")
pytestmark = pytest.mark.slow


def config(
    tmp_path: Path,
    url: str,
    stream: str = "MAITRED_DURABLE",
    extra: str = "",
    name: str = "",
    busy: float = 2.0,
) -> Path:
    path = tmp_path / f"maitred{name}.toml"
    path.write_text(
        f"""
[broker]
drain_timeout = 0.5

[liveness]
busy_timeout = {busy}

[store]
backend = "jetstream"
jetstream_nats = ["{url}"]
jetstream_stream = "{stream}"
jetstream_timeout = 2.0

[services.jobs]
on_no_worker = "store"
request_timeout = 60.0
{extra}

[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]

[transports.http]
listen = ["127.0.0.1:0"]
store = "memory"
switch = false
"""
    )
    return path


def http_conn(served: ServeProcess) -> http.client.HTTPConnection:
    host, port = served.endpoint("http").removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=10)


def post_async(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, Any]:
    conn.request(
        "POST",
        "/v1/services/jobs",
        body=body,
        headers={"Prefer": "respond-async", "Content-Type": "application/octet-stream"},
    )
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, json.loads(data) if data else None


def get_json(conn: http.client.HTTPConnection, path: str) -> Any:
    conn.request("GET", path)
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, (resp.status, data)
    return json.loads(data)


async def _js(url: str, action: str, **config: Any) -> Any:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        if action == "add":
            return await js.add_stream(StreamConfig.from_response(config))
        if action == "delete":
            return await js.delete_stream(config["name"])
        info = await js.stream_info(config["name"])
        return info.state.messages
    finally:
        await nc.close()


def js(url: str, action: str, **config: Any) -> Any:
    return asyncio.run(_js(url, action, **config))


def test_requests_with_no_worker_reach_a_later_worker_across_kill_9(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    cfg = config(tmp_path, server.url)
    total, answered = 60, 10
    with zmq_context() as ctx, ServeProcess("-c", str(cfg)) as first:
        conn = http_conn(first)
        ids = []
        for i in range(total):
            status, body = post_async(conn, b"job-%d" % i)
            assert status == 202, (status, body)
            ids.append(body["id"])
        conn.close()
        assert ids == list(range(total))
        assert js(server.url, "count", name="MAITRED_DURABLE") >= total  # on JetStream now

        worker = RawWorker(ctx, first.endpoint("mdp"), "rfc", b"jobs")
        worker.ready()
        done: set[bytes] = set()
        for _ in range(answered):
            addr, body = worker.request(timeout=10)
            worker.final(addr, b"ok")
            done.add(body[-1])
        _, body = worker.request(timeout=10)  # held, never answered: in flight at the kill
        held = body[-1]
        first.kill()
        worker.close()

        with ServeProcess("-c", str(cfg)) as second:
            worker = RawWorker(ctx, second.endpoint("mdp"), "rfc", b"jobs")
            try:
                worker.ready()
                expected = {b"job-%d" % i for i in range(total)} - done
                got: list[bytes] = []
                while not expected <= set(got):
                    addr, body = worker.request(timeout=10)
                    worker.final(addr, b"ok")
                    got.append(body[-1])
                assert held in got
                assert set(got) - expected <= done  # only answered-just-before-the-kill repeat
                conn = http_conn(second)
                status, body = post_async(conn, b"late")
                assert (status, body["id"]) == (202, total)  # ids go on
                conn.close()
            finally:
                worker.close()
            assert second.stop() == 0


def test_a_stream_with_other_settings_is_refused_with_the_difference_named(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    js(server.url, "add", name="OTHER", subjects=["OTHER.>"], retention="limits")
    cfg = config(tmp_path, server.url, stream="OTHER")
    with pytest.raises(RuntimeError, match="exited") as failed:
        ServeProcess("-c", str(cfg))
    err = str(failed.value)
    assert "retention" in err and "workqueue" in err and "max_msgs_per_subject" in err, err


@pytest.mark.allow_error_logs("store")
def test_jetstream_down_refuses_with_503_and_keeps_what_was_accepted(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    cfg = config(tmp_path, server.url)
    with ServeProcess("-c", str(cfg)) as served:
        conn = http_conn(served)
        assert post_async(conn, b"before")[0] == 202
        js(server.url, "delete", name="MAITRED_DURABLE")  # the stream deleted under the broker
        statuses = [post_async(conn, b"after-%d" % i)[0] for i in range(3)]
        assert statuses == [503, 503, 503], statuses
        server.kill()  # and JetStream gone altogether
        assert post_async(conn, b"down")[0] == 503
        conn.close()
        assert served.proc.poll() is None  # no crash
    assert "MAITRED_DURABLE" in served.log()


def test_a_message_past_the_streams_size_limit_gets_413_before_acceptance(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    js(
        server.url,
        "add",
        name="SMALL",
        subjects=["SMALL.>"],
        retention="workqueue",
        max_msgs_per_subject=1,
        max_msg_size=4096,
    )
    cfg = config(tmp_path, server.url, stream="SMALL")
    with ServeProcess("-c", str(cfg)) as served:
        conn = http_conn(served)
        assert post_async(conn, b"x" * 1000)[0] == 202
        status, body = post_async(conn, b"x" * 8000)
        assert status == 413, (status, body)
        conn.close()
    assert js(server.url, "count", name="SMALL") == 2  # the small one and its queue record


def test_dead_letters_after_max_deliveries_survive_a_restart(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    cfg = config(tmp_path, server.url, extra="max_deliveries = 2")
    with zmq_context() as ctx:
        with ServeProcess("-c", str(cfg)) as served:
            conn = http_conn(served)
            assert post_async(conn, b"poison")[0] == 202
            for _ in range(2):  # handed out twice, its worker dies each time
                worker = RawWorker(ctx, served.endpoint("mdp"), "rfc", b"jobs")
                worker.ready()
                assert worker.request(timeout=10)[1][-1] == b"poison"
                worker.disconnect()
                worker.close()
            dead: list[Any] = []
            deadline = time.monotonic() + 10
            while not dead and time.monotonic() < deadline:  # the broker sees the death
                dead = get_json(conn, "/v1/dead-letters")
            assert [(d["queue"], d["id"], d["deliveries"]) for d in dead] == [("jobs", 0, 2)]
            conn.request("GET", "/metrics")  # the store's counters, as Prometheus counters
            metrics = conn.getresponse().read().decode()
            assert 'maitred_store_total{counter="published"}' in metrics
            assert 'maitred_store_total{counter="dead_lettered"} 1.0' in metrics
            conn.close()
            assert served.stop() == 0
        with ServeProcess("-c", str(cfg)) as again:
            conn = http_conn(again)
            dead = get_json(conn, "/v1/dead-letters")
            assert [(d["queue"], d["id"], d["payload"]) for d in dead] == [("jobs", 0, "poison")]
            conn.close()


def test_a_persistent_switch_queue_on_jetstream_refuses_with_503_when_the_stream_is_gone(
    tmp_path: Path,
    nats_server: NatsStarter,  # noqa: F811
) -> None:
    server = nats_server(jetstream=True)
    sock = short_socket_path()
    cfg = tmp_path / "maitred.toml"
    cfg.write_text(
        f"""
[store]
backend = "jetstream"
jetstream_nats = ["{server.url}"]
jetstream_timeout = 2.0

[transports.http]
listen = ["unix:{sock}"]
"""
    )
    with ServeProcess("-c", str(cfg)) as served:
        c = RawHttp(served.endpoint("http"), timeout=10)
        try:
            assert c.do("GET", "/login/snd:1") == (200, b"")
            assert c.do("GET", "/persistent/jobs") == (200, b"jobs")
            assert c.do("POST", "/request/jobs/nobody", b"one") == (200, b'[["jobs",0]]')
            js(server.url, "delete", name="MAITRED_DURABLE")
            status, body = c.do("POST", "/request/jobs/nobody", b"two")  # its batch fails
            assert (status, body[:20]) == (503, b"Service Unavailable:"), body
            status, body = c.do("POST", "/request/jobs/nobody", b"three")  # refused at once
            assert (status, body[:20]) == (503, b"Service Unavailable:"), body
        finally:
            c.close()
        assert served.proc.poll() is None
