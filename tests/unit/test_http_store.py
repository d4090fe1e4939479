"""core/store.py: the memory and SQLite stores behave the same; SQLite keeps everything
across a reopen, ids never repeat, dead letters keep their reason, writes wait for flush."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from maitred.core.store import (
    MemoryStore,
    SQLiteStore,
    Store,
    StoredMessage,
    StoreLocked,
    default_store_path,
    open_store,
)


def msg(queue: str, n: int, payload: bytes = b"p") -> StoredMessage:
    return StoredMessage(queue, n, payload, b'["Request","r"]', "cli:1", 1000 + n)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")
    yield s
    s.close()


def test_append_ack_recover(store: Store) -> None:
    store.create_queue("q")
    for n in range(5):
        store.append(msg("q", n, b"m%d" % n))
    assert store.dirty
    assert store.flush() == 1 and not store.dirty
    store.ack("q", 1)
    store.ack("q", 99)  # absent: no-op
    store.delivered("q", 2, 3)
    store.flush()
    got = store.recover()
    assert [m.n for m in got.queues["q"]] == [0, 2, 3, 4]
    assert got.counters["q"] == 5
    assert got.queues["q"][0].payload == b"m0"


def test_dead_letters_and_destroy(store: Store) -> None:
    store.create_queue("q")
    store.append(msg("q", 0))
    store.dead_letter(msg("q", 0), "delivered 5 times without an ack")
    store.flush()
    assert store.recover().queues["q"] == []
    (dead,) = store.dead_letters("q")
    assert dead.reason == "delivered 5 times without an ack" and dead.message.n == 0
    assert store.dead_letters("other") == []
    store.destroy_queue("q")
    store.flush()
    got = store.recover()
    assert "q" not in got.queues
    assert got.counters["q"] == 1  # the counter outlives the queue


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = SQLiteStore(path)
    s.create_queue("a")
    s.create_queue("b")
    for n in range(3):
        s.append(msg("a", n))
    s.ack("a", 0)
    s.flush()
    s.append(msg("a", 3))  # never flushed: lost, like a crash before commit
    s._db.close()
    again = SQLiteStore(path)
    got = again.recover()
    assert sorted(got.queues) == ["a", "b"]
    assert [m.n for m in got.queues["a"]] == [1, 2]
    assert got.counters == {"a": 3, "b": 0}
    again.close()


def test_open_store_by_name(tmp_path: Path) -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    s = open_store("sqlite", str(tmp_path / "x.db"))
    assert isinstance(s, SQLiteStore)
    s.close()


def test_sqlite_batch_folds_deliveries_and_cancels_acked_appends(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "s.db")
    s.create_queue("q")
    for n in range(4):
        s.append(msg("q", n))
    s.delivered("q", 0, 1)  # folds into the pending insert
    s.delivered("q", 1, 1)
    s.ack("q", 1)  # appended and acked in one batch: never written
    s.flush()
    s.delivered("q", 2, 2)  # after the flush: an UPDATE
    s.ack("q", 3)  # a DELETE
    s.append(msg("q", 4))
    s.destroy_queue("q")  # drops the pending insert of 4 with the queue
    s.create_queue("q")
    s.flush()
    got = s.recover()
    assert got.queues["q"] == [] and got.counters["q"] == 5
    s.append(msg("q", 5))
    s.delivered("q", 5, 1)
    s.flush()
    s._db.close()
    again = SQLiteStore(tmp_path / "s.db")
    (m,) = again.recover().queues["q"]
    assert (m.n, m.deliveries) == (5, 1)
    again.close()


def test_sqlite_store_is_locked_while_open(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "s.db")
    with pytest.raises(StoreLocked, match="in use by another process"):
        SQLiteStore(tmp_path / "s.db")
    first.close()
    SQLiteStore(tmp_path / "s.db").close()  # free again once closed


def test_default_store_path_follows_xdg(tmp_path: Path) -> None:
    home = Path.home() / ".local" / "state" / "maitred" / "store.sqlite3"
    assert default_store_path({"XDG_STATE_HOME": str(tmp_path)}) == (
        tmp_path / "maitred" / "store.sqlite3"
    )
    assert default_store_path({}) == home
    assert default_store_path({"XDG_STATE_HOME": "relative/dir"}) == home  # the spec: ignored
