"""A service with ``on_no_worker = "store"`` across a broker crash: REST callers get 202 once each
request is on disk, an MDP worker takes some and holds others, the broker is killed with
SIGKILL, and the restarted broker delivers every accepted request that was not answered — none
lost, none twice (those answered just before the kill may come again: at least once)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from maitred.plugins.testing import ServeProcess
from tests.e2e.helpers import RawWorker, zmq_context

TOTAL = 120
ANSWERED = 20


def config(tmp_path: Path) -> Path:
    path = tmp_path / "maitred.toml"
    path.write_text(
        f"""
[broker]
store_path = "{tmp_path / "services.sqlite3"}"
drain_timeout = 0.5

[services.jobs]
on_no_worker = "store"
request_timeout = 60.0

[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]

[transports.http]
listen = ["127.0.0.1:0"]
store = "memory"
switch = false
"""
    )
    return path


def post_async(conn: http.client.HTTPConnection, i: int) -> dict[str, Any]:
    conn.request(
        "POST",
        "/v1/services/jobs",
        body=b"job-%d" % i,
        headers={"Prefer": "respond-async", "Content-Type": "application/octet-stream"},
    )
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 202, (resp.status, data)
    assert resp.getheader("Preference-Applied") == "respond-async"
    result: dict[str, Any] = json.loads(data)
    return result


def http_conn(served: ServeProcess) -> http.client.HTTPConnection:
    host, port = served.endpoint("http").removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=10)


@pytest.mark.slow
def test_stored_requests_survive_sigkill(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    # the context ends with the test whatever fails (an unclosed one warns at garbage
    # collection, which fails whichever test runs then)
    with zmq_context() as ctx, ServeProcess("-c", str(cfg)) as first:
        conn = http_conn(first)
        ids = [post_async(conn, i)["id"] for i in range(TOTAL)]
        conn.close()
        assert ids == list(range(TOTAL))  # ids in order, from 0 on a new store

        worker = RawWorker(ctx, first.endpoint("mdp"), "rfc", b"jobs")
        worker.ready()
        answered: set[bytes] = set()
        held: set[bytes] = set()
        for _ in range(ANSWERED):
            addr, body = worker.request(timeout=10)
            worker.final(addr, b"ok")
            answered.add(body[-1])
        # take a few more and never answer them: in flight when the broker dies
        for _ in range(3):
            _, body = worker.request(timeout=10)
            held.add(body[-1])
        first.kill()
        worker.close()

        with ServeProcess("-c", str(cfg)) as second:
            worker = RawWorker(ctx, second.endpoint("mdp"), "rfc", b"jobs")
            try:
                worker.ready()
                again: list[bytes] = []
                expected = {b"job-%d" % i for i in range(TOTAL)} - answered
                while not expected <= set(again):
                    addr, body = worker.request(timeout=10)
                    worker.final(addr, b"ok")
                    again.append(body[-1])
                assert len(again) == len(set(again)), "a request was delivered twice"
                assert held <= set(again)  # in flight at the kill: delivered again
                extra = set(again) - expected
                assert extra <= answered  # only answered-just-before-the-kill ones may repeat
                # and a new request gets an id the store never gave before
                conn = http_conn(second)
                assert post_async(conn, 999)["id"] == TOTAL
                conn.close()
            finally:
                worker.close()
            assert second.stop() == 0
