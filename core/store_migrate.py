"""``maitred store migrate --from SRC --to DST``: copy what one durable store holds into
another (SQLite file <-> JetStream stream), then read the destination back and check that
every message and dead letter is there.

Ends are ``sqlite:PATH`` (``sqlite`` alone: the ``[store] path`` of the config, or the default
file) and ``jetstream`` (the ``[store] jetstream_*`` settings of the config) or
``jetstream:URL[,URL...]`` (other NATS servers). The broker must not run on either end (a SQLite
file is locked by its broker). Ids, delivery counts, owners, dead letters and the id counters
move as they are; the source is left as it was (delete it once the broker runs on the new one).

Running it twice is harmless: a SQLite row and a JetStream subject hold one message each, so
the second copy replaces the first. The id counters of every queue ever made, destroyed ones
included, are checked too: ids never go back on the new store.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maitred.core.config import Config, load_config
from maitred.core.errors import BrokerError, ConfigError
from maitred.core.store import Recovered, SQLiteStore, default_store_path


@dataclass(frozen=True, slots=True)
class End:
    kind: str  # "sqlite" or "jetstream"
    path: str = ""
    servers: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:{self.path}"
        return "jetstream" + (f":{','.join(self.servers)}" if self.servers else "")


def parse_end(spec: str, config: Config) -> End:
    """``sqlite[:PATH]`` or ``jetstream[:URL,...]`` (ConfigError otherwise)."""
    kind, _, rest = spec.partition(":")
    if kind == "sqlite":
        return End("sqlite", rest or config.store.path or str(default_store_path()))
    if kind == "jetstream":
        servers = tuple(u for u in rest.split(",") if u) or tuple(config.store.jetstream_nats)
        return End("jetstream", servers=servers)
    raise ConfigError(f"{spec!r}: a store is sqlite:PATH or jetstream[:nats://HOST:PORT]")


@dataclass(slots=True)
class Counts:
    queues: int = 0
    messages: int = 0
    dead: int = 0
    counters: int = 0

    @classmethod
    def of(cls, r: Recovered) -> Counts:
        messages = sum(map(len, r.queues.values()))
        return cls(len(r.queues), messages, len(r.dead), len(r.counters))

    def __str__(self) -> str:
        return (
            f"{self.messages} messages in {self.queues} queues, {self.dead} dead letters, "
            f"{self.counters} id counters"
        )


async def _open(end: End, config: Config, *, source: bool) -> Any:
    if end.kind == "sqlite":
        if source and not Path(end.path).is_file():
            raise ConfigError(f"{end}: no such store file")
        return SQLiteStore(end.path, config.store.sync)
    from maitred.core.store_jetstream import open_jetstream, settings_from

    s = config.store
    return await open_jetstream(
        settings_from(end.servers, s.jetstream_stream, s.jetstream_replicas, s.jetstream_timeout)
    )


async def _close(store: Any) -> None:
    drain = getattr(store, "drain", None)
    if drain is not None:
        await drain()
        failed = getattr(store, "down", None)
        if failed is not None:
            raise BrokerError(f"the destination did not store everything: {failed}")
    else:
        store.close()


def copy(held: Recovered, dst: Any) -> None:
    """Buffer into ``dst`` every live queue (with its owner), message, dead letter and id
    counter of ``held``."""
    for name in held.queues:
        dst.create_queue(name, held.owners.get(name, ""))
    for messages in held.queues.values():
        for m in messages:
            dst.append(m)
    for d in held.dead:
        dst.dead_letter(d.message, d.reason)
    for name, next_n in held.counters.items():
        dst.raise_counter(name, next_n)


async def migrate(src: End, dst: End, config: Config) -> tuple[Counts, Counts]:
    """Copy ``src`` into ``dst``; returns the counts of the source and of the destination as
    read back afterwards. Raises BrokerError when the destination lacks anything."""
    if src == dst:
        raise ConfigError(f"{src}: the source and the destination are the same store")
    source = await _open(src, config, source=True)
    try:
        held = source.recover()
    finally:
        await _close(source)
    target = await _open(dst, config, source=False)
    try:
        copy(held, target)
        if getattr(target, "drain", None) is None:
            target.flush()
    finally:
        await _close(target)
    check = await _open(dst, config, source=True)
    try:
        back = check.recover()
    finally:
        await _close(check)
    there = {(m.queue, m.n) for messages in back.queues.values() for m in messages}
    missing = [
        f"{m.queue}/{m.n}"
        for messages in held.queues.values()
        for m in messages
        if (m.queue, m.n) not in there
    ]
    dead_back = {(d.message.queue, d.message.n) for d in back.dead}
    missing += [
        f"dead {d.message.queue}/{d.message.n}"
        for d in held.dead
        if (d.message.queue, d.message.n) not in dead_back
    ]
    missing += [
        f"the id counter of {name} ({n})"
        for name, n in held.counters.items()
        if back.counters.get(name, 0) < n
    ]
    if missing:
        raise BrokerError(
            f"{dst} lacks {len(missing)} of the copied messages: {', '.join(missing[:10])}"
        )
    return Counts.of(held), Counts.of(back)


def cmd_store(args: argparse.Namespace) -> int:
    """``maitred store migrate``: prints the counts; exit 0 when the destination holds all."""
    config = load_config(args.config)
    src, dst = parse_end(args.source, config), parse_end(args.destination, config)
    moved, there = asyncio.run(migrate(src, dst, config))
    print(f"{src}: {moved}")
    print(f"{dst}: {there} (every one of {src} is there)")
    return 0
