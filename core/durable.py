"""Durable services: the journal of services with ``on_no_worker = "store"``, over a
:class:`~maitred.core.store.Store` (``[broker] store``, SQLite by default).

The router tells the journal when such a request is accepted (``append``), answered by a worker
(``done``), handed back after its worker died (``redelivered``) or given up (``dead``). Writes are
buffered and committed once per event-loop turn (group commit, like the switch's queues), so a
burst of requests costs one transaction; a request appended and answered within one turn is never
written at all. A transport that must tell its caller "accepted" only once the request is on disk
awaits :meth:`StoreJournal.committed`.

At start-up :meth:`StoreJournal.recover` puts every stored request back into its service's queue
(``Router.restore``): none is lost across a crash, and one that a worker was serving when the
broker died is delivered again (at least once). Ids are per-service counters that never repeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from maitred.core.routing.model import Body, Headers, Request
from maitred.core.routing.router import Router
from maitred.core.store import Store, StoredMessage

log = logging.getLogger("maitred.core.durable")

#: the ``kind`` of the stored messages (the switch stores its own kinds in its own store)
KIND = b"maitred.request/1"


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

    def __init__(self, store: Store) -> None:
        self.store = store
        #: per service: the next id
        self.counters: dict[str, int] = {}
        self._scheduled = False
        self._closed = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.appended = 0
        self.failures = 0

    # -- start-up -------------------------------------------------------------------------

    def recover(self, router: Router, now: float) -> int:
        """Queue every stored request again; returns how many there were."""
        recovered = self.store.recover()
        self.counters.update(recovered.counters)
        count = 0
        for service, messages in recovered.queues.items():
            for m in messages:
                if m.kind != KIND:
                    log.warning("store: %s/%d has an unknown kind, left alone", service, m.n)
                    continue
                body, headers = decode_request(m.payload)
                router.restore(service, body, headers, m.n, m.deliveries, now)
                count += 1
        if count:
            log.info(
                "store: %d stored requests back in %d services", count, len(recovered.queues)
            )
        return count

    # -- Journal ------------------------------------------------------------------------------

    def append(self, request: Request) -> None:
        service = request.service
        n = self.counters.get(service, 0)
        self.counters[service] = n + 1
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
        log.warning(
            "store: %s/%d goes to the dead letters: %s", request.service, request.stored, reason
        )
        self.store.dead_letter(
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
        self._schedule()

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
        if self._waiters:
            done = self.store.flushed
            keep: list[tuple[int, asyncio.Future[None]]] = []
            for needed, fut in self._waiters:
                if needed <= done:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((needed, fut))
            self._waiters = keep

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
        out = {"appended": self.appended, "commits": self.store.flushed, "failures": self.failures}
        for key in ("inserted", "deleted"):  # rows really written (SQLite store)
            value = getattr(self.store, key, None)
            if value is not None:
                out[key] = value
        return out
