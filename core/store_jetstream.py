"""The durable store on NATS JetStream (``[store] backend = "jetstream"``): the same
:class:`~maitred.core.store.Store` as SQLite, kept in one replicated work-queue stream.

Nothing here imports ``nats`` at import time: the client (the ``jetstream`` extra, ``nats-py``)
is imported by :func:`open_jetstream` only, when that backend is chosen.

Layout of the stream ``S`` (``[store] jetstream_stream``, default ``MAITRED_DURABLE``), subjects
``S.>``, retention ``workqueue``, at most one message per subject (``max_msgs_per_subject = 1``):

- ``S.m.<Q>.<n>.body``: stored message ``n`` of queue (service) ``Q``: its kind, origin, time,
  delivery count and payload (msgpack). All messages of one service are ``S.m.<Q>.>``.
- ``S.m.<Q>.<n>.count``: its delivery count once it changed (the latest value only).
- ``S.d.<Q>.<n>``: a dead letter, the same with its reason (kept until an operator purges it).
- ``S.q.<Q>``: the queue's record: its next id, whether it is live, its owner (JSON).

``<Q>`` is the queue name encoded by :func:`subject_token` (base32 of its UTF-8 bytes, so any
name, dots and spaces included, is one subject token). One subject per message and at most one
message per subject make every write idempotent: writing the same message again replaces it.

Writes are buffered like the SQLite store's and committed in batches (group commit), but a
batch is asynchronous: :meth:`JetStreamStore.flush` hands it to JetStream and returns; the
journal is told when JetStream acknowledged every write of it (``PubAck``), and only then does a
caller hear "accepted". Batches complete in order; a failed batch fails its waiters, and the
store refuses new messages (:meth:`JetStreamStore.refusal`, 503) until JetStream answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from maitred.core.errors import BrokerError, ErrorCode, MaitredError
from maitred.core.jetstream_layout import (
    DEFAULT_SERVERS,
    DEFAULT_STREAM,
    OVERHEAD,
    JetStreamSettings,
    JetStreamUnavailable,
    StreamMismatch,
    message_limit,
    packed,
    settings_diff,
    settings_from,
    subject_token,
    token_name,
    wanted_config,
)
from maitred.core.jetstream_load import load_stream
from maitred.core.store import DeadLetter, Recovered, StoredMessage

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

__all__ = [
    "DEFAULT_SERVERS",
    "DEFAULT_STREAM",
    "OVERHEAD",
    "JetStreamSettings",
    "JetStreamStore",
    "JetStreamUnavailable",
    "StreamMismatch",
    "message_limit",
    "open_jetstream",
    "settings_diff",
    "settings_from",
    "subject_token",
    "token_name",
    "wanted_config",
]

log = logging.getLogger("maitred.core.store")

#: seconds the start waits at least for JetStream to answer (leader elections after a loss)
START_PATIENCE = 15.0
#: attempts to take ids of a shared queue before a batch fails (each lost to another broker)
_RESERVE_TRIES = 20


@dataclass(slots=True)
class _Acks:
    """The acknowledgements a batch waits for."""

    left: int
    done: asyncio.Future[None]


@dataclass(slots=True)
class _Queue:
    next_n: int = 0
    live: bool = True
    owner: str = ""


# -- the store ---------------------------------------------------------------------------------


class JetStreamStore:
    """A :class:`~maitred.core.store.Store` on a JetStream stream (see the module doc). Made
    by :func:`open_jetstream`, which connects, checks the stream and reads what it holds."""

    def __init__(self, nc: Client, js: JetStreamContext, settings: JetStreamSettings) -> None:
        self._nc = nc
        self._js = js
        self.settings = settings
        self.stream = settings.stream
        self.flushed = 0
        #: batches handed to JetStream so far (``flushed`` of them acknowledged)
        self.started = 0
        #: messages and records JetStream acknowledged; subjects purged (acks, dead letters)
        self.published = 0
        self.purged = 0
        #: payload limit (0: none), see :func:`message_limit`
        self.max_payload = 0
        #: subject -> what to publish (a message is packed when its batch is written)
        self._pubs: dict[str, bytes | StoredMessage] = {}
        self._tokens: dict[str, str] = {}
        self._purges: list[str] = []
        self._queues: dict[str, _Queue] = {}
        self._changed: set[str] = set()
        self._dead: list[DeadLetter] = []
        self._dead_pending: list[DeadLetter] = []
        self._recovered = Recovered()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: why new messages are refused (None: they are not)
        self.down: str | None = None
        self._probe: asyncio.Task[None] | None = None
        self._on_flushed: Callable[[], None] | None = None
        self._on_failed: Callable[[int, BaseException], None] | None = None
        #: messages whose ids are taken when their batch is written (:meth:`append_fresh`)
        self._fresh: list[tuple[StoredMessage, Callable[[int], None]]] = []
        #: batches being written, by the reply subject of their publishes
        self._acks: dict[str, _Acks] = {}
        self._acks_inbox = ""
        self._batch_seq = 0
        #: queue -> the stream sequence of its record as this store last wrote or read it
        self.record_seq: dict[str, int] = {}

    def listen(
        self, on_flushed: Callable[[], None], on_failed: Callable[[int, BaseException], None]
    ) -> None:
        """Be told when a batch was acknowledged (``flushed`` moved), or failed (its number)."""
        self._on_flushed, self._on_failed = on_flushed, on_failed

    # -- Store ------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self.started + 1 if self._buffered else self.started

    @property
    def _buffered(self) -> bool:
        return bool(self._pubs or self._purges or self._changed or self._fresh)

    @property
    def dirty(self) -> bool:
        return self._buffered or self.flushed < self.started

    def refusal(self, size: int) -> MaitredError | None:
        """Why a new message of ``size`` bytes cannot be accepted now (None: it can)."""
        if self.max_payload and size > self.max_payload:
            return MaitredError(
                f"message of {size} bytes is larger than the store's limit "
                f"({self.max_payload} bytes)",
                ErrorCode.TOO_LARGE,
            )
        if self.down is not None:
            return JetStreamUnavailable(f"the durable store is unavailable: {self.down}")
        if not self._nc.is_connected:
            return JetStreamUnavailable("the durable store is unavailable: not connected to NATS")
        return None

    def recover(self) -> Recovered:
        return self._recovered

    def _token(self, queue: str) -> str:
        token = self._tokens.get(queue)
        if token is None:
            if len(self._tokens) > 100_000:
                self._tokens.clear()
            token = self._tokens[queue] = subject_token(queue)
        return token

    def _subject(self, kind: str, queue: str, *rest: object) -> str:
        return ".".join([self.stream, kind, self._token(queue), *map(str, rest)])

    def queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    def _touch(self, name: str) -> _Queue:
        self._changed.add(name)
        return self.queue(name)

    def create_queue(self, name: str, owner: str = "") -> None:
        q = self._touch(name)
        q.live, q.owner = True, owner

    def destroy_queue(self, name: str) -> None:
        prefix = self._subject("m", name) + "."
        self._pubs = {s: v for s, v in self._pubs.items() if not s.startswith(prefix)}
        self._purges.append(prefix + ">")
        q = self._touch(name)
        q.live, q.owner = False, ""

    def append(self, message: StoredMessage) -> None:
        m = message
        subject = self._subject("m", m.queue, m.n, "body")
        self._pubs[subject] = m
        q = self._queues.get(m.queue)
        if q is None or m.n + 1 > q.next_n:
            self._touch(m.queue).next_n = m.n + 1

    def append_fresh(self, message: StoredMessage, numbered: Callable[[int], None]) -> None:
        """Add a message of a queue that several brokers share: its id is taken when its batch
        is written (the next ids by a compare-and-set of the queue's record, so two brokers
        never take the same one), then ``numbered(id)`` is called, before it is published."""
        self._fresh.append((message, numbered))

    def ack(self, queue: str, n: int) -> None:
        body = self._subject("m", queue, n, "body")
        self._pubs.pop(self._subject("m", queue, n, "count"), None)
        if self._pubs.pop(body, None) is None:
            self._purges.append(self._subject("m", queue, n, "*"))

    def delivered(self, queue: str, n: int, deliveries: int) -> None:
        subject = self._subject("m", queue, n, "body")
        body = self._pubs.get(subject)
        if isinstance(body, StoredMessage):
            body.deliveries = deliveries
            return
        self._pubs[self._subject("m", queue, n, "count")] = str(deliveries).encode()

    def dead_letter(self, message: StoredMessage, reason: str) -> None:
        m = message
        subject = self._subject("d", m.queue, m.n)
        self._pubs[subject] = packed(m, reason)
        self._dead_pending.append(DeadLetter(m, reason))
        self.ack(m.queue, m.n)

    def raise_counter(self, queue: str, next_n: int) -> None:
        """Make the id counter of ``queue`` at least ``next_n`` (a queue not known yet is kept
        as a dead one: its counter only), for ``maitred store migrate``."""
        q = self._queues.get(queue)
        if q is None:
            q = self._queues[queue] = _Queue(live=False)
        if next_n > q.next_n:
            q.next_n = next_n
            self._changed.add(queue)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        out = [d for d in self._dead if queue is None or d.message.queue == queue]
        return sorted(out, key=lambda d: (d.message.queue, d.message.n))

    def flush(self) -> int:
        """Hand what is buffered to JetStream as the next batch (at once when none is in
        flight, else when the one in flight is acknowledged); returns ``flushed``."""
        if self._task is None and self._buffered:
            self._start()
        return self.flushed

    def _start(self) -> None:
        pubs, self._pubs = self._pubs, {}
        purges, self._purges = self._purges, []
        changed, self._changed = self._changed, set()
        dead, self._dead_pending = self._dead_pending, []
        fresh, self._fresh = self._fresh, []
        for name in changed:
            q = self._queues[name]
            record = {"next": q.next_n, "live": q.live, "owner": q.owner}
            pubs[self._subject("q", name)] = json.dumps(record).encode()
        self.started += 1
        self._task = asyncio.get_running_loop().create_task(
            self._commit(self.started, pubs, purges, dead, fresh)
        )

    async def _commit(
        self,
        number: int,
        pubs: dict[str, bytes | StoredMessage],
        purges: list[str],
        dead: list[DeadLetter],
        fresh: list[tuple[StoredMessage, Callable[[int], None]]],
    ) -> None:
        try:
            await asyncio.wait_for(self._write(pubs, purges, fresh), self.settings.timeout)
        except Exception as exc:  # JetStream down, no quorum, the stream gone, a timeout
            error = self._failed(exc)
            self.flushed = number
            self._task = None
            if self._on_failed is not None:
                self._on_failed(number, error)
        else:
            self.published += len(pubs)
            self.purged += len(purges)
            self._dead.extend(dead)
            self.flushed = number
            self._task = None
            if self.down is not None and self._probe is None:
                log.warning("store: JetStream answers again (stream %s)", self.stream)
                self.down = None
        if self._on_flushed is not None:
            self._on_flushed()
        if self._buffered and not self._closed:
            self._start()

    async def _write(
        self,
        pubs: dict[str, bytes | StoredMessage],
        purges: list[str],
        fresh: list[tuple[StoredMessage, Callable[[int], None]]],
    ) -> None:
        """Purges first (every publish still buffered after a purge of its subject was made
        after it), the ids of fresh messages, then every publish with its acknowledgement
        outstanding at once."""
        api = f"$JS.API.STREAM.PURGE.{self.stream}"
        replies = await asyncio.gather(
            *(self._nc.request(api, json.dumps({"filter": f}).encode()) for f in purges)
        )
        for reply in replies:
            answer = json.loads(reply.data)
            if "error" in answer:
                raise JetStreamUnavailable(f"purge refused: {answer['error'].get('description')}")
        if fresh:
            queues: dict[str, list[tuple[StoredMessage, Callable[[int], None]]]] = {}
            for item in fresh:
                queues.setdefault(item[0].queue, []).append(item)
            await asyncio.gather(*(self._number(q, items, pubs) for q, items in queues.items()))
        if not pubs:
            return
        # every publish of the batch with one reply subject: the batch is stored once that
        # many acknowledgements came back without an error (no future, no parsed PubAck each)
        if self._acks_inbox == "":
            self._acks_inbox = self._nc.new_inbox()
            await self._nc.subscribe(f"{self._acks_inbox}.*", cb=self._on_ack)
        self._batch_seq += 1
        inbox = f"{self._acks_inbox}.{self._batch_seq}"
        acks = self._acks[inbox] = _Acks(len(pubs), asyncio.get_running_loop().create_future())
        try:
            publish = self._nc.publish
            for subject, data in pubs.items():
                await publish(
                    subject, data if isinstance(data, bytes) else packed(data), reply=inbox
                )
            await acks.done
        finally:
            del self._acks[inbox]

    async def _on_ack(self, msg: Msg) -> None:
        """A ``PubAck`` (or an error, or "no stream": a 503 status) of a batch's publish."""
        acks = self._acks.get(msg.subject)
        if acks is None or acks.done.done():
            return
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None or b'"error"' in msg.data:
            from nats.js.errors import APIError, NoStreamResponseError

            if status == "503":
                acks.done.set_exception(NoStreamResponseError())
            else:
                error = json.loads(msg.data).get("error", {}) if msg.data else {}
                acks.done.set_exception(APIError.from_error(error or {"description": status}))
            return
        acks.left -= 1
        if acks.left == 0:
            acks.done.set_result(None)

    async def _number(
        self,
        queue: str,
        items: list[tuple[StoredMessage, Callable[[int], None]]],
        pubs: dict[str, bytes | StoredMessage],
    ) -> None:
        """Take ``len(items)`` ids of ``queue``: write its record with the next id past them,
        on condition that the record is still the one this store knows (another broker that
        took ids first makes it read the record again and try again)."""
        from nats.js.errors import APIError, NotFoundError

        q, subject = self.queue(queue), self._subject("q", queue)
        for _ in range(_RESERVE_TRIES):
            first = q.next_n
            record = json.dumps({"next": first + len(items), "live": True, "owner": ""})
            expected = {"Nats-Expected-Last-Subject-Sequence": str(self.record_seq.get(queue, 0))}
            try:
                ack = await self._js.publish(subject, record.encode(), headers=expected)
            except APIError as exc:
                if exc.err_code != 10071:  # (wrong last sequence: another broker took ids)
                    raise
                try:
                    last = await self._js.get_last_msg(self.stream, subject)
                    self.record_seq[queue] = last.seq or 0
                    q.next_n = max(q.next_n, int(json.loads(last.data or b"{}")["next"]))
                except NotFoundError:
                    self.record_seq[queue] = 0
                continue
            self.record_seq[queue] = ack.seq
            q.next_n = max(q.next_n, first + len(items))
            for n, (m, numbered) in enumerate(items, first):
                m.n = n
                numbered(n)
                body = self._subject("m", queue, n, "body")
                pubs[body] = m
            return
        raise JetStreamUnavailable(f"could not take ids of {queue!r}: other brokers kept taking")

    def _failed(self, exc: BaseException) -> JetStreamUnavailable:
        """Log a failed batch once per episode and refuse new messages until a probe of the
        stream succeeds."""
        from nats.js.errors import NoStreamResponseError, NotFoundError

        if isinstance(exc, (NoStreamResponseError, NotFoundError)):
            why = f"no answer from the stream {self.stream} (deleted, or JetStream without quorum)"
        elif isinstance(exc, TimeoutError):
            why = f"JetStream did not acknowledge within {self.settings.timeout}s"
        else:
            why = str(exc) or type(exc).__name__
        if self.down is None:
            log.warning("store: a batch was not stored: %s; new durable messages are refused", why)
        self.down = why
        if self._probe is None and not self._closed:
            self._probe = asyncio.get_running_loop().create_task(self._wait_back())
        return JetStreamUnavailable(f"the durable store is unavailable: {why}")

    async def _wait_back(self) -> None:
        """Ask for the stream every half second until it answers with the settings it needs."""
        from nats.js.errors import NotFoundError

        warned = False
        try:
            while not self._closed:
                await asyncio.sleep(0.5)
                try:
                    info = await self._js.stream_info(self.stream)
                except NotFoundError:
                    if not warned:
                        log.warning(
                            "store: the stream %s was deleted; durable messages are refused "
                            "until it is made again",
                            self.stream,
                        )
                        warned = True
                    continue
                except Exception:
                    continue
                problems = settings_diff(
                    wanted_config(self.stream, self.settings.replicas), info.config.as_dict()
                )
                if not problems:
                    log.warning("store: JetStream answers again (stream %s)", self.stream)
                    self.down = None
                    return
        finally:
            self._probe = None

    async def drain(self) -> None:
        """Commit what is buffered, wait for the batches in flight, and close the connection."""
        if self._buffered and self._task is None and not self._closed:
            self._start()
        while self._task is not None:
            await asyncio.shield(self._task)
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
        try:
            await self._nc.close()
        except Exception:
            log.warning("store: closing the NATS connection failed", exc_info=True)

    def close(self) -> None:
        """Stop starting batches (the runtime awaits :meth:`drain` first, which closes the
        connection; without it, the connection is closed in the background)."""
        if self._probe is not None:
            self._probe.cancel()
        if not self._closed and not self._nc.is_closed:
            try:
                asyncio.get_running_loop().create_task(self._nc.close())
            except RuntimeError:
                pass
        self._closed = True

    def snapshot(self) -> dict[str, int]:
        """Counters for ``mmi.info`` and ``/metrics`` (numbers only: they are exported as
        counters): messages and records JetStream acknowledged, subjects purged."""
        return {"published": self.published, "purged": self.purged}

    # -- start-up ---------------------------------------------------------------------------

    async def _check_stream(self) -> None:
        """Make the stream, or check the one there: other settings are refused, named."""
        from nats.js.api import StreamConfig
        from nats.js.errors import NotFoundError

        wanted = wanted_config(self.stream, self.settings.replicas)
        try:
            info = await self._js.stream_info(self.stream)
        except NotFoundError:
            info = await self._js.add_stream(
                StreamConfig.from_response({"name": self.stream, **wanted})
            )
            log.info(
                "store: made the JetStream stream %s (R%d)", self.stream, self.settings.replicas
            )
        problems = settings_diff(wanted, info.config.as_dict())
        if problems:
            raise StreamMismatch(
                f"the JetStream stream {self.stream} has other settings: " + "; ".join(problems)
            )
        self.max_payload = message_limit(info.config.max_msg_size, self._nc.max_payload)

    async def _load(self) -> None:
        """Read everything the stream holds into what :meth:`recover` returns."""
        await load_stream(self)


def _jetstream_error(exc: BaseException) -> str:
    return getattr(exc, "description", None) or str(exc) or type(exc).__name__


async def open_jetstream(settings: JetStreamSettings) -> JetStreamStore:
    """Connect, make or check the stream, read what it holds. Raises :class:`BrokerError`
    with the reason when NATS or JetStream cannot be reached or the stream does not fit."""
    try:
        import nats
    except ImportError:
        raise BrokerError(
            'store backend "jetstream" needs nats-py: pip install "maitred[jetstream]"'
        ) from None
    from nats.errors import Error as NatsError

    async def error(exc: Exception) -> None:  # every failed attempt: the callbacks below say
        log.debug("store: NATS: %s", exc)

    async def disconnected() -> None:
        if not nc.is_closed:  # (not when the broker closes it)
            log.warning("store: the connection to NATS is lost; reconnecting")

    async def reconnected() -> None:
        log.warning("store: connected to NATS again")

    try:
        nc = await nats.connect(
            list(settings.servers),
            connect_timeout=settings.timeout,
            allow_reconnect=True,
            max_reconnect_attempts=1,  # at start: fail soon
            reconnect_time_wait=0.5,
            name="maitred-store",
            error_cb=error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )
        nc.options["max_reconnect_attempts"] = -1  # once up: reconnect for ever
    except (NatsError, OSError, TimeoutError) as exc:
        raise BrokerError(
            f"store: cannot reach NATS at {', '.join(settings.servers)}: {_jetstream_error(exc)}"
        ) from None
    store = JetStreamStore(nc, nc.jetstream(timeout=settings.timeout), settings)
    # a cluster that just lost a server elects new leaders first: ask again for a while
    deadline = time.monotonic() + max(3 * settings.timeout, START_PATIENCE)
    while True:
        try:
            await store._check_stream()
            await store._load()
            break
        except StreamMismatch:
            await nc.close()
            raise
        except (NatsError, OSError, TimeoutError) as exc:
            if time.monotonic() < deadline and not isinstance(exc, StreamMismatch):
                log.info("store: JetStream not ready (%s); asking again", _jetstream_error(exc))
                store = JetStreamStore(nc, nc.jetstream(timeout=settings.timeout), settings)
                await asyncio.sleep(0.5)
                continue
            await nc.close()
            raise BrokerError(
                f"store: JetStream stream {settings.stream}: {_jetstream_error(exc)}"
            ) from None
    recovered = store.recover()
    log.info(
        "store: JetStream stream %s (R%d): %d messages in %d queues, %d dead letters",
        settings.stream,
        settings.replicas,
        sum(map(len, recovered.queues.values())),
        len(recovered.queues),
        len(recovered.dead),
    )
    return store
