"""The switch's lease view: login tokens and their connections, which message is leased to
which token, and Transfer (the cursor, the long poll). A mixin of
:class:`~maitred.transports.http.switch.Switch`; a token that goes away gives its leases back,
and a message given back ``max_deliveries`` times without an ack goes to the dead letters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from maitred.core.access import Action, Identity
from maitred.core.durable import StoreJournal
from maitred.core.routing.model import RequestState
from maitred.core.tracing import trace_headers
from maitred.transports.http import codec
from maitred.transports.http.switch_model import (
    FORBIDDEN,
    Msg,
    Queue,
    Refused,
    Token,
    TokenSink,
    by_id,
    woken,
)
from maitred.transports.http.switch_views import SwitchViews

if TYPE_CHECKING:
    from maitred.transports.http.switch import Switch


class SwitchLeases(SwitchViews):
    """Tokens, leases and Transfer of a :class:`Switch`."""

    identity: Identity
    credit: int
    journal: StoreJournal
    tokens: dict[str, Token]
    conns: dict[object, Token]
    # implemented by Switch (the queues and their writes)
    _dead_letter: Callable[[Queue, Msg, str], None]
    _destroy: Callable[[str, float], None]
    _remove: Callable[[Queue, Msg], None]
    _routed: Callable[[Queue, Msg], bool]
    _submit: Callable[[Msg, float], None]
    _unpark: Callable[[Queue, float], None]
    max_deliveries: Callable[[str], int]
    ensure_worker: Callable[[Token, Queue, float], None]

    # -- tokens and connections ---------------------------------------------------------------

    def login(self, conn: object, name: str, caller: Identity | None = None) -> None:
        """Log ``conn`` in as the token ``name``. ``caller``: who the transport identified
        (None: its default identity); a token in use by another caller is refused (403), so a
        login name never lends one peer's identity to another."""
        if caller == self.identity:
            caller = None
        token = self.tokens.get(name)
        if token is not None and token.caller != caller:
            raise Refused(FORBIDDEN, f"login token {name} is in use by another identity")
        old = self.conns.get(conn)
        if old is not None:
            if old.name == name:
                return
            self.connection_closed(conn)
        if token is None:
            token = self.tokens[name] = Token(name, caller)
            base = caller or self.identity
            identity = self.port.authenticate("http", {"token": name}, base)
            sink = token.sink = TokenSink(cast("Switch", self), token)
            token.session = self.port.open_session(
                "http", sink, identity or base, self.port.clock(), label=f"switch:{name}"
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
            self.port.close_session(token.session, now, "logged out")
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
        if m.deliveries >= self.max_deliveries(q.name):
            self._dead_letter(q, m, f"{reason}; delivered {m.deliveries} times without an ack")
            return
        if m.stored:
            # the count of failed deliveries survives a restart; a delivery cut short by a
            # broker crash is not counted (the consumer did not fail it), and the happy path
            # (deliver, ack) writes no UPDATE
            self.journal.delivered(m.queue, m.n, m.deliveries)
        m.redelivered = True
        if self._routed(q, m):
            self._submit(m, now)
        self._wake(q)

    def _lease(self, m: Msg, holder: str | None) -> None:
        """Give ``m`` to token ``holder`` (None: back to its queue), keeping ``Queue.leased``
        (the leased messages still in the queue) exact."""
        if (m.lease is None) != (holder is None):
            q = self.queues.get(m.queue)
            if q is not None and q.messages.get(m.n) is m:
                q.leased += 1 if holder is not None else -1
        m.lease = holder

    def _leased_elsewhere(self, token: Token, q: Queue, m: Msg, what: str) -> None:
        """A message leased to another token is that token's alone, whatever the policy."""
        if m.lease is not None and m.lease != token.name:
            self.refuse(
                self.session_of(token),
                Action.MANAGE,
                q.name,
                f"{q.name}/{m.n} is leased to another token: only it may {what} it",
            )

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
                found.sort(key=by_id, reverse=True)
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
            waiting = [q.waiters for q in (self.queues.get(n) for n in names) if q is not None]
            if not waiting:
                break  # none of its queues exists (any more)
            await woken(waiting, remaining)
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
            req = m.request  # its headers hold the broker span's traceparent when traced
            trace = trace_headers(req.headers) if req is not None else m.headers
            out.append((q.name, m.n, m.payload, m.kind, trace))
            self._trace(q.name, m.n, m, output=token.name)
        return codec.transfer_body(out, top)

    def _wake(self, q: Queue) -> None:
        for fut in q.waiters:
            if not fut.done():
                fut.set_result(None)
        q.waiters.clear()
