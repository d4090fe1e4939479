"""The xapi message-switch protocol (Gen 3) on the HTTP transport, with queues as services.

A login token is a switch session (several connections may share it; it lives while any is
open) and one router session. Transferring on a *persistent* queue ``foo`` makes the token a
worker of service ``foo`` (``switch_credit`` requests at a time). A ``Request`` sent into a
persistent queue is stored (committed before its id is returned) and submitted to the router by
the transport's quiet queue session, so MDP, REST or WebSocket workers of ``foo`` may answer it
too; the reply becomes a ``Response`` in the sender's reply queue. A request from any other
protocol dispatched to a switch worker becomes a (volatile) message in the queue. Each message is
leased to one token until it is acked; a token that goes away gives its leases back.
Plain messages (responses, anything in a transient queue) are handed out by Transfer directly.

Access (docs/reference/access.md, "What each switch operation needs"): every operation is an
action of the one ``[access]`` policy, asked for the token's identity (the transport's identity
for requests made before a login). Sending is ``call`` on the queue, transferring ``serve``
(a transient queue is read by the token that made it only), creating a queue ``call`` or
``serve`` on its name; reading diagnostics, the trace and listings is ``observe``, destroying a
queue and removing a message one does not hold is ``manage``. A message leased to one token is
acked, answered and read by that token only, whatever the policy. A refusal raises
:class:`Refused`, is counted as ``denied.<action>`` and published on ``$sys.auth.denied``.

Limits: a queue that is a service (every persistent queue) holds at most the service's
``max_queue`` messages; other queues ``switch_max_queue``; every queue at most
``switch_max_queue_bytes`` of payload; a token makes at most ``switch_max_queues_per_token``
queues and the switch holds at most ``switch_max_queues``. Diagnostics list at most
``diagnostics_messages`` messages per queue with a payload preview, and yield to the event loop
while they are built.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from itertools import islice
from typing import Any, NoReturn

from maitred.core.access import Action, Identity, decide, is_open
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import (
    Body,
    Headers,
    ReplyKind,
    Request,
    RequestState,
    Session,
    Worker,
)
from maitred.core.store import Store, StoredMessage
from maitred.core.transport import BrokerPort
from maitred.transports.http import codec
from maitred.transports.http.codec import Kind

log = logging.getLogger("maitred.transports.http.switch")

_ACKED = "acknowledged without a response"

#: the names the switch's read-only views and shutdown are asked about (docs/reference/access.md)
DIAGNOSTICS = "$switch.diagnostics"
TRACE = "$switch.trace"
LIST = "$switch.list"
DEAD_LETTERS = "$switch.dead-letters"
SHUTDOWN = "$sys.shutdown"

FORBIDDEN = 403
TOO_MANY = 429

#: seconds a diagnostics build may hold the event loop before it yields
_SLICE = 0.002


class Refused(Exception):
    """A switch operation refused by the access policy, a lease or a limit (already counted):
    answered with ``status`` and the switch's plain-text error form."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Msg:
    """A message in a switch queue."""

    __slots__ = (
        "deliveries",
        "kind",
        "lease",
        "n",
        "origin",
        "parked",
        "payload",
        "queue",
        "redelivered",
        "request",
        "shown",
        "stored",
        "time_ns",
        "volatile",
    )

    def __init__(
        self, queue: str, n: int, payload: bytes, kind: Kind, origin: str, time_ns: int
    ) -> None:
        self.queue = queue
        self.n = n
        self.payload = payload
        self.kind = kind
        self.origin = origin
        self.time_ns = time_ns
        self.lease: str | None = None  # the token holding it
        self.shown = False  # returned by a Transfer to its lessee
        self.redelivered = False  # came back from a lease: visible whatever the cursor
        self.request: Request | None = None  # the router request carrying it
        self.stored = False
        self.volatile = False  # made for a caller of another protocol (not stored)
        self.parked = False  # the router refused it (queue full): resubmitted when room is made
        self.deliveries = 0


class Queue:
    __slots__ = (
        "creator",
        "expected_ns",
        "leased",
        "messages",
        "name",
        "nbytes",
        "open",
        "owner",
        "parked",
        "persistent",
        "waiters",
    )

    def __init__(
        self, name: str, persistent: bool, owner: str | None, creator: str | None = None
    ) -> None:
        self.name = name
        self.persistent = persistent
        #: the token a transient queue belongs to (None: persistent)
        self.owner = owner
        #: the token that made it (counted against its ``switch_max_queues_per_token``)
        self.creator = creator
        #: payload bytes of its messages
        self.nbytes = 0
        #: its messages leased to a token (the others wait: they count against its limit)
        self.leased = 0
        self.messages: dict[int, Msg] = {}
        #: the messages a Transfer looks at: a superset of those not waiting in the router
        #: (plain messages, and routed ones while leased), cleaned lazily by ``_eligible`` — so
        #: a Transfer costs O(leased + plain), not O(queue length)
        self.open: dict[int, Msg] = {}
        #: requests the router refused (its queue for the service was full), oldest first:
        #: submitted again as the router's queue drains (``Switch._unpark``)
        self.parked: deque[Msg] = deque()
        self.expected_ns: int | None = None
        self.waiters: set[asyncio.Future[None]] = set()


#: see ``Switch.trace``
_TraceRecord = tuple[
    int, float, str, int, "tuple[bytes, Kind] | None", str | None, str | None, int | None
]


#: seconds without a trace reader after which requests of other protocols stop being traced
ROUTER_TRACE_IDLE = 60.0


class _RouterMsg:
    """What the trace keeps of a request that did not cross the switch (payload and kind)."""

    __slots__ = ("kind", "payload")

    def __init__(self, payload: bytes, kind: Kind) -> None:
        self.payload = payload
        self.kind = kind


def _by_id(m: Msg) -> int:
    return m.n


class Token:
    """A login token: the switch session."""

    __slots__ = ("connections", "name", "session", "sink", "transient", "workers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.session: Session | None = None
        self.sink: TokenSink | None = None
        self.workers: dict[str, Worker] = {}
        self.transient: set[str] = set()


class TokenSink:
    """The router's view of a token: its workers get requests as queue messages."""

    def __init__(self, switch: Switch, token: Token) -> None:
        self.switch = switch
        self.token = token

    def deliver_request(self, worker: Worker, request: Request) -> None:
        self.switch.on_dispatch(self.token, worker, request)

    def deliver_reply(self, request: Request, kind: ReplyKind, body: Body) -> None:
        return None

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        return None

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        return None

    def worker_removed(self, worker: Worker, reason: str) -> None:
        if self.token.workers.get(worker.service.name) is worker:
            del self.token.workers[worker.service.name]


class QueueSink:
    """The sink of the quiet session that submits stored requests on behalf of senders."""

    def __init__(self, switch: Switch) -> None:
        self.switch = switch

    def deliver_request(self, worker: Worker, request: Request) -> None:
        return None

    def deliver_reply(self, request: Request, kind: ReplyKind, body: Body) -> None:
        if kind is ReplyKind.FINAL:
            self.switch.on_reply(request, body)

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        self.switch.on_error(request, error)

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        return None

    def worker_removed(self, worker: Worker, reason: str) -> None:
        return None


class Switch:
    """Queues, tokens, leases and the trace of one HTTP transport."""

    def __init__(
        self,
        port: BrokerPort,
        store: Store,
        *,
        identity: Identity,
        credit: int,
        max_deliveries: int,
        trace_size: int,
        shutdown_tokens: list[str],
        shutdown_secret: bytes | None = None,
        max_queue: int = 10_000,
        max_queue_bytes: int = 64 << 20,
        max_queues: int = 10_000,
        max_queues_per_token: int = 1000,
        diagnostics_messages: int = 100,
    ) -> None:
        self.port = port
        self.router = port.router
        self.store = store
        self.identity = identity
        self.credit = credit
        self.max_deliveries = max_deliveries
        self.shutdown_tokens = shutdown_tokens
        self.shutdown_secret = shutdown_secret
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_queues = max_queues
        self.max_queues_per_token = max_queues_per_token
        self.diagnostics_messages = diagnostics_messages
        #: queues made by each token name (persistent ones outlive the token)
        self.created: Counter[str] = Counter()
        self.queues: dict[str, Queue] = {}
        self.tokens: dict[str, Token] = {}
        self.conns: dict[object, Token] = {}
        self.counters: dict[str, int] = {}
        self.start = port.clock()
        #: (event id, unix time, queue, id, message or None for an Ack, input, output,
        #: processing time): JSON is made only when someone reads the trace
        self.trace: deque[_TraceRecord] = deque(maxlen=trace_size)
        self.trace_next = 0
        self.trace_waiters: set[asyncio.Future[None]] = set()
        self.qsession: Session | None = None
        self.last_append: tuple[str, int] | None = None
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._retry: list[Msg] = []
        self.stats = port.stats
        self.closing = False
        #: when a trace reader last asked (loop time); requests of other protocols are traced
        #: while readers come back within ``ROUTER_TRACE_IDLE`` seconds (``_router_trace``)
        self._trace_read_at = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Open the queue session and bring back the persistent queues from the store."""
        now = self.port.clock()
        self.qsession = self.router.open_session(
            "http", QueueSink(self), self.identity, now, label="switch:queues", quiet=True
        )
        recovered = self.store.recover()
        self.counters.update(recovered.counters)
        for name, messages in recovered.queues.items():
            q = self.queues[name] = Queue(name, True, None)
            for s in messages:
                m = Msg(name, s.n, s.payload, codec.decode_kind(s.kind), s.origin, 0)
                m.stored = True
                m.deliveries = s.deliveries
                m.redelivered = s.deliveries > 0
                q.messages[s.n] = m
                q.nbytes += len(m.payload)
                if self._routed(q, m):
                    self._submit(m, now)
                else:
                    q.open[s.n] = m
        if recovered.queues:
            log.info(
                "switch: recovered %d queues, %d messages",
                len(recovered.queues),
                sum(len(v) for v in recovered.queues.values()),
            )

    def close(self) -> None:
        self.closing = True
        now = self.port.clock()
        for q in self.queues.values():
            self._wake(q)
        for fut in self.trace_waiters:
            if not fut.done():
                fut.set_result(None)
        for token in list(self.tokens.values()):
            self._close_token(token, now)
        if self._router_trace in self.router.tracers:
            self.router.tracers.remove(self._router_trace)
        if self.qsession is not None:
            self.router.close_session(self.qsession, now, "closing")
        if self.store.dirty:
            self.store.flush()
        for fut in self._flush_waiters:
            if not fut.done():
                fut.set_result(None)
        self.store.close()

    # -- time -------------------------------------------------------------------------------

    def now_ns(self) -> int:
        return int((self.port.clock() - self.start) * 1e9)

    # -- durability (group commit) ------------------------------------------------------------

    def committed(self) -> asyncio.Future[None]:
        """A future done when everything written so far is durable (one flush per loop turn)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not self.store.dirty or self.closing:
            fut.set_result(None)
            return fut
        self._flush_waiters.append(fut)
        self._schedule_flush()
        return fut

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closing:
            return  # close() flushed and answered every waiter
        waiters, self._flush_waiters = self._flush_waiters, []
        self.stats["http.switch.commits"] += 1
        try:
            self.store.flush()
        except Exception as exc:
            log.exception("store flush failed")
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- tokens and connections ---------------------------------------------------------------

    def login(self, conn: object, name: str) -> None:
        old = self.conns.get(conn)
        if old is not None:
            if old.name == name:
                return
            self.connection_closed(conn)
        token = self.tokens.get(name)
        if token is None:
            token = self.tokens[name] = Token(name)
            identity = self.port.authenticate("http", {"token": name}, self.identity)
            sink = token.sink = TokenSink(self, token)
            token.session = self.router.open_session(
                "http", sink, identity or self.identity, self.port.clock(), label=f"switch:{name}"
            )
        token.connections += 1
        self.conns[conn] = token

    def token_of(self, conn: object) -> Token | None:
        return self.conns.get(conn)

    def connection_closed(self, conn: object) -> None:
        token = self.conns.pop(conn, None)
        if token is None:
            return
        token.connections -= 1
        if token.connections <= 0:
            self._close_token(token, self.port.clock())
            if self.store.dirty and not self.closing:
                self._schedule_flush()  # delivery counts, dead letters: nobody waits for them

    def _close_token(self, token: Token, now: float) -> None:
        if self.tokens.get(token.name) is token:
            del self.tokens[token.name]
        for conn in [c for c, t in self.conns.items() if t is token]:
            del self.conns[conn]
        released: list[Msg] = []
        for q in list(self.queues.values()):
            for m in list(q.messages.values()):
                if m.lease != token.name:
                    continue
                if m.volatile:
                    self._lease(m, None)
                    self._remove(q, m)  # the router fails or redelivers its request
                    continue
                released.append(m)
        if token.session is not None:
            # its workers leave: stored requests they held come back through on_error (which
            # must still see them leased to this token: their delivery is already counted)
            self.router.close_session(token.session, now, "logged out")
        token.workers.clear()
        for m in released:
            if m.lease == token.name:
                self._lease(m, None)
                m.shown = False
        for name in list(token.transient):
            self._destroy(name, now)
        for m in released:
            if m.request is not None and m.request.state is RequestState.DISPATCHED:
                continue  # still with the router (redelivered there)
            if m.request is not None and m.request.state is RequestState.QUEUED:
                continue
            m.request = None
            self._give_back(m, now, "its consumer went away")

    def _give_back(self, m: Msg, now: float, reason: str) -> None:
        """A message returns to its queue after a lease ended without an ack."""
        q = self.queues.get(m.queue)
        if q is None or q.messages.get(m.n) is not m:
            return
        self._lease(m, None)
        m.shown = False
        if m.deliveries >= self.max_deliveries:
            self._dead_letter(q, m, f"{reason}; delivered {m.deliveries} times without an ack")
            return
        if m.stored:
            # the count of failed deliveries survives a restart; a delivery cut short by a
            # broker crash is not counted (the consumer did not fail it), and the happy path
            # (deliver, ack) writes no UPDATE
            self.store.delivered(m.queue, m.n, m.deliveries)
        m.redelivered = True
        if self._routed(q, m):
            self._submit(m, now)
        self._wake(q)

    def _dead_letter(self, q: Queue, m: Msg, reason: str) -> None:
        self._remove(q, m)
        self.stats["http.switch.dead_letters"] += 1
        log.warning("switch: %s/%d dead-lettered: %s", m.queue, m.n, reason)
        self.store.dead_letter(
            StoredMessage(
                m.queue,
                m.n,
                m.payload,
                codec.encode_kind(m.kind),
                m.origin,
                m.time_ns,
                m.deliveries,
            ),
            reason,
        )

    # -- access -----------------------------------------------------------------------------

    def session_of(self, token: Token | None) -> Session:
        """The router session a request is asked about: its token's, or before a login the
        transport's own (its identity)."""
        if token is not None and token.session is not None:
            return token.session
        assert self.qsession is not None
        return self.qsession

    def permits(self, session: Session, action: Action, name: str) -> bool:
        """The policy's answer without counting a denial (for filtering what a view shows)."""
        router = self.router
        if is_open(router.access) and not session.identity.restricted:
            return True
        return decide(router.access, router.grants, session.identity, action, name)

    def check(self, session: Session, action: Action, name: str) -> None:
        """Raise :class:`Refused` (counted and published by the router) unless allowed."""
        if not self.router.allowed(session, action, name):
            raise Refused(FORBIDDEN, f"{session.identity.name} may not {action.value} {name}")

    def refuse(self, session: Session, action: Action, name: str, reason: str) -> NoReturn:
        """A refusal the switch decides itself (a lease, a missing secret): counted as
        ``denied.<action>`` and published like the policy's own."""
        self.router.report_denied(session, action, name)
        raise Refused(FORBIDDEN, reason)

    def _full(self, what: str, reason: str) -> NoReturn:
        self.stats[f"http.switch.refused.{what}"] += 1
        log.info("switch: refused: %s", reason)
        raise Refused(TOO_MANY, reason)

    # -- queues -----------------------------------------------------------------------------

    @staticmethod
    def _routed(q: Queue, m: Msg) -> bool:
        """Requests in persistent queues go through the router (any protocol may serve them)."""
        return q.persistent and m.kind[0] == "Request" and not m.volatile

    def limits(self, q: Queue) -> tuple[int, int]:
        """(messages waiting, as for the router, not counting those leased to a token; payload
        bytes of all its messages) ``q`` may hold: a persistent queue is a service and has its
        policy's ``max_queue`` (and ``max_queue_bytes`` where the policy has one); otherwise,
        and where the service says 0, the switch's own limits."""
        if not q.persistent:
            return self.max_queue, self.max_queue_bytes
        policy = self.router.service(q.name).policy
        count = policy.max_queue or self.max_queue
        size = int(getattr(policy, "max_queue_bytes", 0) or 0) or self.max_queue_bytes
        return count, size

    def _room(self, q: Queue, size: int) -> str | None:
        """Why ``q`` cannot take a message of ``size`` bytes, or None."""
        count, limit = self.limits(q)
        if len(q.messages) - q.leased >= count:
            return f"queue {q.name} is full ({count} messages waiting)"
        if q.nbytes + size > limit:
            return f"queue {q.name} is full ({limit} bytes)"
        return None

    def create(self, token: Token, name: str, persistent: bool) -> None:
        session = self.session_of(token)
        if not (
            self.permits(session, Action.CALL, name) or self.permits(session, Action.SERVE, name)
        ):
            self.refuse(
                session,
                Action.CALL,
                name,
                f"{session.identity.name} may neither call nor serve {name}",
            )
        if name in self.queues:
            return
        if len(self.queues) >= self.max_queues:
            self._full("queues", f"the switch holds {self.max_queues} queues")
        if self.created[token.name] >= self.max_queues_per_token:
            self._full(
                "queues", f"token {token.name} made {self.max_queues_per_token} queues already"
            )
        self.queues[name] = Queue(
            name, persistent, None if persistent else token.name, creator=token.name
        )
        self.created[token.name] += 1
        if persistent:
            self.store.create_queue(name)
            self.counters.setdefault(name, 0)
        else:
            token.transient.add(name)

    def destroy(self, token: Token, name: str) -> None:
        self.check(self.session_of(token), Action.MANAGE, name)
        self._destroy(name, self.port.clock())

    def _destroy(self, name: str, now: float) -> None:
        q = self.queues.pop(name, None)
        if q is None:
            return
        if q.creator is not None:
            self.created[q.creator] -= 1
            if self.created[q.creator] <= 0:
                del self.created[q.creator]
        if q.owner is not None:
            owner = self.tokens.get(q.owner)
            if owner is not None:
                owner.transient.discard(name)
        for m in q.messages.values():
            req = m.request
            if req is not None and req.caller is self.qsession and req.state is RequestState.QUEUED:
                self.router.cancel(req, now)
        q.messages.clear()
        q.nbytes = 0
        q.leased = 0
        q.open.clear()
        q.parked.clear()
        if q.persistent:
            self.store.destroy_queue(name)
        for token in list(self.tokens.values()):
            worker = token.workers.pop(name, None)
            if worker is not None:
                self.router.remove_worker(worker, now, "queue destroyed")
        self._wake(q)

    def _next_id(self, name: str) -> int:
        n = self.counters.get(name, 0)
        self.counters[name] = n + 1
        return n

    def _remove(self, q: Queue, m: Msg) -> None:
        """Take ``m`` out of ``q`` (acked, answered, dead-lettered, or gone with its caller)."""
        if q.messages.pop(m.n, None) is m:
            q.nbytes -= len(m.payload)
            if m.lease is not None:
                q.leased -= 1
        q.open.pop(m.n, None)

    def _lease(self, m: Msg, holder: str | None) -> None:
        """Give ``m`` to token ``holder`` (None: back to its queue), keeping ``Queue.leased``
        (the leased messages still in the queue) exact."""
        if (m.lease is None) != (holder is None):
            q = self.queues.get(m.queue)
            if q is not None and q.messages.get(m.n) is m:
                q.leased += 1 if holder is not None else -1
        m.lease = holder

    def _append(
        self, q: Queue, payload: bytes, kind: Kind, origin: str, *, volatile: bool = False
    ) -> Msg:
        m = Msg(q.name, self._next_id(q.name), payload, kind, origin, self.now_ns())
        m.volatile = volatile
        q.messages[m.n] = m
        q.nbytes += len(payload)
        if not (q.persistent and kind[0] == "Request" and not volatile):
            q.open[m.n] = m  # not routed: Transfer hands it out directly
        if q.persistent and not volatile:
            m.stored = True
            self.store.append(
                StoredMessage(q.name, m.n, payload, codec.encode_kind(kind), origin, m.time_ns, 0)
            )
        self._trace(q.name, m.n, m, input=origin)
        return m

    def send(
        self, token: Token, queue: str, payload: bytes, kind: Kind, *, check: bool = True
    ) -> tuple[str, int] | None:
        """POST /request and the fallback of POST /response: append (and route) a message.
        ``call`` on the queue (asked before its existence is told); refused when it is full."""
        if check:
            self.check(self.session_of(token), Action.CALL, queue)
        q = self.queues.get(queue)
        if q is None:
            self.stats["http.switch.dropped"] += 1
            return None
        full = self._room(q, len(payload))
        if full is not None:
            self._full("queue_full", full)
        m = self._append(q, payload, kind, token.name)
        if self._routed(q, m):
            self._submit(m, self.port.clock())
        else:
            self._wake(q)
        return (q.name, m.n)

    def _leased_elsewhere(self, token: Token, q: Queue, m: Msg, what: str) -> None:
        """A message leased to another token is that token's alone, whatever the policy."""
        if m.lease is not None and m.lease != token.name:
            self.refuse(
                self.session_of(token),
                Action.MANAGE,
                q.name,
                f"{q.name}/{m.n} is leased to another token: only it may {what} it",
            )

    def respond(
        self, token: Token, reply_queue: str, req_queue: str, req_n: int, payload: bytes
    ) -> tuple[str, int] | None:
        """POST /response/<reply_queue>/<req_queue>/<req_n>: the answer to a request the token
        holds, else a plain Response sent into ``reply_queue`` (``call`` on it)."""
        q = self.queues.get(req_queue)
        m = q.messages.get(req_n) if q is not None else None
        if q is not None and m is not None:
            self._leased_elsewhere(token, q, m, "answer")
        mine = m is not None and m.lease == token.name
        req = m.request if m is not None else None
        worker = self.router.held_by_worker(req) if req is not None else None
        if q is not None and m is not None and req is not None and worker is not None and mine:
            m.request = None
            self.last_append = None
            self.router.reply(worker, req.id, [payload], self.port.clock())
            if m.volatile:
                # the caller of another protocol got its reply: the message is done, and its
                # worker's credit may take a parked request
                self._remove(q, m)
                if q.parked:
                    self._unpark(q, self.port.clock())
                return None
            return self.last_append
        return self.send(
            token,
            reply_queue,
            payload,
            codec.response_kind(req_queue, req_n),
            check=not mine,  # answering a request it was given is part of serving
        )

    def ack(self, token: Token, queue: str, n: int) -> None:
        """Remove a message: the token's own lease, or ``manage`` on the queue for a message
        nobody holds; never a message leased to another token."""
        q = self.queues.get(queue)
        if q is None:
            return
        m = q.messages.get(n)
        if m is None:
            return
        self._leased_elsewhere(token, q, m, "ack")
        if m.lease is None:
            self.check(self.session_of(token), Action.MANAGE, queue)
        self._remove(q, m)
        if m.stored:
            self.store.ack(queue, n)
        self._trace(
            queue,
            n,
            None,
            input=token.name,
            processing_time=max(0, self.now_ns() - m.time_ns),
        )
        req = m.request
        m.request = None
        if req is not None:
            now = self.port.clock()
            worker = self.router.held_by_worker(req)
            if worker is not None:
                # the consumer acked without a response: free its credit; the caller learns
                self.router.reply_error(
                    worker, req.id, MaitredError(_ACKED, ErrorCode.INTERNAL), now
                )
            elif req.state is RequestState.QUEUED:
                self.router.cancel(req, now)
            if q.parked:
                self._unpark(q, now)

    # -- routing ------------------------------------------------------------------------------

    def _submit(self, m: Msg, now: float) -> None:
        assert self.qsession is not None
        m.parked = False
        m.request = self.router.submit(
            self.qsession, m.queue, [m.payload], m, now, timeout=math.inf, on_no_worker="wait"
        )

    def on_dispatch(self, token: Token, worker: Worker, request: Request) -> None:
        """The router hands ``request`` to ``token``'s worker of its queue."""
        q = self.queues.get(worker.service.name)
        if request.caller is self.qsession:
            m: Msg = request.correlation
            if q is None or q.messages.get(m.n) is not m:
                # the queue went away meanwhile: free the credit on the next turn
                self._later(lambda: self.router.reply(worker, request.id, (), self.port.clock()))
                return
        else:
            if q is None:
                err = MaitredError(f"queue {worker.service.name} is gone", ErrorCode.WORKER_DIED)
                self._later(
                    lambda: self.router.reply_error(worker, request.id, err, self.port.clock())
                )
                return
            payload = b"".join(request.body)
            m = self._append(
                q,
                payload,
                codec.request_kind(request.caller.label),
                request.caller.label,
                volatile=True,
            )
        m.request = request
        self._lease(m, token.name)
        m.shown = False
        m.deliveries += 1  # stored when the lease ends without an ack (``_give_back``)
        q.open[m.n] = m
        self._wake(q)

    def on_reply(self, request: Request, body: Body) -> None:
        """The final reply to a stored request: a Response in the sender's reply queue."""
        m: Msg = request.correlation
        m.request = None
        q = self.queues.get(m.queue)
        if m.lease is None and q is not None and q.messages.get(m.n) is m:
            # served by a worker of another protocol: the reply is the ack
            self._remove(q, m)
            if m.stored:
                self.store.ack(m.queue, m.n)
        if q is not None and q.parked:
            self._unpark(q, self.port.clock())
        reply_to = m.kind[1]
        rq = self.queues.get(reply_to) if isinstance(reply_to, str) else None
        if rq is None:
            self.stats["http.switch.replies_dropped"] += 1
            self.last_append = None
            return
        full = self._room(rq, sum(len(f) for f in body))
        if full is not None:
            # nobody reads the reply queue: the reply is dropped rather than stored unbounded
            self.stats["http.switch.replies_dropped"] += 1
            log.info("switch: reply to %s/%d dropped: %s", m.queue, m.n, full)
            self.last_append = None
            return
        origin = m.lease or "maitred"
        r = self._append(rq, b"".join(body), codec.response_kind(m.queue, m.n), origin)
        self.last_append = (rq.name, r.n)
        self._wake(rq)

    def on_error(self, request: Request, error: MaitredError) -> None:
        m: Msg = request.correlation
        if m.request is request:
            m.request = None
        if error.reason == _ACKED:
            return
        code = error.code
        if code == ErrorCode.SHUTTING_DOWN or code == ErrorCode.CANCELLED:
            return  # stays in the store for the next start
        if code == ErrorCode.WORKER_DIED:
            if m.lease is None:
                m.deliveries += 1  # it was with a worker of another protocol
            self._retry.append(m)
            self._later(self._retry_all)
            return
        if code == ErrorCode.QUEUE_FULL:
            m.parked = True
            self.stats["http.switch.parked"] += 1
            pq = self.queues.get(m.queue)
            if pq is not None:
                pq.parked.append(m)
            return
        q = self.queues.get(m.queue)
        if q is not None and q.messages.get(m.n) is m:
            self._dead_letter(q, m, error.reason)

    def _retry_all(self) -> None:
        retry, self._retry = self._retry, []
        now = self.port.clock()
        for m in retry:
            if m.request is None:
                self._give_back(m, now, "its worker went away")

    def _later(self, fn: Callable[[], object]) -> None:
        asyncio.get_running_loop().call_soon(fn)

    def ensure_worker(self, token: Token, q: Queue, now: float) -> None:
        if not q.persistent or q.name in token.workers or token.session is None:
            return
        try:
            token.workers[q.name] = self.router.add_worker(
                token.session,
                q.name,
                now,
                credit=self.credit,
                tag=token,
                label=f"switch:{token.name}/{q.name}",
                idle_timeout=0,
                busy_timeout=0,
            )
        except MaitredError as exc:
            self.stats["http.switch.worker_refused"] += 1
            log.info("switch: %s may not serve %s: %s", token.name, q.name, exc.reason)
            return
        self._unpark(q, now)

    def _unpark(self, q: Queue, now: float) -> None:
        """Submit parked requests again, oldest first, while the router has room for them."""
        parked = q.parked
        while parked:
            if not self.router.can_accept(q.name):
                return
            m = parked.popleft()
            if m.parked and q.messages.get(m.n) is m:
                self._submit(m, now)

    # -- transfer -------------------------------------------------------------------------------

    def _eligible(self, token: Token, start: int, names: list[str]) -> list[tuple[Queue, Msg]]:
        """Messages ``token`` may be given: newest first within each queue."""
        out: list[tuple[Queue, Msg]] = []
        me = token.name
        for name in names:
            q = self.queues.get(name)
            if q is None:
                continue
            found: list[Msg] = []
            stale: list[int] = []
            messages = q.messages
            for n, m in q.open.items():
                if messages.get(n) is not m:
                    stale.append(n)  # acked, answered or dead-lettered
                    continue
                lease = m.lease
                if lease == me:
                    if n > start or not m.shown:
                        found.append(m)
                elif lease is None:
                    if self._routed(q, m):
                        stale.append(n)  # back with the router: on_dispatch adds it again
                    elif n > start or m.redelivered:
                        found.append(m)
            for n in stale:
                del q.open[n]
            if found:
                found.sort(key=_by_id, reverse=True)
                out.extend((q, m) for m in found)
        return out

    def may_transfer(self, token: Token, names: list[str]) -> None:
        """``serve`` on every persistent queue named; a transient queue is its token's alone."""
        session = self.session_of(token)
        for name in names:
            q = self.queues.get(name)
            if q is None:
                continue
            if q.persistent:
                self.check(session, Action.SERVE, name)
            elif q.owner != token.name:
                self.refuse(
                    session,
                    Action.SERVE,
                    name,
                    f"{name} is another token's transient queue: only it may read it",
                )

    async def transfer(self, token: Token, start: int, timeout: float, names: list[str]) -> bytes:
        self.may_transfer(token, names)
        loop = asyncio.get_running_loop()
        now = self.port.clock()
        now_ns = self.now_ns()
        expected = now_ns + int(timeout * 1e9)
        for name in names:
            q = self.queues.get(name)
            if q is not None:
                q.expected_ns = expected
                self.ensure_worker(token, q, now)
        deadline = loop.time() + timeout
        found = self._eligible(token, start, names)
        while not found:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.closing or token.session is None or token.session.closed:
                break
            fut: asyncio.Future[None] = loop.create_future()
            waiting = [q for q in (self.queues.get(n) for n in names) if q is not None]
            if not waiting:
                break  # none of its queues exists (any more)
            for q in waiting:
                q.waiters.add(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                for q in waiting:
                    q.waiters.discard(fut)
            found = self._eligible(token, start, names)
        if not found:
            return codec.transfer_body((), start)
        out = []
        top = start
        for q, m in found:
            self._lease(m, token.name)
            m.shown = True
            m.redelivered = False
            top = max(top, m.n)
            out.append((q.name, m.n, m.payload, m.kind))
            self._trace(q.name, m.n, m, output=token.name)
        return codec.transfer_body(out, top)

    def _wake(self, q: Queue) -> None:
        for fut in q.waiters:
            if not fut.done():
                fut.set_result(None)
        q.waiters.clear()

    # -- listing, diagnostics, trace ----------------------------------------------------------

    def list_queues(self, prefix: str, alive: bool) -> list[str]:
        now_ns = self.now_ns()
        return sorted(
            name
            for name, q in self.queues.items()
            if name.startswith(prefix)
            and (not alive or (q.expected_ns is not None and q.expected_ns > now_ns))
        )

    def list_names(self, token: Token | None, prefix: str, alive: bool) -> list[str]:
        """GET /list: ``observe`` on ``$switch.list``."""
        self.check(self.session_of(token), Action.OBSERVE, LIST)
        return self.list_queues(prefix, alive)

    def _payload_filter(self, session: Session) -> Callable[[str], bool]:
        """Whether ``session`` may see the payloads of a queue: it may ``call`` it, or it is
        its own transient queue (answers cached for one read)."""
        seen: dict[str, bool] = {}

        def visible(queue: str) -> bool:
            verdict = seen.get(queue)
            if verdict is None:
                q = self.queues.get(queue)
                own = q is not None and q.owner is not None and q.owner == _token_name(session)
                verdict = seen[queue] = own or self.permits(session, Action.CALL, queue)
            return verdict

        return visible

    async def diagnostics(self, token: Token | None) -> bytes:
        """GET /: ``observe`` on ``$switch.diagnostics``. At most ``diagnostics_messages`` per
        queue (the oldest), payloads cut to a preview and shown only where the reader may
        ``call`` the queue; built in slices that yield to the event loop."""
        session = self.session_of(token)
        self.check(session, Action.OBSERVE, DIAGNOSTICS)
        visible = self._payload_filter(session)
        limit = self.diagnostics_messages
        loop = asyncio.get_running_loop()
        sections: dict[bool, list[bytes]] = {True: [], False: []}
        slice_start = loop.time()
        for name in sorted(self.queues):
            q = self.queues.get(name)
            if q is None:
                continue  # destroyed while this was built
            show = visible(name)
            entries = [
                codec.queue_entry(
                    name,
                    m.n,
                    m.origin,
                    m.time_ns,
                    m.payload[: codec.TRACE_PAYLOAD_LIMIT] if show else b"",
                    m.kind,
                )
                for m in sorted(islice(q.messages.values(), limit), key=_by_id)
            ]
            sections[q.persistent].append(codec.diagnostics_queue(name, q.expected_ns, entries))
            if loop.time() - slice_start > _SLICE:
                await asyncio.sleep(0)
                slice_start = loop.time()
        return codec.diagnostics_document(self.now_ns(), sections[True], sections[False])

    def _trace(
        self,
        queue: str,
        n: int,
        message: Msg | _RouterMsg | None,
        *,
        input: str | None = None,
        output: str | None = None,
        processing_time: int | None = None,
    ) -> None:
        if self.trace.maxlen == 0:
            return
        record = (
            self.trace_next,
            time.time(),  # noqa: TID251 - the trace's wire format is a Unix time
            queue,
            n,
            None
            if message is None
            else (message.payload[: codec.TRACE_PAYLOAD_LIMIT], message.kind),
            input,
            output,
            processing_time,
        )
        self.trace.append(record)
        self.trace_next += 1
        if self.trace_waiters:
            for fut in self.trace_waiters:
                if not fut.done():
                    fut.set_result(None)
            self.trace_waiters.clear()

    @staticmethod
    def _trace_event(
        record: _TraceRecord, visible: Callable[[str], bool]
    ) -> tuple[int, dict[str, Any]]:
        i, unix, queue, n, message, input, output, processing_time = record
        if message is None:
            body = codec.trace_ack(queue, n)
        else:
            payload = message[0] if visible(queue) else b""
            body = codec.trace_message(queue, n, payload, message[1])
        event = codec.trace_event(
            unix, queue, body, input=input, output=output, processing_time=processing_time
        )
        return i, event

    def _router_trace(self, event: str, request: Request, detail: str, now: float) -> None:
        """Router tracer: every request that does not cross the switch (MDP, WebSocket, REST
        callers and workers) goes into the trace too, so ``maitred tail`` shows all traffic
        with the router's request id as the message id. The switch's own queue traffic is
        traced where it happens. Detaches itself when no reader came for a while."""
        if (
            not self.trace_waiters
            and asyncio.get_running_loop().time() - self._trace_read_at > ROUTER_TRACE_IDLE
        ):
            if self._router_trace in self.router.tracers:
                self.router.tracers.remove(self._router_trace)
            return
        caller = request.caller
        if isinstance(caller.sink, (QueueSink, TokenSink)):
            return
        worker = request.worker
        if worker is not None and isinstance(worker.session.sink, TokenSink):
            return
        service, rid = request.service, request.id
        if event == "accepted":
            payload = request.body[-1] if request.body else b""
            self._trace(
                service, rid, _RouterMsg(payload, codec.request_kind(detail)), input=detail
            )
        elif event == "dispatched":
            payload = request.body[-1] if request.body else b""
            self._trace(
                service, rid, _RouterMsg(payload, codec.request_kind(caller.label)), output=detail
            )
        elif event == "replied":
            self._trace(
                caller.label,
                rid,
                _RouterMsg(b"", codec.response_kind(service, rid)),
                input=detail,
                output=caller.label,
                processing_time=int((now - request.accepted) * 1e9),
            )
        elif event == "failed":
            self._trace(
                caller.label,
                rid,
                _RouterMsg(f"error {detail}".encode(), codec.response_kind(service, rid)),
                input="maitred",
                output=caller.label,
            )

    def _attach_router_trace(self) -> None:
        self._trace_read_at = asyncio.get_running_loop().time()
        if self.trace.maxlen and self._router_trace not in self.router.tracers:
            self.router.tracers.append(self._router_trace)

    async def get_trace(self, token: Token | None, start: int, timeout: float) -> bytes:
        """GET /trace: ``observe`` on ``$switch.trace``; payloads only of queues (services) the
        reader may ``call``."""
        session = self.session_of(token)
        self.check(session, Action.OBSERVE, TRACE)
        loop = asyncio.get_running_loop()
        self._attach_router_trace()
        deadline = loop.time() + timeout
        while True:
            visible = self._payload_filter(session)
            events = [self._trace_event(r, visible) for r in self.trace if r[0] > start]
            remaining = deadline - loop.time()
            if events or remaining <= 0 or self.closing:
                return codec.trace_body(events)
            fut: asyncio.Future[None] = loop.create_future()
            self.trace_waiters.add(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                self.trace_waiters.discard(fut)

    def shutdown(self, token: Token, secret: bytes | None) -> None:
        """POST /shutdown: ``manage`` on ``$sys.shutdown``, and the shutdown secret (compared in
        constant time); with ``shutdown_tokens``, also a token matching one of them. A token
        name alone is never enough: any client may log in with any name."""
        session = self.session_of(token)
        self.check(session, Action.MANAGE, SHUTDOWN)
        expected = self.shutdown_secret
        if expected is None:
            self.refuse(session, Action.MANAGE, SHUTDOWN, "no shutdown secret is configured")
        if secret is None or not hmac.compare_digest(secret, expected):
            self.refuse(session, Action.MANAGE, SHUTDOWN, "wrong or missing shutdown secret")
        if self.shutdown_tokens and not any(
            fnmatch.fnmatchcase(token.name, p) for p in self.shutdown_tokens
        ):
            self.refuse(
                session, Action.MANAGE, SHUTDOWN, f"token {token.name} is not in shutdown_tokens"
            )


def _token_name(session: Session) -> str | None:
    """The login token of a token's session (its sink says), else None."""
    sink = session.sink
    return sink.token.name if isinstance(sink, TokenSink) else None
