"""The maitred.json dialect (schema and reference in docs/reference/ws-json.md).

A connection says ``hello`` with its key first (no key when the opening handshake carried a
bearer token, or for an anonymous connection). A registration with ``methods`` makes it a
worker of ``name`` and of each ``name:method`` (credit ``responder_credit``); without, it is a
consumer. Requests go through ``broker.submit`` (the service's policy, unless the request says
``on_no_worker`` or ``timeout``), publications through ``broker.publish`` (with ``Cid``/``Uid``
headers added, as for middleman; a client's own ``Cid``/``Uid``/``Rid``, in any letter case,
are dropped by the router), subscriptions with wildcards; the router's ``$sys.`` events
are ordinary topics (subscribe to ``$sys.>``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from maitred.core.errors import Denied, ErrorCode, MaitredError
from maitred.core.routing.model import Body, Headers, ReplyKind, Request, Worker
from maitred.transports.ws import json_codec as jc
from maitred.transports.ws.conn import CLOSE_POLICY, Conn

if TYPE_CHECKING:
    from maitred.transports.ws.adapter import WsTransport
    from maitred.transports.ws.link import WsLink

_FINAL = ReplyKind.FINAL
_UNSET = msgspec.UNSET


_error = jc.error
_C = ErrorCode


class JsonConn(Conn):
    """A maitred.json connection."""

    dialect = "json"

    def __init__(self, transport: WsTransport, ws: WsLink) -> None:
        super().__init__(transport, ws)
        self.name = ""

    # -- handshake ----------------------------------------------------------------------------

    async def handshake(self) -> bool:
        first = await self.ws.recv()
        cfg = self.transport.config
        if len(first) > cfg.max_hello_size:
            return self._too_large(f"the hello is larger than {cfg.max_hello_size} bytes")
        try:
            hello = jc.decode(first)
        except msgspec.MsgspecError:
            hello = None
        if not isinstance(hello, jc.Hello):
            self.stats["ws.json.bad_hello"] += 1
            self.reject("protocol", "the first message is not a hello")
            self.close(CLOSE_POLICY, "the first message must be a hello")
            return False
        if hello.methods is not None and len(hello.methods) > cfg.max_hello_methods:
            return self._too_large(
                f"the hello lists {len(hello.methods)} methods, more than {cfg.max_hello_methods}"
            )
        identity = self.token_identity
        if identity is not None and hello.key:
            self.stats["ws.json.bad_hello"] += 1
            self.reject("protocol", "a key in the hello of a connection with a token")
            self.close(CLOSE_POLICY, "a token and a key: send one")
            return False
        if identity is None:
            identity = self.authenticate(hello.key)
        if identity is None:
            self.refuse_key(hello.key)
            return False
        session = self.open(identity)
        self.name = hello.name
        self.subscribe_private()
        names: list[str] = []
        errors: list[str] = []
        if hello.methods is not None:
            if not hello.name:
                problem = "a registration with methods needs a name"
                errors.append(_error(None, _C.BAD_REQUEST, problem))
            else:
                for service in [hello.name, *(f"{hello.name}:{m}" for m in hello.methods)]:
                    if service in self.workers:
                        continue
                    try:
                        self.workers[service] = self.broker.register_worker(
                            session,
                            service,
                            self.transport.port.clock(),
                            credit=self.transport.config.responder_credit,
                            tag=self,
                            label=f"ws:{self.cid}/{service}",
                            address=self.worker_address(hello.name),
                            idle_timeout=0,
                            busy_timeout=0,
                        )
                        names.append(service)
                    except MaitredError as exc:
                        errors.append(
                            _error(None, exc.code, f"cannot serve {service}: {exc.reason}")
                        )
        self.push(
            jc.encode(
                jc.Welcome(
                    id=self.cid, name=hello.name, services=names, trusted=not identity.restricted
                )
            )
        )
        for frame in errors:
            self.push(frame)
        return True

    def _too_large(self, reason: str) -> bool:
        """Refuse a hello too big to handle: the dialect's error (413), then close (1008)."""
        self.stats["ws.json.hello_too_large"] += 1
        self.reject("protocol", reason)
        self.push(_error(None, _C.TOO_LARGE, reason))
        self.close(CLOSE_POLICY, "hello too large")
        return False

    # -- inbound ------------------------------------------------------------------------------

    def on_binary(self, data: bytes) -> None:
        self.stats["ws.json.binary_frames"] += 1
        problem = "binary frames are not part of the maitred.json dialect"
        self.push(_error(None, _C.BAD_REQUEST, problem))

    def on_text(self, text: str) -> None:
        try:
            msg = jc.decode(text)
        except msgspec.MsgspecError as exc:
            self.stats["ws.json.invalid"] += 1
            self.reject("protocol", f"invalid message: {exc}")
            self.push(_error(None, _C.BAD_REQUEST, f"invalid message: {exc}"))
            return
        try:
            if isinstance(msg, jc.Request):
                self._request(msg)
            elif isinstance(msg, jc.Reply | jc.Partial):
                self._reply(msg)
            elif isinstance(msg, jc.Error):
                self._reply_error(msg)
            elif isinstance(msg, jc.Publish):
                self._publish(msg)
            elif isinstance(msg, jc.Subscribe):
                self._subscribe(msg)
            elif isinstance(msg, jc.Unsubscribe):
                assert self.session is not None
                self.broker.unsubscribe(self.session, msg.topic)
                self._ack(msg.id)
            else:
                self.push(_error(None, _C.BAD_REQUEST, "hello was already said"))
        except jc.JsonBodyError as exc:
            self.stats["ws.json.invalid"] += 1
            msg_id = getattr(msg, "id", None)
            self.push(
                _error(
                    None if isinstance(msg_id, msgspec.UnsetType) else msg_id,
                    _C.BAD_REQUEST,
                    exc.reason,
                )
            )

    def _stamp(self) -> tuple[tuple[str, str], ...]:
        """This connection's ``Cid``/``Uid``: the router drops whatever the client sent under
        those names (or ``Rid``, in any case) and adds these."""
        return (("Cid", self.cid), ("Uid", self.uid))

    def _ack(self, msg_id: jc.Id | msgspec.UnsetType, count: int | None = None) -> None:
        if not isinstance(msg_id, msgspec.UnsetType):
            self.push(jc.encode(jc.Ack(id=msg_id, count=_UNSET if count is None else count)))

    def _request(self, msg: jc.Request) -> None:
        assert self.session is not None
        body = jc.body_of(msg)
        timeout = None if isinstance(msg.timeout, msgspec.UnsetType) else msg.timeout
        if timeout is None and self.transport.config.request_timeout:
            timeout = self.transport.config.request_timeout
        if timeout is not None and not (0 <= timeout < 1e9):
            self.push(_error(msg.id, _C.BAD_REQUEST, "timeout must be a number of seconds >= 0"))
            return
        headers = None if isinstance(msg.headers, msgspec.UnsetType) else msg.headers
        self.broker.submit(
            self.session,
            msg.destination,
            body,
            (msg.id, msg.responder),
            self.transport.port.clock(),
            timeout=timeout,
            headers=headers,
            on_no_worker=None
            if isinstance(msg.on_no_worker, msgspec.UnsetType)
            else msg.on_no_worker,
            stamp=self._stamp(),
        )

    def _worker_for(self, msg_id: jc.Id) -> tuple[Worker | None, int]:
        try:
            token = int(msg_id)
        except ValueError:
            return None, -1
        return self.inflight.get(token), token

    def _reply(self, msg: jc.Reply | jc.Partial) -> None:
        worker, token = self._worker_for(msg.id)
        body = jc.body_of(msg)
        final = isinstance(msg, jc.Reply)
        headers = None if isinstance(msg.headers, msgspec.UnsetType) else dict(msg.headers)
        if worker is None or not self.broker.reply(
            worker, token, body, self.transport.port.clock(), final=final, headers=headers
        ):
            self.stats["ws.json.unknown_replies"] += 1
            self.push(_error(msg.id, _C.NOT_FOUND, "no request with this id"))
            return
        if final:
            del self.inflight[token]

    def _reply_error(self, msg: jc.Error) -> None:
        if msg.id is None:
            return  # a client telling us about our own error: nothing to do
        worker, token = self._worker_for(msg.id)
        try:
            code = ErrorCode(msg.code)
        except ValueError:
            code = ErrorCode.INTERNAL
        if worker is None or not self.broker.reply_error(
            worker, token, MaitredError(msg.message, code), self.transport.port.clock()
        ):
            self.stats["ws.json.unknown_replies"] += 1
            self.push(_error(msg.id, _C.NOT_FOUND, "no request with this id"))
            return
        del self.inflight[token]

    def _publish(self, msg: jc.Publish) -> None:
        assert self.session is not None
        body = jc.body_of(msg)
        headers = None if isinstance(msg.headers, msgspec.UnsetType) else msg.headers
        msg_id = None if isinstance(msg.id, msgspec.UnsetType) else msg.id
        try:
            count = self.broker.publish(self.session, msg.topic, body, headers, stamp=self._stamp())
        except MaitredError as exc:
            self.push(_error(msg_id, exc.code, exc.reason))
            return
        self._ack(msg.id, count)

    def _subscribe(self, msg: jc.Subscribe) -> None:
        assert self.session is not None
        msg_id = None if isinstance(msg.id, msgspec.UnsetType) else msg.id
        try:
            self.broker.subscribe(self.session, msg.topic)
        except Denied as exc:
            self.push(_error(msg_id, _C.FORBIDDEN, exc.reason))
            return
        except MaitredError as exc:
            self.push(_error(msg_id, exc.code, exc.reason))
            return
        self._ack(msg.id)

    # -- SessionSink ----------------------------------------------------------------------------

    def _consumer(self, request: Request) -> str:
        conn = self.transport.by_session.get(request.caller.id)
        name = getattr(conn, "name", "") if conn is not None else ""
        return name or self.transport.cid_of(request.caller)

    def deliver_request(self, worker: Worker, request: Request) -> None:
        self.inflight[request.id] = worker
        headers = dict(request.headers) if request.headers else _UNSET
        self.push(
            jc.encode(
                jc.Request(
                    id=request.id,
                    destination=request.service,
                    consumer=self._consumer(request),
                    headers=headers,
                    **jc.body_fields(request.body),
                )
            )
        )

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        msg_id, responder = request.correlation
        own = dict(headers) if headers else _UNSET
        cls = jc.Reply if kind is _FINAL else jc.Partial
        fields = jc.body_fields(body)
        self.push(jc.encode(cls(id=msg_id, responder=responder, headers=own, **fields)))

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        msg_id, responder = request.correlation
        self.push(_error(msg_id, error.code, error.reason, responder))

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        event = jc.Event(topic=topic, headers=dict(headers) if headers else _UNSET)
        for key, value in jc.body_fields(body).items():
            setattr(event, key, value)
        self.push(jc.encode(event), event=True)
