"""The message switch's view of its queues: messages, queues, login tokens and the router
sinks that connect them to the core (:mod:`maitred.transports.http.switch`).

Which message is leased to which token, the Transfer cursor's view (``Queue.open``), the
messages the router refused for room (``Queue.parked``): the switch's own state. What must
survive a crash is in the broker's one durable store (``[store]``), written through the core's
journal.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from maitred.core.access import Identity
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import Body, Headers, ReplyKind, Request, Session, Worker
from maitred.transports.http.codec import Kind

if TYPE_CHECKING:
    from maitred.transports.http.switch import Switch

#: the names the switch's read-only views and shutdown are asked about (docs/reference/access.md)
DIAGNOSTICS = "$switch.diagnostics"
TRACE = "$switch.trace"
LIST = "$switch.list"
DEAD_LETTERS = "$switch.dead-letters"
SHUTDOWN = "$sys.shutdown"

FORBIDDEN = 403
TOO_MANY = 429

#: the owner of the switch's queues in the store (``Store.create_queue``)
OWNER = "switch"


async def woken(waiters: list[set[asyncio.Future[None]]], timeout: float) -> None:
    """Wait up to ``timeout`` seconds to be woken: a future is put in each set of ``waiters``
    (whoever has news sets the futures there) and taken out again however the wait ends."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    for waiting in waiters:
        waiting.add(fut)
    try:
        await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        pass
    finally:
        for waiting in waiters:
            waiting.discard(fut)


class Refused(MaitredError):
    """A switch operation refused by the access policy, a lease or a limit (already counted):
    answered with ``status`` and the switch's plain-text error form."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(
            reason, ErrorCode.FORBIDDEN if status == FORBIDDEN else ErrorCode.QUEUE_FULL
        )
        self.status = status


@dataclass(slots=True, eq=False)
class Msg:
    """A message in a switch queue."""

    queue: str
    n: int
    payload: bytes
    kind: Kind
    origin: str
    time_ns: int
    lease: str | None = field(default=None, init=False)  # the token holding it
    shown: bool = field(default=False, init=False)  # returned by a Transfer to its lessee
    #: came back from a lease: visible whatever the cursor
    redelivered: bool = field(default=False, init=False)
    #: the router request carrying it
    request: Request | None = field(default=None, init=False)
    stored: bool = field(default=False, init=False)
    #: made for a caller of another protocol (not stored)
    volatile: bool = field(default=False, init=False)
    #: the router refused it (queue full): resubmitted when room is made
    parked: bool = field(default=False, init=False)
    #: acked by its lessee without a response (the router's error is not news)
    acked: bool = field(default=False, init=False)
    deliveries: int = field(default=0, init=False)
    #: the sender's W3C trace context (``traceparent``, ``tracestate``), if it sent one
    headers: dict[str, str] | None = field(default=None, init=False)


class Queue:
    """A switch queue: persistent (a durable service) or transient (one token's)."""

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


def by_id(m: Msg) -> int:
    return m.n


class Token:
    """A login token: the switch session."""

    __slots__ = ("caller", "connections", "name", "session", "sink", "transient", "workers")

    def __init__(self, name: str, caller: Identity | None = None) -> None:
        self.name = name
        #: who the transport said logged in first (a peer uid's, a certificate's, a bearer
        #: token's identity; None: the transport's default): only the same may log in again
        self.caller = caller
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

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
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

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        if kind is ReplyKind.FINAL:
            self.switch.on_reply(request, body)

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        self.switch.on_error(request, error)

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        return None

    def worker_removed(self, worker: Worker, reason: str) -> None:
        return None


def token_name(session: Session) -> str | None:
    """The login token of a token's session (its sink says), else None."""
    sink = session.sink
    return sink.token.name if isinstance(sink, TokenSink) else None
