"""The durable path: one journal over the broker's one :class:`~maitred.core.store.Store`
(``[store]``, SQLite by default) for every message that must survive a crash: requests of
services with ``on_no_worker = "store"`` and the messages of persistent switch queues (which are
durable services too).

The router tells the journal when a stored service request is accepted (``append``), answered by
a worker (``done``), handed back after its worker died (``redelivered``) or given up (``dead``).
A transport that keeps its own view of a durable queue (the message switch: its ids, leases and
message kinds) writes through the journal's message methods (``create_queue``, ``put``, ``ack``,
``delivered``, ``dead_letter``) into the same tables. Writes are buffered and committed once per
event-loop turn (group commit): a burst of requests costs one transaction, and a message appended
and answered within one turn is never written at all. Whoever must tell a caller "accepted" only
once the message is on disk awaits :meth:`StoreJournal.committed`.

At start-up :meth:`StoreJournal.recover` puts every stored service request back into its
service's queue (``Router.restore``) and keeps the queues a transport owns for it
(:meth:`StoreJournal.take_queues`): none is lost across a crash, and one a worker was serving
when the broker died is delivered again (at least once). Ids are per-queue counters shared by
both kinds of message, and never repeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from maitred.core.errors import MaitredError
from maitred.core.routing.model import Body, Headers, Request, Session
from maitred.core.routing.router import Router
from maitred.core.store import SERVICE_KIND, DeadLetter, Store, StoredMessage

log = logging.getLogger("maitred.core.durable")

#: the ``kind`` of stored service requests (a transport's queues store kinds of their own)
KIND = SERVICE_KIND


@dataclass(frozen=True, slots=True)
class StoreHint:
    """What a transport asks of the one store: it needs it (a hint is given at all), and the
    settings of its deprecated keys (empty: not set) that apply where ``[store]`` and the
    ``[broker]`` aliases leave a setting at its default."""

    backend: str = ""
    path: str = ""
    sync: str = ""
    #: the key names to mention in the deprecation warning
    where: str = ""


class _Payload(msgspec.Struct, array_like=True, omit_defaults=True):
    body: list[bytes]
    headers: dict[str, str] | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Payload).decode


def encode_request(body: Body, headers: Headers | None) -> bytes:
    """The stored form of a request's frames and headers (msgpack)."""
    return _encode(
        _Payload([bytes(f) for f in body], dict(headers) if headers is not None else None)
    )


def decode_request(payload: bytes) -> tuple[list[bytes], dict[str, str] | None]:
    p = _decode(payload)
    return p.body, p.headers


class StoreJournal:
    """The router's :class:`~maitred.core.routing.model.Journal` over a store."""

    #: requests wait in the router's queues (a store that several brokers share pulls them:
    #: :class:`~maitred.core.jetstream_pull.PullingJournal`)
    pulls = False

    def __init__(self, store: Store) -> None:
        self.store = store
        #: per service: the next id
        self.counters: dict[str, int] = {}
        self._scheduled = False
        self._closed = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.appended = 0
        self.failures = 0
        self.dead_lettered = 0
        #: sessions whose requests are not journaled by the router: a transport that stores
        #: them itself (the switch's queue session; see :meth:`bypass`)
        self._bypass: set[Session] = set()
        #: owner -> queue -> its recovered messages, until the owner takes them
        self._owned: dict[str, dict[str, list[StoredMessage]]] = {}
        self._refusal: Callable[[int], MaitredError | None] | None = getattr(store, "refusal", None)
        # a store that commits asynchronously (JetStream) says when a batch is acknowledged
        listen = getattr(store, "listen", None)
        if listen is not None:
            listen(self._wake, self._batch_failed)

    # -- start-up -------------------------------------------------------------------------

    def recover(self, router: Router, now: float) -> int:
        """Queue every stored request again; returns how many there were."""
        recovered = self.store.recover()
        self.counters.update(recovered.counters)
        count = 0
        for service, messages in recovered.queues.items():
            owner = recovered.owners.get(service)
            held = None if owner is None else self._owned.setdefault(owner, {})
            if held is not None:
                held[service] = []
            for m in messages:
                if m.kind == KIND and self.pulls:
                    continue  # (pulled from the shared store when workers are free)
                if m.kind != KIND:
                    if held is not None:
                        held[service].append(m)
                    else:
                        log.warning("store: %s/%d has an unknown kind, left alone", service, m.n)
                    continue
                body, headers = decode_request(m.payload)
                router.restore(service, body, headers, m.n, m.deliveries, now)
                count += 1
        if count:
            log.info("store: %d stored requests back in %d services", count, len(recovered.queues))
        return count

    def take_queues(self, owner: str) -> dict[str, list[StoredMessage]]:
        """The live queues ``owner`` made (``create_queue``) with their messages of its own
        kinds, by id, as the store held them at start-up (handed out once)."""
        return self._owned.pop(owner, {})

    def bypass(self, session: Session) -> None:
        """Requests of ``session`` are not journaled by the router: its transport stores the
        message itself (with :meth:`put`) before it submits it."""
        self._bypass.add(session)

    # -- Journal ------------------------------------------------------------------------------

    def next_id(self, queue: str) -> int:
        """Take the next id of ``queue`` (shared by service requests and transport messages)."""
        n = self.counters.get(queue, 0)
        self.counters[queue] = n + 1
        return n

    def append(self, request: Request) -> None:
        if request.caller in self._bypass:
            return
        service = request.service
        n = self.next_id(service)
        request.stored = n
        self.store.append(
            StoredMessage(
                service,
                n,
                encode_request(request.body, request.headers),
                KIND,
                request.caller.label,
                time.time_ns(),
                request.deliveries,
            )
        )
        self.appended += 1
        self._schedule()

    def done(self, request: Request) -> None:
        self.store.ack(request.service, request.stored)
        self._schedule()

    def redelivered(self, request: Request) -> None:
        self.store.delivered(request.service, request.stored, request.deliveries)
        self._schedule()

    def dead(self, request: Request, reason: str) -> None:
        self.dead_letter(
            StoredMessage(
                request.service,
                request.stored,
                encode_request(request.body, request.headers),
                KIND,
                request.caller.label,
                time.time_ns(),
                request.deliveries,
            ),
            reason,
        )

    # -- a transport's own messages -------------------------------------------------------------

    def create_queue(self, name: str, owner: str) -> None:
        self.counters.setdefault(name, 0)
        self.store.create_queue(name, owner)
        self._schedule()

    def destroy_queue(self, name: str) -> None:
        self.store.destroy_queue(name)
        self._schedule()

    def put(self, message: StoredMessage) -> None:
        """Store a message of a transport's queue (its id from :meth:`next_id`)."""
        self.store.append(message)
        self.appended += 1
        self._schedule()

    def ack(self, queue: str, n: int) -> None:
        self.store.ack(queue, n)
        self._schedule()

    def delivered(self, queue: str, n: int, deliveries: int) -> None:
        self.store.delivered(queue, n, deliveries)
        self._schedule()

    def dead_letter(self, message: StoredMessage, reason: str) -> None:
        """Move a message to the one dead letter queue (counted ``dead_lettered``)."""
        log.warning("store: %s/%d goes to the dead letters: %s", message.queue, message.n, reason)
        self.dead_lettered += 1
        self.store.dead_letter(message, reason)
        self._schedule()

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The dead letters (committed ones: await :meth:`committed` first)."""
        return self.store.dead_letters(queue)

    @property
    def dirty(self) -> bool:
        """Writes wait for a commit."""
        return self.store.dirty

    # -- commits ------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._scheduled or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test driving the router by hand): commit now
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Commit what is buffered (one transaction) and wake who waits for it."""
        self._scheduled = False
        if self.store.dirty:
            try:
                self.store.flush()
            except Exception as exc:
                self.failures += 1
                log.exception("store: commit failed")
                self._fail_waiters(exc)
                return
        self._wake()

    def _wake(self) -> None:
        """Resolve the waiters whose writes are committed."""
        if self._waiters:
            self._settle(self.store.flushed, None)

    def _batch_failed(self, number: int, exc: BaseException) -> None:
        """An asynchronous store could not commit batch ``number``: its waiters (and older
        ones) get ``exc``; the store logged why."""
        self.failures += 1
        self._settle(number, exc)

    def _settle(self, upto: int, exc: BaseException | None) -> None:
        """The waiters of the batches up to ``upto`` are done (``exc`` None) or failed with
        ``exc``; the others keep waiting."""
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for needed, fut in self._waiters:
            if needed > upto:
                keep.append((needed, fut))
            elif not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)
        self._waiters = keep

    def refusal(self, size: int) -> MaitredError | None:
        """Why the store cannot take a new message of ``size`` bytes now (None: it can): too
        large for it (413), or unavailable (503). Checked before a message is accepted."""
        check = self._refusal
        return None if check is None else check(size)

    def _fail_waiters(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, []
        for _, fut in waiters:
            if not fut.done():
                fut.set_exception(exc)

    async def committed(self) -> None:
        """Return once everything journaled so far is on disk (raises if the commit failed)."""
        if not self.store.dirty:
            return
        if self._closed:
            # nothing will commit after close(): say so instead of waiting forever
            raise RuntimeError("the store is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self.store.pending, fut))
        self._schedule()
        await fut

    def close(self) -> None:
        """Commit the rest and close the store."""
        if self._closed:
            return
        self._closed = True
        try:
            self.store.close()
        except Exception as exc:
            log.exception("store: closing failed")
            self._fail_waiters(exc)
            return
        self._fail_waiters(RuntimeError("the store is closed"))

    def snapshot(self) -> dict[str, Any]:
        out = {
            "appended": self.appended,
            "commits": self.store.flushed,
            "failures": self.failures,
            "dead_lettered": self.dead_lettered,
        }
        for key in ("inserted", "deleted"):  # rows really written (SQLite store)
            value = getattr(self.store, key, None)
            if value is not None:
                out[key] = value
        extra = getattr(self.store, "snapshot", None)  # the JetStream store's own counters
        if extra is not None:
            out.update(extra())
        return out
