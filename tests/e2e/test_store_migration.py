"""A broker upgraded from the two-file layout finds its messages.

tests/fixtures/store_v0 holds a switch store and a services store written by the code of that
layout (schema 0, before ``PRAGMA user_version``; make_fixtures.py says how). Today's broker is
started on them — at the default paths, and through the deprecated keys that named them — and
must find every message: the switch's persistent queues with their ids, delivery counts and
responses, the stored service requests, the dead letters of both, the id counters (ids never
repeat); the schema version is set afterwards and the old services file is not read twice.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from maitred.core.store import SCHEMA_VERSION
from tests.e2e.helpers import BrokerThread
from tests.e2e.http_helpers import RawHttp, endpoint_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "store_v0"

SERVICES = """
[services.orders]
on_no_worker = "store"
"""


@pytest.fixture
def conns() -> Iterator[list[RawHttp]]:
    opened: list[RawHttp] = []
    yield opened
    for c in opened:
        c.close()


def _version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        return int(version)
    finally:
        db.close()


def _login(conns: list[RawHttp], b: BrokerThread, token: str) -> RawHttp:
    c = RawHttp(endpoint_of(b, "http://"))
    conns.append(c)
    assert c.do("GET", f"/login/{token}") == (200, b"")
    return c


def _stored_orders(b: BrokerThread) -> list[tuple[int, int, list[bytes], object]]:
    def read() -> list[tuple[int, int, list[bytes], object]]:
        service = b.broker.router.services["orders"]
        return sorted(
            (r.stored, r.deliveries, list(r.body), r.headers)
            for r in service.queue
            if r.stored >= 0
        )

    return b.call(read)


def _check_everything(b: BrokerThread, conns: list[RawHttp]) -> None:
    c = _login(conns, b, "ops:1")
    status, body = c.do("GET", "/")
    assert status == 200
    queues = json.loads(body)["permanent_queues"]
    assert sorted(queues) == ["idle", "jobs"]  # "gone" was destroyed
    assert queues["idle"]["queue_contents"] == []
    jobs = {tuple(qid): entry["message"] for qid, entry in queues["jobs"]["queue_contents"]}
    assert sorted(jobs) == [("jobs", 0), ("jobs", 1), ("jobs", 3)]
    assert jobs[("jobs", 0)] == {"payload": "job-0", "kind": ["Request", "replies"]}
    assert jobs[("jobs", 1)]["payload"] == "job-1"
    assert jobs[("jobs", 3)] == {"payload": "answer", "kind": ["Response", ["x", 7]]}
    # the switch's delivery count came along (one failed delivery of jobs/1)
    assert (
        b.call(lambda: b.broker.transports["http"].switch.queues["jobs"].messages[1].deliveries)
        == 1
    )  # type: ignore[attr-defined]
    # the stored service requests are queued for their service again, headers and counts kept
    assert _stored_orders(b) == [
        (0, 0, [b"order-0"], None),
        (1, 1, [b"order-1", b"more"], {"x-trace": "t1"}),
    ]
    # one dead letter queue holds the dead letters of both files
    status, body = c.do("GET", "/v1/dead-letters")
    assert status == 200
    dead = {(d["queue"], d["id"]): d for d in json.loads(body)}
    assert sorted(dead) == [("jobs", 2), ("orders", 2)]
    assert dead[("jobs", 2)]["payload"] == "poison" and dead[("jobs", 2)]["deliveries"] == 5
    assert dead[("orders", 2)]["payload"] == "bad"
    assert "none answered" in dead[("orders", 2)]["reason"]
    # the id counters came along: ids never repeat
    assert c.do("POST", "/request/jobs/replies", b"job-4") == (200, b'[["jobs",4]]')
    assert c.do("GET", "/ack/jobs/4") == (200, b"")


def test_upgrade_from_the_default_paths(
    make_broker: Callable[..., BrokerThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    conns: list[RawHttp],
) -> None:
    """No store key at all: the old switch file at the default path becomes the one store (it is
    migrated in place) and the old services file next to it is taken in, then renamed."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    state = tmp_path / "maitred"
    state.mkdir()
    shutil.copy(FIXTURES / "store.sqlite3", state / "store.sqlite3")
    shutil.copy(FIXTURES / "services.sqlite3", state / "services.sqlite3")
    assert _version(state / "store.sqlite3") == 0
    table = SERVICES + '[transports.http]\nlisten = ["127.0.0.1:0"]\n'
    b = make_broker(table)
    _check_everything(b, conns)
    b.stop(drain_timeout=0)
    assert _version(state / "store.sqlite3") == SCHEMA_VERSION
    assert not (state / "services.sqlite3").exists()
    assert (state / "services.sqlite3.imported").is_file()

    again = make_broker(table)  # a second start: nothing is taken in twice, nothing lost
    c = _login(conns, again, "ops:2")
    queues = json.loads(c.do("GET", "/")[1])["permanent_queues"]
    assert sorted(queues) == ["idle", "jobs"]
    assert [qid[1] for qid, _ in queues["jobs"]["queue_contents"]] == [0, 1, 3]
    assert [s[0] for s in _stored_orders(again)] == [0, 1]
    assert len(json.loads(c.do("GET", "/v1/dead-letters")[1])) == 2


def test_upgrade_through_the_deprecated_keys(
    make_broker: Callable[..., BrokerThread], tmp_path: Path, conns: list[RawHttp]
) -> None:
    """``[broker] store_path`` and ``[transports.http] store_path`` named the two files: the
    first becomes the one store (a services file, migrated in place) and the switch's file is
    taken in."""
    services, switch = tmp_path / "svc.db", tmp_path / "switch.db"
    shutil.copy(FIXTURES / "services.sqlite3", services)
    shutil.copy(FIXTURES / "store.sqlite3", switch)
    table = (
        f'[broker]\nstore_path = "{services}"\n'
        + SERVICES
        + f'[transports.http]\nlisten = ["127.0.0.1:0"]\nstore_path = "{switch}"\n'
    )
    b = make_broker(table)
    _check_everything(b, conns)
    b.stop(drain_timeout=0)
    assert _version(services) == SCHEMA_VERSION
    assert not switch.exists() and (tmp_path / "switch.db.imported").is_file()
