"""Durable switch queues survive kill -9: a ``maitred serve`` subprocess with the SQLite store is
killed while messages are queued and leased; restarted on the same store, every accepted
message is there (acked ones gone, unacked ones redelivered) and ids go on where they stopped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from maitred.plugins.testing import ServeProcess
from tests.e2e.http_helpers import RawHttp, short_socket_path

pytestmark = pytest.mark.slow


def serve(config: Path) -> ServeProcess:
    return ServeProcess("-c", str(config))


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    sock = short_socket_path()
    cfg = tmp_path / "maitred.toml"
    cfg.write_text(
        f"""
[broker]
log_level = "warning"

[transports.http]
listen = ["unix:{sock}"]
store = "sqlite"
store_path = "{tmp_path / "store.sqlite3"}"
switch_credit = 8
"""
    )
    yield cfg


OPEN: list[RawHttp] = []


def login(endpoint: str, token: str) -> RawHttp:
    c = RawHttp(endpoint, timeout=10)
    OPEN.append(c)
    assert c.do("GET", f"/login/{token}") == (200, b"")
    return c


def transfer(c: RawHttp, start: int, timeout: float) -> tuple[list[tuple[int, str]], int]:
    req = {"timeout": timeout, "queues": ["jobs"], "from": str(start)}
    status, body = c.do("POST", "/transfer", json.dumps(req).encode())
    assert status == 200
    got = json.loads(body)
    return [(qid[1], m["payload"]) for qid, m in got["messages"]], int(got["next"])


def test_kill_9_loses_no_accepted_message(config: Path) -> None:
    first = serve(config)
    try:
        sender = login(first.endpoint("http"), "snd:1")
        assert sender.do("GET", "/persistent/jobs") == (200, b"jobs")
        for i in range(30):
            assert sender.do("POST", "/request/jobs/nobody", b"job-%d" % i) == (
                200,
                b'[["jobs",%d]]' % i,
            )
        worker = login(first.endpoint("http"), "w:1")
        msgs, _ = transfer(worker, -1, 5.0)
        assert len(msgs) == 8  # its credit: the rest stays queued
        for n in (0, 1, 2):
            assert worker.do("GET", f"/ack/jobs/{n}") == (200, b"")
        # (three more are now leased to w:1 but not yet transferred)
    finally:
        first.close()  # SIGKILL
        while OPEN:
            OPEN.pop().close()

    second = serve(config)
    try:
        c = login(second.endpoint("http"), "w:2")
        diag = json.loads(c.do("GET", "/")[1])
        stored = [e[0][1] for e in diag["permanent_queues"]["jobs"]["queue_contents"]]
        assert stored == list(range(3, 30))
        seen: dict[int, str] = {}
        start = -1
        while len(seen) < 27:
            msgs, start = transfer(c, start, 5.0)
            assert msgs, f"only {sorted(seen)} came back"
            for n, payload in msgs:
                assert n not in seen
                seen[n] = payload
                assert c.do("GET", f"/ack/jobs/{n}") == (200, b"")
        assert seen == {n: f"job-{n}" for n in range(3, 30)}
        # ids never repeat across the restart
        assert c.do("POST", "/request/jobs/nobody", b"after") == (200, b'[["jobs",30]]')
    finally:
        second.close()  # SIGKILL
        while OPEN:
            OPEN.pop().close()
