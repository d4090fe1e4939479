"""Reading the JetStream store's stream at start-up (see :mod:`maitred.core.store_jetstream`
for the subjects). Nothing here imports ``nats`` at import time."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

import msgspec

from maitred.core.jetstream_layout import message, token_name
from maitred.core.store import DeadLetter, StoredMessage

if TYPE_CHECKING:
    from maitred.core.store_jetstream import JetStreamStore

log = logging.getLogger("maitred.core.store")

#: readers of the stream at start, each over a part of its sequence range
WALKERS = 8


async def load_stream(store: JetStreamStore) -> None:
    """Read everything the stream holds into what ``store.recover()`` returns: the stream
    leader answers "the next message from sequence S" (``STREAM.MSG.GET``), walked by
    :data:`WALKERS` readers over parts of the sequence range at once. No consumer: a
    work-queue stream would take one at a time, and a consumer needs the meta leader."""
    from nats.js.errors import NotFoundError

    js, stream = store._js, store.stream
    info = await js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    bodies: dict[tuple[str, int], StoredMessage] = {}
    counts: dict[tuple[str, int], int] = {}
    taken: list[tuple[int, str, bytes]] = []
    wildcard = f"{stream}.>"

    async def walk(start: int, end: int) -> None:
        seq = start
        while seq <= end:
            try:
                m = await js.get_msg(stream, seq=seq, subject=wildcard, next=True)
            except NotFoundError:
                return
            if m.seq is None or m.seq > end:
                return
            taken.append((m.seq, m.subject or "", m.data or b""))
            seq = m.seq + 1

    if info.state.messages:
        step = max(1, (last - first + 1 + WALKERS - 1) // WALKERS)
        await asyncio.gather(
            *(walk(a, min(a + step - 1, last)) for a in range(first, last + 1, step))
        )
    taken.sort(key=lambda t: t[0])  # in stream order: later records win
    for seq, subject, data in taken:
        take(store, seq, subject, data, bodies, counts)
    out = store._recovered
    for name_, q in store._queues.items():
        out.counters[name_] = q.next_n
        if q.live:
            out.queues[name_] = []
            if q.owner:
                out.owners[name_] = q.owner
    for key in sorted(bodies):
        m = bodies[key]
        m.deliveries = max(m.deliveries, counts.get(key, 0))
        out.queues.setdefault(m.queue, []).append(m)
        if m.n + 1 > out.counters.get(m.queue, 0):
            out.counters[m.queue] = m.n + 1
            store.queue(m.queue).next_n = m.n + 1
    out.dead = store.dead_letters()


def take(
    store: JetStreamStore,
    seq: int,
    subject: str,
    data: bytes,
    bodies: dict[tuple[str, int], StoredMessage],
    counts: dict[tuple[str, int], int],
) -> None:
    """Take one message of the stream (sequence ``seq``) into what is read back."""
    parts = subject.split(".")[1:]
    try:
        kind, queue = parts[0], token_name(parts[1])
        if kind == "q":
            record = json.loads(data)
            q = store.queue(queue)
            q.next_n, q.live, q.owner = (
                int(record["next"]),
                bool(record["live"]),
                str(record["owner"]),
            )
            store.record_seq[queue] = seq
        elif kind == "d":
            m, reason = message(queue, int(parts[2]), data)
            store._dead.append(DeadLetter(m, reason))
        elif kind == "m" and parts[3] == "body":
            bodies[(queue, int(parts[2]))] = message(queue, int(parts[2]), data)[0]
        elif kind == "m" and parts[3] == "count":
            counts[(queue, int(parts[2]))] = int(data)
    except (IndexError, ValueError, KeyError, TypeError, msgspec.DecodeError):
        log.warning("store: %s is not a maitred message, left alone", subject)
