"""The one store's schema version and migrations (core/store.py), and how the runtime picks the
one store from ``[store]`` and the deprecated keys (core/runtime.py), without sockets."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from maitred.core.config import parse_config
from maitred.core.durable import KIND, StoreHint, StoreJournal
from maitred.core.errors import MaitredError
from maitred.core.runtime import Broker
from maitred.core.store import (
    SCHEMA_VERSION,
    MemoryStore,
    SQLiteStore,
    StoredMessage,
    StoreLocked,
    StoreTooNew,
    migrate,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "store_v0"


def _copy(name: str, to: Path) -> Path:
    shutil.copy(FIXTURES / name, to)
    return to


def _version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_a_new_file_gets_the_schema_version(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "new.db")
    assert s.found_version == SCHEMA_VERSION
    s.close()
    assert _version(tmp_path / "new.db") == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("fixture", "owners"),
    [("store.sqlite3", {"jobs": "switch", "idle": "switch"}), ("services.sqlite3", {})],
)
def test_a_schema_0_file_tells_whose_queues_it_holds(
    tmp_path: Path, fixture: str, owners: dict[str, str]
) -> None:
    """Without being told, a file that holds service requests is the services' file; any
    other is the switch's (its live queues are the switch's persistent queues)."""
    path = _copy(fixture, tmp_path / "old.db")
    s = SQLiteStore(path)
    assert s.found_version == 0
    assert s.recover().owners == owners
    s.close()
    assert _version(path) == SCHEMA_VERSION
    again = SQLiteStore(path)  # migrated once
    assert again.found_version == SCHEMA_VERSION and again.recover().owners == owners
    again.close()


def test_the_owner_of_a_schema_0_file_can_be_told(tmp_path: Path) -> None:
    s = SQLiteStore(_copy("store.sqlite3", tmp_path / "old.db"), legacy_owner="")
    assert s.recover().owners == {}
    s.close()


def test_a_newer_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreTooNew, match="schema version 99"):
        SQLiteStore(path)
    assert _version(path) == 99


def test_import_takes_everything_and_renumbers_ids_already_used(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "one.db")
    s.append(StoredMessage("orders", 0, b"mine", KIND, "x", 1))
    s.append(StoredMessage("orders", 1, b"mine too", KIND, "x", 1))
    assert s.import_legacy(_copy("services.sqlite3", tmp_path / "svc.db"), "") == 2
    got = s.recover()
    assert [(m.n, m.deliveries) for m in got.queues["orders"]] == [(0, 0), (1, 0), (2, 0), (3, 1)]
    assert got.counters["orders"] == 4
    assert [(d.message.queue, d.message.n) for d in got.dead] == [("orders", 2)]
    assert s.import_legacy(_copy("store.sqlite3", tmp_path / "sw.db"), "switch") == 3
    got = s.recover()
    assert got.owners == {"jobs": "switch", "idle": "switch"}
    assert got.counters["gone"] == 1 and "gone" not in got.queues
    SQLiteStore(tmp_path / "today.db").close()
    with pytest.raises(StoreTooNew):  # a file of today's schema is no old file
        s.import_legacy(tmp_path / "today.db", "")
    s.close()


def test_migrate_on_a_connection_is_a_no_op_at_the_current_version(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    assert migrate(db) == SCHEMA_VERSION  # a new file
    assert migrate(db) == SCHEMA_VERSION
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_memory_store_keeps_owners_until_destroyed() -> None:
    s = MemoryStore()
    s.create_queue("q", "switch")
    s.create_queue("plain")
    assert s.recover().owners == {"q": "switch"}
    s.destroy_queue("q")
    assert s.recover().owners == {}


def test_journal_hands_a_transport_its_queues_once() -> None:
    store = MemoryStore()
    store.create_queue("jobs", "switch")
    store.append(StoredMessage("jobs", 0, b"p", b'["Request","r"]', "t", 1))
    store.append(StoredMessage("stray", 0, b"p", b'["Request","r"]', "t", 1))  # no owner
    journal = StoreJournal(store)
    broker = Broker(parse_config(""), {})
    assert journal.recover(broker.router, 0.0) == 0
    taken = journal.take_queues("switch")
    assert [m.payload for m in taken["jobs"]] == [b"p"]
    assert journal.take_queues("switch") == {}
    assert journal.next_id("jobs") == 1


def _settings(toml: str, hints: list[StoreHint]) -> tuple[str, str, str, str | None, list[str]]:
    broker = Broker(parse_config(toml), {})
    backend, path, sync, owner, legacy = broker._store_settings(hints)
    return backend, path, sync, owner, [str(p) for p, _ in legacy]


def test_store_section_wins_over_the_deprecated_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    hint = StoreHint("sqlite", str(tmp_path / "sw.db"), "full", "[transports.http] store")
    toml = (
        f'[store]\nbackend = "memory"\npath = "{tmp_path / "one.db"}"\nsync = "full"\n'
        f'[broker]\nstore = "sqlite"\nstore_path = "{tmp_path / "b.db"}"\nstore_sync = "normal"\n'
    )
    assert _settings(toml, [hint])[:4] == ("memory", str(tmp_path / "one.db"), "full", None)
    assert "[broker] store, store_path and store_sync are deprecated" in caplog.text
    assert "[transports.http] store are deprecated" in caplog.text


def test_deprecated_keys_apply_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    old_services = tmp_path / "maitred" / "services.sqlite3"
    old_services.parent.mkdir()
    old_services.touch()
    sw = tmp_path / "sw.db"
    sw.touch()
    hint = StoreHint("sqlite", str(sw), "full", "[transports.http] store")
    # the switch's key names the file when [broker] does not; the old services file is taken in
    assert _settings("", [hint]) == ("sqlite", str(sw), "full", "switch", [str(old_services)])
    # [broker] before the transport's; the switch's old file is taken in
    b = tmp_path / "b.db"
    toml = f'[broker]\nstore_path = "{b}"\nstore_sync = "normal"\n'
    assert _settings(toml, [hint]) == ("sqlite", str(b), "normal", "", [str(sw)])
    # nothing set: the default file, which was the switch's
    assert _settings("", []) == ("sqlite", "", "normal", "switch", [str(old_services)])
    # a memory store takes nothing in
    assert _settings('[store]\nbackend = "memory"\n', [hint])[4] == []


def test_an_old_file_in_use_stops_the_start(tmp_path: Path) -> None:
    old = _copy("services.sqlite3", tmp_path / "old.db")
    holder = SQLiteStore(old)  # another broker has it open (and migrated it)
    try:
        one = SQLiteStore(tmp_path / "one.db")
        with pytest.raises(StoreLocked):
            Broker._import_legacy(one, old, "")
        one.close()
    finally:
        holder.close()
    one = SQLiteStore(tmp_path / "one.db")
    Broker._import_legacy(one, old, "")  # migrated meanwhile: not an old file, left alone
    assert old.exists()
    one.close()


@pytest.mark.parametrize("what", ["locked", "newer"])
def test_a_store_the_broker_cannot_use_stops_the_start(tmp_path: Path, what: str) -> None:
    path = tmp_path / "one.db"
    holder = None
    if what == "locked":
        holder = SQLiteStore(path)  # another broker has it
    else:
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version = 99")
        db.close()
    toml = f'[store]\npath = "{path}"\n[services.jobs]\non_no_worker = "store"\n'
    broker = Broker(parse_config(toml), {})
    try:
        with pytest.raises(MaitredError, match=r"in use by another process|schema version 99"):
            asyncio.run(broker.start())
        assert broker.state == "stopped" and broker.journal is None
    finally:
        if holder is not None:
            holder.close()
