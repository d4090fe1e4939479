"""The middleman dialect (docs/reference/wire.md): key handshake,
PUB/SUB/UNS/REQ/RES/EREQ/EPUB/ESUB/INT.

Mapping onto the router (one session per connection):

- ``PUB k`` → ``broker.publish`` with the sender's headers plus ``Cid``/``Uid``; subscribers get
  ``PUB k`` with those headers (``Cid``/``Uid`` last, empty when the publisher was not a
  WebSocket connection). ``SUB``/``UNS``/``UNSUB`` → subscribe/unsubscribe (wildcards allowed).
- ``REQ k`` → ``broker.submit(on_no_worker="fail")``; the responder gets ``REQ k`` with the
  client's headers, ``Cid``, ``Uid`` and ``Rid`` (the router's request id, decimal).
- ``RES k`` with ``Rid`` → ``broker.reply`` by the responder's worker; the client gets ``RES
  <requested name>`` with the responder's headers minus ``Rid``, then ``Cid``/``Uid``.
- ``EREQ k`` (trusted) → a worker of service ``k`` with ``responder_credit``, and a grant to
  ``grant_role`` of CALL and PUBLISH on ``k``; ``EPUB k`` → PUBLISH and CALL (and RES) on ``k``;
  ``ESUB k`` → SUBSCRIBE on ``k``. A connection grants only what it may do itself (else
  ``Cannot grant <CMD> k: <reason>``, a denial), and its grants end when it closes.

``Cid``, ``Uid`` and ``Rid`` are the broker's: whatever a peer sends under those names (in any
case) is dropped on the way in, and every message out carries the broker's values last, after
any other header (compared without regard to case).

Bodies: a middleman body is one text block, carried as one body frame (UTF-8). A request or
reply from another protocol with several frames reaches a middleman peer with its frames joined
by ``\\n``; bytes that are not UTF-8 are replaced (U+FFFD). Partial replies are not sent to
middleman clients (the protocol has one RES per REQ): they get the final reply only. A reply
without a ``Reqid`` header (e.g. from an MDP worker, which has no headers) gets the request's
``Reqid``, so middleman clients can always correlate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from maitred.core.access import Action, refusal
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.headers import is_broker_header, pairs_of
from maitred.core.routing.model import Body, Headers, ReplyKind, Request, Worker
from maitred.core.routing.patterns import validate_pattern
from maitred.transports.ws.conn import CLOSE_UNSUPPORTED, Conn
from maitred.transports.ws.mm_codec import (
    MmHeaders,
    MmMessage,
    ParseError,
    encode,
    error_frame,
    error_text,
    parse,
)

if TYPE_CHECKING:
    from maitred.transports.ws.adapter import WsTransport
    from maitred.transports.ws.link import WsLink

_FINAL = ReplyKind.FINAL
#: the action each trusted-only command stands for, to report an untrusted one as a denial
#: (INT UID is administration, outside the permission model: only counted)
_TRUSTED_ACTION = {"EREQ": Action.SERVE, "EPUB": Action.PUBLISH, "ESUB": Action.SUBSCRIBE}


def body_text(body: Body) -> str:
    """Body frames as one middleman body (frames joined by LF, UTF-8 with replacement)."""
    raw = body[0] if len(body) == 1 else b"\n".join(bytes(f) for f in body)
    return bytes(raw).decode("utf-8", "replace")


def _without_own(headers: Headers | None) -> list[tuple[str, str]]:
    """Every header but the broker-owned ones (any case): the broker adds its own after."""
    return [(k, v) for k, v in pairs_of(headers) if not is_broker_header(k)]


def _first(pairs: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of ``name`` (compared without regard to case)."""
    low = name.lower()
    return next((v for k, v in pairs if k.lower() == low), None)


def request_error_text(target: str, error: MaitredError) -> str:
    """The middleman text for a failed REQ (documented in docs/reference/ws.md)."""
    return error_text("REQ", error.code, target, error.reason)


class MmConn(Conn):
    """A middleman connection."""

    dialect = "middleman"

    def __init__(self, transport: WsTransport, ws: WsLink) -> None:
        super().__init__(transport, ws)
        self._commands: dict[str, Callable[[MmMessage], None]] = {
            "PUB": self._pub,
            "SUB": self._sub,
            "UNS": self._uns,
            "UNSUB": self._uns,
            "REQ": self._req,
            "RES": self._res,
            "EREQ": self._ereq,
            "EPUB": self._epub,
            "ESUB": self._esub,
            "INT": self._int,
        }

    # -- handshake ----------------------------------------------------------------------------

    async def handshake(self) -> bool:
        """The first frame is the key (empty: none), unless the opening handshake carried a
        bearer token: then there is no key frame, and ``MM OK`` comes at once."""
        identity = self.token_identity
        if identity is None:
            first = await self.ws.recv()
            identity = self.authenticate(first) if isinstance(first, str) else None
            if identity is None:
                self.refuse_key(first if isinstance(first, str) else "?")
                return False
        self.open(identity)
        self.push("MM OK")
        self.push(self.cid)
        self.subscribe_private()
        return True

    # -- inbound ------------------------------------------------------------------------------

    def on_binary(self, data: bytes) -> None:
        self.stats["ws.mm.binary_frames"] += 1
        self.close(CLOSE_UNSUPPORTED, "middleman frames are text")

    def on_text(self, text: str) -> None:
        try:
            msg = parse(text)
        except ParseError as exc:
            self.stats["ws.mm.parse_errors"] += 1
            self.reject("protocol", f"parse error: {exc.reason}")
            self.error(error_text("parse", exc.code, "", exc.reason))
            return
        handler = self._commands.get(msg.command)
        if handler is None:
            self.stats["ws.mm.unknown_commands"] += 1
            self.reject("protocol", f"unknown command {msg.command[:40]}")
            unknown = ErrorCode.NOT_IMPLEMENTED
            self.error(error_text("command", unknown, msg.target[:200], command=msg.command[:40]))
            return
        handler(msg)

    def error(self, text: str) -> None:
        self.stats["ws.mm.errors_sent"] += 1
        self.push(error_frame(text))

    def _stamp(self) -> tuple[tuple[str, str], ...]:
        """This connection's ``Cid``/``Uid``, which the router adds after the sender's headers
        (and after dropping any it sent itself)."""
        return (("Cid", self.cid), ("Uid", self.uid))

    def _pub(self, msg: MmMessage) -> None:
        assert self.session is not None
        try:
            self.broker.publish(
                self.session,
                msg.target,
                (msg.body.encode(),),
                MmHeaders(msg.headers),
                stamp=self._stamp(),
            )
        except MaitredError as exc:  # Denied (FORBIDDEN), or a bad topic
            self.error(error_text("PUB", exc.code, msg.target, exc.reason))

    def _sub(self, msg: MmMessage) -> None:
        assert self.session is not None
        try:
            self.broker.subscribe(self.session, msg.target)
        except MaitredError as exc:  # Denied, past [broker] max_subscriptions, a bad pattern
            self.error(error_text("SUB", exc.code, msg.target, exc.reason))

    def _uns(self, msg: MmMessage) -> None:
        assert self.session is not None
        self.broker.unsubscribe(self.session, msg.target)

    def _req(self, msg: MmMessage) -> None:
        assert self.session is not None
        timeout = self.transport.config.request_timeout or None
        self.broker.submit(
            self.session,
            msg.target,
            (msg.body.encode(),),
            msg.target,
            self.transport.port.clock(),
            timeout=timeout,
            headers=MmHeaders(msg.headers),
            on_no_worker="fail",
            stamp=self._stamp(),
        )

    def _res(self, msg: MmMessage) -> None:
        assert self.session is not None
        k = msg.target
        if self.restricted and not self.broker.allowed(self.session, Action.PUBLISH, k):
            self.error(error_text("RES", ErrorCode.FORBIDDEN, k))
            return
        headers = MmHeaders(msg.headers)
        rid = headers.get("Rid", "")  # parsed names are canonical: any case of it is "Rid"
        try:
            token = int(rid)
        except ValueError:
            token = -1
        worker = self.inflight.pop(token, None)
        if worker is None or not self.broker.reply(
            worker,
            token,
            (msg.body.encode(),),
            self.transport.port.clock(),
            final=True,
            headers=headers,
            stamp=self._stamp(),
        ):
            self.error(error_text("RES", ErrorCode.NOT_FOUND, k))

    def _trusted(self, msg: MmMessage) -> bool:
        if self.restricted:
            self.stats["ws.mm.not_trusted"] += 1
            action = _TRUSTED_ACTION.get(msg.command)
            if action is not None and self.session is not None:
                # one denial model for every transport: counted as denied.<action> and
                # published on $sys.auth.denied like the router's own refusals
                self.broker.report_denied(self.session, action, msg.target)
            self.error(error_text("trust", ErrorCode.UNAUTHORIZED, msg.target, command=msg.command))
            return False
        return True

    def _grant(self, msg: MmMessage, actions: tuple[Action, ...]) -> bool:
        """Grant ``actions`` on the target to ``grant_role``, all or none: only what this
        connection may do itself; a refusal is a denial of the first action it may not do
        (counted, published on ``$sys.auth.denied``). The grants end when it closes."""
        assert self.session is not None
        role = self.transport.config.grant_role
        k = msg.target
        problem = validate_pattern(k)
        if problem:
            self.error(error_text("grant", ErrorCode.BAD_REQUEST, k, problem, msg.command))
            return False
        for action in actions:
            if not self.broker.may_grant(self.session, action, k):
                self.stats["ws.mm.grants_refused"] += 1
                self.broker.report_denied(self.session, action, k)
                why = refusal(self.session.identity, action, k)
                self.error(error_text("grant", ErrorCode.FORBIDDEN, k, why, msg.command))
                return False
        try:
            for action in actions:
                self.broker.grant(role, action, k, by=self.session)
        except MaitredError as exc:  # Denied: the rules changed in between (cannot, today)
            self.error(error_text("grant", exc.code, k, exc.reason, msg.command))
            return False
        return True

    def _ereq(self, msg: MmMessage) -> None:
        if not self._trusted(msg):
            return
        assert self.session is not None
        k = msg.target
        if k not in self.workers:
            try:
                self.workers[k] = self.broker.register_worker(
                    self.session,
                    k,
                    self.transport.port.clock(),
                    credit=self.transport.config.responder_credit,
                    tag=self,
                    label=f"ws:{self.cid}/{k}",
                    address=self.worker_address(),
                    idle_timeout=0,
                    busy_timeout=0,
                )
            except MaitredError as exc:
                self.error(error_text("serve", exc.code, k, exc.reason, "EREQ"))
                return
        self._grant(msg, (Action.CALL, Action.PUBLISH))

    def _epub(self, msg: MmMessage) -> None:
        if self._trusted(msg):
            self._grant(msg, (Action.PUBLISH, Action.CALL))

    def _esub(self, msg: MmMessage) -> None:
        if self._trusted(msg):
            self._grant(msg, (Action.SUBSCRIBE,))

    def _int(self, msg: MmMessage) -> None:
        if msg.target != "UID":
            self.stats["ws.mm.unknown_commands"] += 1
            unknown = ErrorCode.NOT_IMPLEMENTED
            self.error(error_text("command", unknown, msg.target[:200], command="INT"))
            return
        if not self._trusted(msg):
            return
        headers = dict(msg.headers)
        forcid = headers.get("Forcid", "")
        conn = self.transport.conns.get(forcid)
        if conn is None:
            self.error(error_text("INT", ErrorCode.NOT_FOUND, "UID", forcid[:64]))
            return
        conn.uid = headers.get("Setuid", "")

    # -- SessionSink ----------------------------------------------------------------------------

    def deliver_request(self, worker: Worker, request: Request) -> None:
        self.inflight[request.id] = worker
        t = self.transport
        headers = [
            *_without_own(request.headers),
            ("Cid", t.cid_of(request.caller)),
            ("Uid", t.uid_of(request.caller)),
            ("Rid", str(request.id)),
        ]
        self.push(encode("REQ", request.service, headers, body_text(request.body)))

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        if kind is not _FINAL:
            self.stats["ws.mm.partials_skipped"] += 1
            return
        t = self.transport
        session = request.worker.session if request.worker is not None else None
        own = _without_own(headers)
        asked = request.headers
        reqid = _first(pairs_of(asked), "Reqid")
        if reqid is not None and _first(own, "Reqid") is None:
            # a responder without headers (MDP, ...): keep the client's correlation
            own.insert(0, ("Reqid", reqid))
        own += (("Cid", t.cid_of(session)), ("Uid", t.uid_of(session)))
        self.push(encode("RES", request.service, own, body_text(body)))

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        self.error(request_error_text(request.service, error))

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        pairs = [
            *_without_own(headers),
            ("Cid", headers.get("Cid", "")),
            ("Uid", headers.get("Uid", "")),
        ]
        self.push(encode("PUB", topic, pairs, body_text(body)), event=True)
