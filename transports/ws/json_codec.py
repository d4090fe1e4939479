"""The maitred.json WebSocket dialect (docs/reference/ws-json.md), pure: msgspec Structs tagged
by ``type``.

One text frame is one JSON object. The schema is written down in docs/reference/ws-json.md and
docs/reference/ws-json.schema.json (a test keeps the three in step).

Bodies: the core carries opaque frames; here a message has at most one of

- ``payload``: any JSON value, carried as its JSON text in one frame;
- ``data``: base64 of one frame of arbitrary bytes;
- ``frames``: a list of base64 strings, one per frame (for multi-frame bodies, e.g. MDP).

On delivery a one-frame body that is valid JSON (UTF-8) becomes ``payload``, any other one-frame
body ``data``, and a body of several frames (or none) ``frames``. A message without any of the
three has an empty body (no frames).

No I/O here (import-linter contract "codecs do no I/O").
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

from maitred.core.errors import ErrorCode, ProtocolError

__all__ = [
    "Ack",
    "ClientMessage",
    "Error",
    "Event",
    "Hello",
    "JsonBodyError",
    "Partial",
    "Publish",
    "Reply",
    "Request",
    "Subscribe",
    "Unsubscribe",
    "Welcome",
    "body_fields",
    "body_of",
    "decode",
    "encode",
]

Id = str | int
Headers = dict[str, str]


class _Msg(Struct, tag_field="type", omit_defaults=True, kw_only=True):
    pass


class _WithBody(_Msg, kw_only=True):
    payload: Raw | UnsetType = UNSET
    data: str | UnsetType = UNSET
    frames: list[str] | UnsetType = UNSET
    headers: Headers | UnsetType = UNSET


class Hello(_Msg, tag="hello", kw_only=True):
    """Client → broker, first frame: the key (none: a bearer token on the opening handshake,
    or anonymous) and the registration (``methods`` absent: a
    consumer; a list, even empty: a service, worker of ``name`` and of each ``name:method``)."""

    key: str = ""
    name: str = ""
    version: str = ""
    methods: list[str] | None = None


class Welcome(_Msg, tag="welcome", kw_only=True):
    """Broker → client: the handshake succeeded."""

    id: str
    name: str = ""
    services: list[str] = []
    trusted: bool = False


class Request(_WithBody, tag="request", kw_only=True):
    """Client → broker: call ``destination``; broker → service: serve it (``id`` is then the
    broker's, to be echoed in the service's partial/reply/error)."""

    id: Id
    destination: str
    responder: str | UnsetType = UNSET
    timeout: float | UnsetType = UNSET
    on_no_worker: Literal["wait", "fail"] | UnsetType = UNSET
    #: broker → service: who asked (registered name, or connection id)
    consumer: str | UnsetType = UNSET


class _Answer(_WithBody, kw_only=True):
    """What a service sends back for a request (broker → client: with its ``responder``)."""

    id: Id
    responder: str | UnsetType = UNSET


class Partial(_Answer, tag="partial"):
    """One reply of a stream: more follow, up to the ``reply``."""


class Reply(_Answer, tag="reply"):
    """The final reply: the request is done."""


class Error(_Msg, tag="error", kw_only=True):
    """Either direction: a request failed (``id`` of the request), or a message was refused
    (``id`` of that message, null when it had none). ``code`` follows docs/reference/errors.md."""

    id: Id | None = None
    code: int = 500
    message: str = ""
    responder: str | UnsetType = UNSET


class Publish(_WithBody, tag="publish", kw_only=True):
    topic: str
    #: optional: the broker answers ``ack`` (or ``error``) with it
    id: Id | UnsetType = UNSET


class _TopicCommand(_Msg, kw_only=True):
    """Client → broker: start or stop receiving ``topic``; with an ``id``, the broker answers
    ``ack`` (or ``error``)."""

    topic: str
    id: Id | UnsetType = UNSET


class Subscribe(_TopicCommand, tag="subscribe"):
    """Receive the publications on ``topic`` (a name or a pattern) as ``event`` messages."""


class Unsubscribe(_TopicCommand, tag="unsubscribe"):
    """Stop receiving ``topic`` (the name or pattern given to ``subscribe``)."""


class Ack(_Msg, tag="ack", kw_only=True):
    """Broker → client: the publish/subscribe/unsubscribe with this ``id`` was done."""

    id: Id
    #: publish: how many sessions it reached
    count: int | UnsetType = UNSET


class Event(_WithBody, tag="event", kw_only=True):
    """Broker → client: a publication on ``topic`` matching a subscription."""

    topic: str


ClientMessage = Hello | Request | Partial | Reply | Error | Publish | Subscribe | Unsubscribe
ServerMessage = Welcome | Request | Partial | Reply | Error | Event | Ack

_decoder = msgspec.json.Decoder(ClientMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_encoder = msgspec.json.Encoder()
_json_check = msgspec.json.Decoder()


class JsonBodyError(ProtocolError, ValueError):
    """Body frames a JSON message cannot carry (bad base64); ``reason`` says why."""


def decode(text: str | bytes) -> ClientMessage:
    """A client message; raises ``msgspec.ValidationError``/``DecodeError`` (both
    ``msgspec.MsgspecError``) for anything else."""
    msg: ClientMessage = _decoder.decode(text)
    return msg


def decode_server(text: str | bytes) -> ServerMessage:
    """A broker message (for clients)."""
    msg: ServerMessage = _server_decoder.decode(text)
    return msg


def encode(msg: _Msg) -> str:
    return _encoder.encode(msg).decode()


#: the maitred.json transport's one table from error code to wire form: the ``code`` of an
#: ``error`` message (the number of docs/reference/errors.md, for every code)
WIRE_CODES: dict[ErrorCode, int] = {code: int(code) for code in ErrorCode}


def error(
    msg_id: Id | None, code: ErrorCode, reason: str, responder: str | UnsetType = UNSET
) -> str:
    """An ``error`` message: a request (``msg_id``) failed, or a message was refused."""
    return encode(Error(id=msg_id, code=WIRE_CODES[code], message=reason, responder=responder))


def body_of(msg: _WithBody) -> tuple[bytes, ...]:
    """The body frames a message carries. Raises :class:`JsonBodyError`."""
    given = (msg.payload is not UNSET) + (msg.data is not UNSET) + (msg.frames is not UNSET)
    if given > 1:
        raise JsonBodyError("give at most one of payload, data, frames")
    try:
        if not isinstance(msg.payload, UnsetType):
            return (bytes(msg.payload),)
        if not isinstance(msg.data, UnsetType):
            return (base64.b64decode(msg.data, validate=True),)
        if not isinstance(msg.frames, UnsetType):
            return tuple(base64.b64decode(f, validate=True) for f in msg.frames)
    except (binascii.Error, ValueError) as exc:
        raise JsonBodyError(f"bad base64: {exc}") from None
    return ()


def body_fields(body: Sequence[bytes]) -> dict[str, Any]:
    """Keyword arguments (payload/data/frames) that carry ``body``."""
    if len(body) == 1:
        frame = bytes(body[0])
        if frame:
            try:
                _json_check.decode(frame)
            except msgspec.DecodeError:
                pass
            else:
                return {"payload": Raw(frame)}
        return {"data": base64.b64encode(frame).decode()}
    return {"frames": [base64.b64encode(bytes(f)).decode() for f in body]}


def payload_bytes(value: object) -> bytes:
    """A JSON value as the body frame a ``payload`` carries."""
    return _encoder.encode(value)
