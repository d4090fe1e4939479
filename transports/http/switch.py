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

Durability: a persistent queue is a durable service of the core. Its messages, ids, delivery
counts and dead letters are in the broker's one store (``[store]``), written through the core's
journal (one group commit with the services' stored requests); a message goes to the one dead
letter queue after the service policy's ``max_deliveries`` deliveries without an ack. The switch
keeps only its view: leases per login token, the Transfer cursor, transient queues
(:mod:`maitred.transports.http.switch_model`); its read side is
:mod:`maitred.transports.http.switch_views`, its HTTP routes
:mod:`maitred.transports.http.switch_routes`.

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
import logging
import math
from collections import Counter, deque
from collections.abc import Callable

from maitred.core.access import Action, Identity
from maitred.core.durable import StoreJournal
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import Body, Request, RequestState, Session, Worker
from maitred.core.store import StoredMessage
from maitred.core.transport import BrokerPort
from maitred.transports.http import codec
from maitred.transports.http.codec import Kind
from maitred.transports.http.switch_leases import SwitchLeases
from maitred.transports.http.switch_model import OWNER, Msg, Queue, QueueSink, Refused, Token
from maitred.transports.http.switch_views import SwitchViews, _TraceRecord

__all__ = ["Msg", "Queue", "Refused", "Switch", "Token"]

log = logging.getLogger("maitred.transports.http.switch")


class Switch(SwitchLeases, SwitchViews):
    """Queues, tokens, leases and the trace of one HTTP transport."""

    def __init__(
        self,
        port: BrokerPort,
        journal: StoreJournal,
        *,
        identity: Identity,
        credit: int,
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
        #: the core's journal over the broker's one store: persistent queues write through it
        self.journal = journal
        self.identity = identity
        self.credit = credit
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
        self.start = port.clock()
        #: (event id, unix time, queue, id, message or None for an Ack, input, output,
        #: processing time): JSON is made only when someone reads the trace
        self.trace: deque[_TraceRecord] = deque(maxlen=trace_size)
        self.trace_next = 0
        self.trace_waiters: set[asyncio.Future[None]] = set()
        self.qsession: Session | None = None
        self.last_append: tuple[str, int] | None = None
        self._retry: list[Msg] = []
        self.stats = port.stats
        self.closing = False
        #: when a trace reader last asked (loop time); requests of other protocols are traced
        #: while readers come back within ``ROUTER_TRACE_IDLE`` seconds (``_router_trace``)
        self._trace_read_at = 0.0
        #: stops ``_router_trace`` (None: not attached)
        self._trace_stop: Callable[[], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Open the queue session and bring back the persistent queues from the store."""
        now = self.port.clock()
        self.qsession = self.port.open_session(
            "http", QueueSink(self), self.identity, now, label="switch:queues", quiet=True
        )
        self.journal.bypass(self.qsession)  # its requests are stored here, as switch messages
        recovered = self.journal.take_queues(OWNER)
        for name, messages in recovered.items():
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
        if recovered:
            log.info(
                "switch: recovered %d queues, %d messages",
                len(recovered),
                sum(len(v) for v in recovered.values()),
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
        self._detach_router_trace()
        if self.qsession is not None:
            self.port.close_session(self.qsession, now, "closing")

    # -- durability -----------------------------------------------------------------------------

    async def committed(self) -> None:
        """Return once everything written so far is durable (the journal's group commit: one
        transaction per event-loop turn for the switch and the services together). While the
        switch closes, at once: the store commits what is left when it closes."""
        if self.closing or not self.journal.dirty:
            return
        await self.journal.committed()

    def max_deliveries(self, queue: str) -> int:
        """Deliveries without an ack before a message of ``queue`` is dead-lettered: its
        service policy's ``max_deliveries``, as for every durable service."""
        return self.port.service_policy(queue).max_deliveries

    def _dead_letter(self, q: Queue, m: Msg, reason: str) -> None:
        self._remove(q, m)
        self.journal.dead_letter(
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
        policy = self.port.service_policy(q.name)
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
            self.journal.create_queue(name, OWNER)
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
                self.port.cancel(req, now)
        q.messages.clear()
        q.nbytes = 0
        q.leased = 0
        q.open.clear()
        q.parked.clear()
        if q.persistent:
            self.journal.destroy_queue(name)
        for token in list(self.tokens.values()):
            worker = token.workers.pop(name, None)
            if worker is not None:
                self.port.unregister_worker(worker, now, "queue destroyed")
        self._wake(q)

    def _remove(self, q: Queue, m: Msg) -> None:
        """Take ``m`` out of ``q`` (acked, answered, dead-lettered, or gone with its caller)."""
        if q.messages.pop(m.n, None) is m:
            q.nbytes -= len(m.payload)
            if m.lease is not None:
                q.leased -= 1
        q.open.pop(m.n, None)

    def _append(
        self, q: Queue, payload: bytes, kind: Kind, origin: str, *, volatile: bool = False
    ) -> Msg:
        m = Msg(q.name, self.journal.next_id(q.name), payload, kind, origin, self.now_ns())
        m.volatile = volatile
        q.messages[m.n] = m
        q.nbytes += len(payload)
        if not (q.persistent and kind[0] == "Request" and not volatile):
            q.open[m.n] = m  # not routed: Transfer hands it out directly
        if q.persistent and not volatile:
            m.stored = True
            self.journal.put(
                StoredMessage(q.name, m.n, payload, codec.encode_kind(kind), origin, m.time_ns, 0)
            )
        self._trace(q.name, m.n, m, input=origin)
        return m

    def send(
        self,
        token: Token,
        queue: str,
        payload: bytes,
        kind: Kind,
        *,
        check: bool = True,
        headers: dict[str, str] | None = None,
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
        if q.persistent and (refused := self.journal.refusal(len(payload))) is not None:
            self.stats["http.switch.store_refused"] += 1  # (JetStream: down, or too large)
            raise Refused(int(refused.code), refused.reason)
        m = self._append(q, payload, kind, token.name)
        m.headers = headers  # its trace context (not stored: a restart loses it)
        if self._routed(q, m):
            self._submit(m, self.port.clock())
        else:
            self._wake(q)
        return (q.name, m.n)

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
        worker = self.port.held_by_worker(req) if req is not None else None
        if q is not None and m is not None and req is not None and worker is not None and mine:
            m.request = None
            self.last_append = None
            self.port.reply(worker, req.id, [payload], self.port.clock())
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
        m.acked = True
        if m.stored:
            self.journal.ack(queue, n)
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
            worker = self.port.held_by_worker(req)
            if worker is not None:
                # the consumer acked without a response: free its credit; the caller learns
                self.port.reply_error(worker, req.id, _acked_error(), now)
            elif req.state is RequestState.QUEUED:
                self.port.cancel(req, now)
            if q.parked:
                self._unpark(q, now)

    # -- routing ------------------------------------------------------------------------------

    def _submit(self, m: Msg, now: float) -> None:
        assert self.qsession is not None
        m.parked = False
        m.request = self.port.submit(
            self.qsession,
            m.queue,
            [m.payload],
            m,
            now,
            timeout=math.inf,
            on_no_worker="wait",
            headers=m.headers,
        )

    def on_dispatch(self, token: Token, worker: Worker, request: Request) -> None:
        """The router hands ``request`` to ``token``'s worker of its queue."""
        q = self.queues.get(worker.service.name)
        if request.caller is self.qsession:
            m: Msg = request.correlation
            if q is None or q.messages.get(m.n) is not m:
                # the queue went away meanwhile: free the credit on the next turn
                self._later(lambda: self.port.reply(worker, request.id, (), self.port.clock()))
                return
        else:
            if q is None:
                err = MaitredError(f"queue {worker.service.name} is gone", ErrorCode.WORKER_DIED)
                self._later(
                    lambda: self.port.reply_error(worker, request.id, err, self.port.clock())
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
                self.journal.ack(m.queue, m.n)
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
        if m.acked:
            return  # its lessee acked it without a response: the switch is done with it
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
            token.workers[q.name] = self.port.register_worker(
                token.session,
                q.name,
                now,
                credit=self.credit,
                tag=token,
                label=f"switch:{token.name}/{q.name}",
                address=token.name,  # the login token: who serves the queue
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
            if not self.port.can_accept(q.name):
                return
            m = parked.popleft()
            if m.parked and q.messages.get(m.n) is m:
                self._submit(m, now)


def _acked_error() -> MaitredError:
    """What the caller of a request learns when the switch consumer acks it without a response
    (the caller is not left waiting; docs/topics/deviations.md)."""
    return MaitredError("acknowledged without a response", ErrorCode.INTERNAL)
