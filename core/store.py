"""The one durable store of the broker (``memory`` or ``sqlite``, ``[store]``): requests of
``on_no_worker = "store"`` services and messages of persistent switch queues alike.

No asyncio and no I/O beyond :mod:`sqlite3`: every write is *buffered* by the caller (the
journal, :mod:`maitred.core.durable`: ``append``, ``ack``, ``delivered``, ``dead_letter``, queue
create/destroy) and made durable by :meth:`Store.flush`, one transaction for everything buffered
since the last flush. The journal groups commits — one flush per event-loop turn — and a sender is
told its message was accepted only after the flush that contains it returned (``flushed`` tells
which writes that was).

Message ids are per-queue counters that never go back: the counter of a queue is persisted with
every batch and survives the queue's destruction and broker restarts.

The SQLite file carries a schema version (``PRAGMA user_version``, :data:`SCHEMA_VERSION`); an
older file is migrated in place when it is opened (:func:`migrate`), a newer one is refused.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from maitred.core.errors import BrokerError


@dataclass(slots=True)
class StoredMessage:
    """A message in a persistent queue. ``kind`` is the protocol's own encoding (opaque)."""

    queue: str
    n: int
    payload: bytes
    kind: bytes
    origin: str
    time: int
    deliveries: int = 0


@dataclass(slots=True)
class DeadLetter:
    message: StoredMessage
    reason: str


@dataclass(slots=True)
class Recovered:
    """What a store holds at start-up: each live queue with its messages (by id), the id
    counters of every queue ever created, and the dead letters."""

    queues: dict[str, list[StoredMessage]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    #: the live queues a transport made (``create_queue(name, owner)``) -> that owner
    owners: dict[str, str] = field(default_factory=dict)


class Store(Protocol):
    """A durable queue store. Writes are buffered until :meth:`flush`."""

    #: number of the last flush that completed (starts at 0); ``pending`` is the number of the
    #: flush that will make the currently buffered writes durable
    flushed: int

    @property
    def pending(self) -> int: ...

    @property
    def dirty(self) -> bool:
        """True when writes wait for a flush."""
        ...

    def recover(self) -> Recovered: ...

    def create_queue(self, name: str, owner: str = "") -> None:
        """Make a live queue that outlives a restart even while empty; ``owner`` says whose
        (e.g. ``switch``: a persistent switch queue)."""
        ...

    def destroy_queue(self, name: str) -> None:
        """Forget the queue and its messages (its id counter stays)."""
        ...

    def append(self, message: StoredMessage) -> None:
        """Add a message; ``message.n`` must be the queue's next id (the counter follows it)."""
        ...

    def ack(self, queue: str, n: int) -> None: ...

    def delivered(self, queue: str, n: int, deliveries: int) -> None:
        """Record how many times the message was handed to a consumer."""
        ...

    def dead_letter(self, message: StoredMessage, reason: str) -> None:
        """Move the message out of its queue into the dead letters."""
        ...

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]: ...

    def flush(self) -> int:
        """Commit everything buffered (one transaction); returns the new ``flushed`` number."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """Keeps nothing across restarts: the same interface, for tests and ``store = "memory"``."""

    def __init__(self) -> None:
        self.flushed = 0
        self._dirty = False
        self._queues: dict[str, dict[int, StoredMessage]] = {}
        self._counters: dict[str, int] = {}
        self._dead: list[DeadLetter] = []
        self._owners: dict[str, str] = {}

    @property
    def pending(self) -> int:
        return self.flushed + 1

    @property
    def dirty(self) -> bool:
        return self._dirty

    def recover(self) -> Recovered:
        return Recovered(
            {q: sorted(m.values(), key=lambda s: s.n) for q, m in self._queues.items()},
            dict(self._counters),
            list(self._dead),
            dict(self._owners),
        )

    def create_queue(self, name: str, owner: str = "") -> None:
        self._queues.setdefault(name, {})
        self._counters.setdefault(name, 0)
        if owner:
            self._owners[name] = owner
        self._dirty = True

    def destroy_queue(self, name: str) -> None:
        self._queues.pop(name, None)
        self._owners.pop(name, None)
        self._dirty = True

    def append(self, message: StoredMessage) -> None:
        self._queues.setdefault(message.queue, {})[message.n] = message
        self._counters[message.queue] = max(self._counters.get(message.queue, 0), message.n + 1)
        self._dirty = True

    def ack(self, queue: str, n: int) -> None:
        q = self._queues.get(queue)
        if q is not None:
            q.pop(n, None)
        self._dirty = True

    def delivered(self, queue: str, n: int, deliveries: int) -> None:
        m = self._queues.get(queue, {}).get(n)
        if m is not None:
            m.deliveries = deliveries
        self._dirty = True

    def dead_letter(self, message: StoredMessage, reason: str) -> None:
        self.ack(message.queue, message.n)
        self._dead.append(DeadLetter(message, reason))

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        return [d for d in self._dead if queue is None or d.message.queue == queue]

    def flush(self) -> int:
        self.flushed += 1
        self._dirty = False
        return self.flushed

    def close(self) -> None:
        return None


#: the schema this code writes (``PRAGMA user_version``). 0: the layout before versions (one
#: file for the switch, another for services; no queue owners); 1: one store, queues have owners
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY, next_n INTEGER NOT NULL, live INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS messages (
    queue TEXT NOT NULL, n INTEGER NOT NULL, payload BLOB NOT NULL, kind BLOB NOT NULL,
    origin TEXT NOT NULL, time INTEGER NOT NULL, deliveries INTEGER NOT NULL,
    PRIMARY KEY (queue, n)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead (
    queue TEXT NOT NULL, n INTEGER NOT NULL, payload BLOB NOT NULL, kind BLOB NOT NULL,
    origin TEXT NOT NULL, time INTEGER NOT NULL, deliveries INTEGER NOT NULL,
    reason TEXT NOT NULL, PRIMARY KEY (queue, n)) WITHOUT ROWID;
"""

_Op = tuple[str, tuple[object, ...]]

_INSERT = "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"
_DELETE = "DELETE FROM messages WHERE queue = ? AND n = ?"
_DELIVERED = "UPDATE messages SET deliveries = ? WHERE queue = ? AND n = ?"
#: checkpoint the WAL into the database every this many pages (SQLite's default is 1000): fewer,
#: larger checkpoints, since most rows are deleted again soon after they are written
_CHECKPOINT_PAGES = 4096


def default_store_path(env: Mapping[str, str] | None = None, name: str = "store.sqlite3") -> Path:
    """Where the SQLite store lives when ``store_path`` is not set: the user's XDG state
    directory, ``$XDG_STATE_HOME/maitred/store.sqlite3`` (``~/.local/state/maitred/...`` when
    the variable is unset or not absolute, as the XDG Base Directory spec says) — the same file
    whatever directory the broker is started from."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "maitred" / name


class StoreLocked(BrokerError, RuntimeError):
    """Another process (another broker) has the store open."""


class StoreTooNew(BrokerError, RuntimeError):
    """The file was written by a newer maitred (a schema version this code does not know)."""


#: the ``kind`` of a stored service request (:mod:`maitred.core.durable`); other kinds belong to
#: the transport that owns the queue (the switch stores its own message kinds)
SERVICE_KIND = b"maitred.request/1"


def _tables(db: sqlite3.Connection) -> set[str]:
    return {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def migrate(db: sqlite3.Connection, legacy_owner: str | None = None) -> int:
    """Bring the schema of ``db`` to :data:`SCHEMA_VERSION` (one transaction); returns the
    version the file had. A new file gets the schema; a file of version 0 (the two-file
    layout: the switch's ``store.sqlite3``, the services' ``services.sqlite3``) gets the queue
    owner column: its live queues belong to ``legacy_owner``, or, when that is None, to the
    switch if the file holds no service request (a services file always does while it holds
    anything), else to nobody. A newer version raises :class:`StoreTooNew`."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreTooNew(
            f"the store has schema version {version}; this maitred knows up to {SCHEMA_VERSION}"
        )
    if version == SCHEMA_VERSION:
        return int(version)
    db.execute("BEGIN")
    try:
        if "queues" not in _tables(db):
            version = SCHEMA_VERSION  # a new file: nothing older to tell of
            for statement in _SCHEMA.split(";"):  # a new file (executescript would commit)
                if statement.strip():
                    db.execute(statement)
        elif version == 0:
            db.execute("ALTER TABLE queues ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
            owner = legacy_owner
            if owner is None:
                service_rows = db.execute(
                    "SELECT EXISTS (SELECT 1 FROM messages WHERE kind = ?) "
                    "OR EXISTS (SELECT 1 FROM dead WHERE kind = ?)",
                    (SERVICE_KIND, SERVICE_KIND),
                ).fetchone()[0]
                owner = "" if service_rows else "switch"
            if owner:
                db.execute("UPDATE queues SET owner = ? WHERE live = 1", (owner,))
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")  # (the version a new file had is reported as the current one)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return int(version)


class SQLiteStore:
    """SQLite in WAL mode. ``synchronous = "normal"`` survives a process crash (kill -9);
    ``"full"`` also a power loss, at the price of an fsync per flush.

    The file is opened with an exclusive lock held until :meth:`close` (or the process dies): two
    brokers on one store would each recover, and so deliver, the same messages; the second one
    gets :class:`StoreLocked` instead."""

    def __init__(
        self,
        path: str | Path,
        synchronous: Literal["normal", "full"] = "normal",
        legacy_owner: str | None = None,
    ):
        """``legacy_owner``: whose live queues a file of schema 0 holds (``"switch"``: it was
        the switch's file; ``""``: the services' file; None: told by its content, see
        :func:`migrate`)."""
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=0.0
        )
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("BEGIN EXCLUSIVE")  # takes the lock, kept after COMMIT
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise StoreLocked(f"{self.path}: the store is in use by another process") from None
            raise
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        try:
            #: the schema version the file had when it was opened (0: before versions)
            self.found_version = migrate(self._db, legacy_owner)
        except BaseException:
            self._db.close()
            raise
        self.flushed = 0
        #: rows written by the commits so far (a message appended and acked between two
        #: commits is never written): for benchmarks and mmi.info
        self.inserted = 0
        self.deleted = 0
        self._ops: list[_Op | None] = []
        #: messages appended since the last flush -> the index of their insert in ``_ops``: a
        #: delivery count folds into the insert, an ack cancels it (the row is never written)
        self._inserts: dict[tuple[str, int], int] = {}
        self._counters: dict[str, int] = {}
        self._changed_counters: set[str] = set()
        for name, next_n in self._db.execute("SELECT name, next_n FROM queues"):
            self._counters[name] = next_n

    @property
    def pending(self) -> int:
        return self.flushed + 1

    @property
    def dirty(self) -> bool:
        return bool(self._ops or self._changed_counters)

    def recover(self) -> Recovered:
        out = Recovered(counters=dict(self._counters))
        for name, owner in self._db.execute(
            "SELECT name, owner FROM queues WHERE live = 1 ORDER BY name"
        ):
            out.queues[name] = []
            if owner:
                out.owners[name] = owner
        rows = self._db.execute(
            "SELECT queue, n, payload, kind, origin, time, deliveries FROM messages "
            "ORDER BY queue, n"
        )
        for queue, n, payload, kind, origin, time, deliveries in rows:
            out.queues.setdefault(queue, []).append(
                StoredMessage(queue, n, bytes(payload), bytes(kind), origin, time, deliveries)
            )
        out.dead = self.dead_letters()
        return out

    def create_queue(self, name: str, owner: str = "") -> None:
        self._counters.setdefault(name, 0)
        self._ops.append(
            (
                "INSERT INTO queues (name, next_n, live, owner) VALUES (?, ?, 1, ?) "
                "ON CONFLICT(name) DO UPDATE SET live = 1, owner = excluded.owner",
                (name, self._counters[name], owner),
            )
        )

    def destroy_queue(self, name: str) -> None:
        self._inserts = {k: i for k, i in self._inserts.items() if k[0] != name}
        self._ops.append(("UPDATE queues SET live = 0, owner = '' WHERE name = ?", (name,)))
        self._ops.append(("DELETE FROM messages WHERE queue = ?", (name,)))

    def append(self, message: StoredMessage) -> None:
        m = message
        earlier = self._inserts.get((m.queue, m.n))
        if earlier is not None:
            self._ops[earlier] = None  # replaced by this one
        self._inserts[(m.queue, m.n)] = len(self._ops)
        self._ops.append(
            (_INSERT, (m.queue, m.n, m.payload, m.kind, m.origin, m.time, m.deliveries))
        )
        if m.n + 1 > self._counters.get(m.queue, 0):
            self._counters[m.queue] = m.n + 1
            self._changed_counters.add(m.queue)

    def ack(self, queue: str, n: int) -> None:
        i = self._inserts.pop((queue, n), None)
        if i is not None:
            self._ops[i] = None  # appended and acked within one batch: nothing to write
            return
        self._ops.append((_DELETE, (queue, n)))

    def delivered(self, queue: str, n: int, deliveries: int) -> None:
        i = self._inserts.get((queue, n))
        if i is not None:
            op = self._ops[i]
            assert op is not None
            args = op[1]
            self._ops[i] = (_INSERT, (*args[:6], deliveries))
            return
        self._ops.append((_DELIVERED, (deliveries, queue, n)))

    def dead_letter(self, message: StoredMessage, reason: str) -> None:
        m = message
        self._ops.append(
            (
                "INSERT OR REPLACE INTO dead VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (m.queue, m.n, m.payload, m.kind, m.origin, m.time, m.deliveries, reason),
            )
        )
        self.ack(m.queue, m.n)

    def raise_counter(self, queue: str, next_n: int) -> None:
        """Make the id counter of ``queue`` at least ``next_n`` (a queue not known yet is made
        dead: only its counter is kept), for ``maitred store migrate``."""
        if next_n > self._counters.get(queue, 0):
            self._counters[queue] = next_n
            self._ops.append(
                (
                    "INSERT INTO queues (name, next_n, live) VALUES (?, ?, 0) "
                    "ON CONFLICT(name) DO UPDATE SET next_n = max(next_n, excluded.next_n)",
                    (queue, next_n),
                )
            )

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        sql = "SELECT queue, n, payload, kind, origin, time, deliveries, reason FROM dead"
        args: tuple[object, ...] = ()
        if queue is not None:
            sql += " WHERE queue = ?"
            args = (queue,)
        return [
            DeadLetter(StoredMessage(q, n, bytes(p), bytes(k), o, t, d), r)
            for q, n, p, k, o, t, d, r in self._db.execute(sql + " ORDER BY queue, n", args)
        ]

    def flush(self) -> int:
        ops, self._ops = self._ops, []
        self._inserts.clear()
        counters = [(self._counters[q], q) for q in self._changed_counters]
        self._changed_counters.clear()
        db = self._db
        db.execute("BEGIN")
        try:
            for sql, group in _grouped(ops):
                db.executemany(sql, group)
                if sql is _INSERT:
                    self.inserted += len(group)
                elif sql is _DELETE:
                    self.deleted += len(group)
            if counters:
                db.executemany(
                    "INSERT INTO queues (name, next_n, live) VALUES (?2, ?1, 1) "
                    "ON CONFLICT(name) DO UPDATE SET next_n = max(next_n, ?1)",
                    counters,
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.flushed += 1
        return self.flushed

    def import_legacy(self, path: str | Path, owner: str) -> int:
        """Take in what a store file of the two-file layout (schema 0) holds: its live queues
        (belonging to ``owner``), messages, dead letters and id counters, in one transaction;
        returns the number of messages. A message whose id this store has already used gets the
        queue's next id. The caller renames the old file afterwards."""
        if self.dirty:
            self.flush()
        old = sqlite3.connect(str(path), timeout=0.0)
        try:
            if migrate_version(old) > 0:
                raise StoreTooNew(f"{path}: not a store of the old two-file layout")
            queues = old.execute("SELECT name, next_n, live FROM queues").fetchall()
            messages = old.execute("SELECT * FROM messages ORDER BY queue, n").fetchall()
            dead = old.execute("SELECT * FROM dead ORDER BY queue, n").fetchall()
        finally:
            old.close()
        db = self._db
        counters = self._counters
        used = {(q, n) for q, n in db.execute("SELECT queue, n FROM messages")}
        rows: list[tuple[object, ...]] = []
        for queue, old_n, *rest in messages:
            n = counters.get(queue, 0) if (queue, old_n) in used else old_n
            used.add((queue, n))
            counters[queue] = max(counters.get(queue, 0), n + 1)
            rows.append((queue, n, *rest))
        db.execute("BEGIN")
        try:
            for name, next_n, live in queues:
                counters[name] = max(counters.get(name, 0), next_n)
                db.execute(
                    "INSERT INTO queues (name, next_n, live, owner) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET live = max(live, excluded.live), "
                    "owner = CASE WHEN excluded.live = 1 AND excluded.owner != '' "
                    "THEN excluded.owner ELSE owner END",
                    (name, counters[name], live, owner if live else ""),
                )
            db.executemany(_INSERT, rows)
            db.executemany("INSERT OR IGNORE INTO dead VALUES (?, ?, ?, ?, ?, ?, ?, ?)", dead)
            db.executemany(
                "INSERT INTO queues (name, next_n, live) VALUES (?2, ?1, 1) "
                "ON CONFLICT(name) DO UPDATE SET next_n = max(next_n, ?1)",
                [(counters[q], q) for q in {str(r[0]) for r in rows}],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(rows)

    def close(self) -> None:
        if self.dirty:
            self.flush()
        self._db.close()


def migrate_version(db: sqlite3.Connection) -> int:
    """The schema version of an open store file (0: the layout before versions)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)


def _grouped(ops: list[_Op | None]) -> Iterable[tuple[str, list[tuple[object, ...]]]]:
    """Consecutive operations with the same SQL, as executemany groups (order kept; cancelled
    operations, None, are skipped)."""
    sql: str | None = None
    group: list[tuple[object, ...]] = []
    for op in ops:
        if op is None:
            continue
        op_sql, args = op
        if op_sql != sql:
            if sql is not None:
                yield sql, group
            sql, group = op_sql, []
        group.append(args)
    if sql is not None:
        yield sql, group


def open_store(
    kind: Literal["memory", "sqlite", "jetstream"],
    path: str = "",
    synchronous: Literal["normal", "full"] = "normal",
    default_name: str = "store.sqlite3",
    legacy_owner: str | None = None,
) -> Store:
    """A store by its config name (``[store] backend``; ``jetstream`` is connected
    asynchronously: :func:`maitred.core.store_jetstream.open_jetstream`)."""
    if kind == "jetstream":
        raise ValueError("the jetstream store is opened with store_jetstream.open_jetstream")
    if kind == "memory":
        return MemoryStore()
    return SQLiteStore(path or default_store_path(name=default_name), synchronous, legacy_owner)
