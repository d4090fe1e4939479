"""Pure encoding for the HTTP transport: message-switch paths and JSON (OCaml rpclib rules,
docs/reference/wire.md), REST error bodies and the error → status table, SSE framing, frames
as base64 JSON. No I/O: bytes and Python values in, bytes and Python values out.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec

from maitred.core.errors import ErrorCode, MaitredError, ProtocolError

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

# -- message-switch ----------------------------------------------------------------------------

PLEASE_LOG_IN = b"Please log in."
INTERNAL_ERROR = b"Internal Server Error"

#: ``("Request", reply_to)`` or ``("Response", (queue, n))``
Kind = tuple[str, Any]


class SwitchError(ProtocolError):
    """Bad input on a switch route: answered 500 ``Internal Server Error`` (the switch's own
    form for it), counted ``http.switch.bad_input``."""


def refusal(status: int, reason: str) -> bytes:
    """The switch's plain-text error form for a refusal: ``Forbidden: why`` (403),
    ``Too Many Requests: why`` (429), ``Payload Too Large: why`` (413: past the durable store's
    limit) or ``Service Unavailable: why`` (503: the durable store cannot take it now)."""
    head = _REFUSALS.get(status, b"Too Many Requests")
    return head + b": " + reason.encode("utf-8", "replace")


_REFUSALS = {403: b"Forbidden", 413: b"Payload Too Large", 503: b"Service Unavailable"}


def not_found(uri: str) -> bytes:
    return b"Not found: " + uri.encode("utf-8", "surrogateescape")


def split_path(raw_path: str) -> list[str] | None:
    """Path segments, split on ``/`` then percent-decoded (query ignored). None when a segment
    is not valid UTF-8 after decoding."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    parts = path.split("/")
    if parts and parts[0] == "":
        parts = parts[1:]
    try:
        return [unquote_to_bytes(p).decode("utf-8") for p in parts]
    except UnicodeDecodeError:
        return None


def payload_text(payload: bytes) -> str:
    """A payload as a JSON string: UTF-8 text as is, other bytes one code point each (latin-1).
    The string cannot say which: :func:`payload_bytes` gives UTF-8 text back unchanged, but
    bytes that are not UTF-8 come back as the UTF-8 of those code points (not the original)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def payload_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # pragma: no cover - lone surrogates from a strange client
        return text.encode("utf-8", "surrogatepass")


def request_kind(reply_to: str) -> Kind:
    return ("Request", reply_to)


def response_kind(queue: str, n: int) -> Kind:
    return ("Response", (queue, n))


def kind_json(kind: Kind) -> list[Any]:
    name, arg = kind
    if name == "Response":
        return ["Response", [arg[0], arg[1]]]
    return [name, arg]


def encode_kind(kind: Kind) -> bytes:
    return _enc.encode(kind_json(kind))


def decode_kind(raw: bytes) -> Kind:
    """The inverse of :func:`encode_kind` (variant names case-insensitive)."""
    value = _dec.decode(raw)
    return parse_kind(value)


def parse_kind(value: Any) -> Kind:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        name = value[0].lower()
        if name == "request" and isinstance(value[1], str):
            return ("Request", value[1])
        arg = value[1]
        if name == "response" and isinstance(arg, list) and len(arg) == 2:
            q, n = arg
            if isinstance(q, str) and isinstance(n, int):
                return ("Response", (q, n))
    raise SwitchError(f"bad message kind {value!r}")


def message_json(
    payload: bytes, kind: Kind, trace: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A message as JSON; ``trace``: its W3C trace context (``traceparent``, ``tracestate``),
    added as fields of those names when there is one."""
    message = {"payload": payload_text(payload), "kind": kind_json(kind)}
    if trace:
        message.update(trace)
    return message


def id_list(queue: str, n: int | None) -> bytes:
    """The body of a send: ``[["q",n]]``, or ``[]`` when the queue does not exist."""
    return b"[]" if n is None else _enc.encode([[queue, n]])


class TransferRequest(msgspec.Struct):
    queues: list[str]
    timeout: float = 0.0
    #: the cursor (a decimal string; absent: -1)
    from_: str | None = msgspec.field(default=None, name="from")


_transfer_dec = msgspec.json.Decoder(TransferRequest)


#: the longest wait a Transfer or a trace read is given, in seconds: a larger timeout (up to
#: infinity) is clamped to it; the client simply polls again
MAX_WAIT = 3600.0
#: ids and cursors are 63-bit (they are encoded as JSON integers)
MAX_ID = (1 << 63) - 1


def parse_wait(value: float) -> float:
    """A timeout in seconds: SwitchError when negative or NaN, clamped to ``MAX_WAIT``."""
    if not (value >= 0):
        raise SwitchError("bad timeout")
    return min(float(value), MAX_WAIT)


def parse_id(text: str, *, cursor: bool = False) -> int:
    """A message id (or with ``cursor``, a Transfer cursor, which may be -1): SwitchError when
    it is not an integer in range."""
    try:
        n = int(text)
    except ValueError:
        raise SwitchError(f"bad id {text[:40]!r}") from None
    if not ((-1 if cursor else 0) <= n <= MAX_ID):
        raise SwitchError(f"id out of range: {text[:40]!r}")
    return n


def parse_transfer(body: bytes) -> tuple[int, float, list[str]]:
    """(from, timeout, queues) of a Transfer body; SwitchError on bad input; the timeout is
    clamped to ``MAX_WAIT``."""
    try:
        req = _transfer_dec.decode(body)
    except (msgspec.DecodeError, ValueError) as exc:
        raise SwitchError(f"bad transfer request: {exc}") from None
    start = -1 if req.from_ is None else parse_id(req.from_, cursor=True)
    return start, parse_wait(req.timeout), req.queues


def transfer_body(
    messages: Iterable[
        tuple[str, int, bytes, Kind] | tuple[str, int, bytes, Kind, Mapping[str, str] | None]
    ],
    next_cursor: int,
) -> bytes:
    """A Transfer's answer; a message's optional fifth item is its trace context."""
    return _enc.encode(
        {
            "messages": [
                [[m[0], m[1]], message_json(m[2], m[3], m[4] if len(m) > 4 else None)]
                for m in messages
            ],
            "next": str(next_cursor),
        }
    )


def names_body(names: Iterable[str]) -> bytes:
    return _enc.encode(list(names))


def origin_json(origin: str) -> list[Any]:
    """``Name`` origins are login tokens; ``Anonymous`` (a connection number) are not used."""
    return ["Name", origin]


def queue_entry(
    queue: str, n: int, origin: str, time_ns: int, payload: bytes, kind: Kind
) -> list[Any]:
    return [
        [queue, n],
        {"origin": origin_json(origin), "time": time_ns, "message": message_json(payload, kind)},
    ]


def diagnostics_body(
    current_ns: int,
    permanent: dict[str, tuple[int | None, list[list[Any]]]],
    transient: dict[str, tuple[int | None, list[list[Any]]]],
) -> bytes:
    """``GET /``: queues map name -> (next_transfer_expected or None, entries)."""

    def table(queues: dict[str, tuple[int | None, list[list[Any]]]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (expected, entries) in queues.items():
            q: dict[str, Any] = {}
            if expected is not None:
                q["next_transfer_expected"] = expected
            q["queue_contents"] = entries
            out[name] = q
        return out

    return _enc.encode(
        {
            "start_time": 0,
            "current_time": current_ns,
            "permanent_queues": table(permanent),
            "transient_queues": table(transient),
        }
    )


def diagnostics_queue(name: str, expected: int | None, entries: list[list[Any]]) -> bytes:
    """One queue of ``GET /`` (``"name":{...}``), for :func:`diagnostics_document`."""
    q: dict[str, Any] = {}
    if expected is not None:
        q["next_transfer_expected"] = expected
    q["queue_contents"] = entries
    return _enc.encode(name) + b":" + _enc.encode(q)


def diagnostics_document(current_ns: int, permanent: list[bytes], transient: list[bytes]) -> bytes:
    """``GET /`` from queues encoded one at a time (the same bytes as
    :func:`diagnostics_body`)."""
    return b"".join(
        (
            b'{"start_time":0,"current_time":',
            _enc.encode(current_ns),
            b',"permanent_queues":{',
            b",".join(permanent),
            b'},"transient_queues":{',
            b",".join(transient),
            b"}}",
        )
    )


#: bytes of a payload shown in the trace and in diagnostics
TRACE_PAYLOAD_LIMIT = 256


def trace_message(queue: str, n: int, payload: bytes, kind: Kind) -> list[Any]:
    return ["Message", [queue, n], message_json(payload[:TRACE_PAYLOAD_LIMIT], kind)]


def trace_ack(queue: str, n: int) -> list[Any]:
    return ["Ack", [queue, n]]


def trace_event(
    time: float,
    queue: str,
    message: list[Any],
    *,
    input: str | None = None,
    output: str | None = None,
    processing_time: int | None = None,
) -> dict[str, Any]:
    """One trace event; absent fields are omitted (rpclib's rule for options)."""
    event: dict[str, Any] = {"time": time}
    if input is not None:
        event["input"] = input
    event["queue"] = queue
    if output is not None:
        event["output"] = output
    event["message"] = message
    if processing_time is not None:
        event["processing_time"] = processing_time
    return event


def trace_body(events: Sequence[tuple[int, dict[str, Any]]]) -> bytes:
    return _enc.encode({"events": [[i, e] for i, e in events]})


def parse_trace_args(parts: Sequence[str]) -> tuple[int, float]:
    """``/trace`` → (-1, 5.0); ``/trace/<from>/<timeout>``."""
    if not parts:
        return -1, 5.0
    if len(parts) != 2:
        raise SwitchError("trace takes /<from>/<timeout>")
    try:
        timeout = float(parts[1])
    except ValueError:
        raise SwitchError("bad trace arguments") from None
    return parse_id(parts[0], cursor=True), parse_wait(timeout)


# -- REST ----------------------------------------------------------------------------------------

#: the one table from error code to HTTP status (docs/reference/http.md)
STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_IMPLEMENTED: 501,
    ErrorCode.WORKER_DIED: 502,
    ErrorCode.NO_WORKER: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.CANCELLED: 500,
}


def status_for(code: ErrorCode) -> int:
    return STATUS.get(code, 500)


def error_body(code: ErrorCode, reason: str) -> bytes:
    return _enc.encode({"error": {"code": code.name.lower(), "reason": reason}})


def error_from_body(status: int, body: bytes) -> MaitredError:
    """The client side of :func:`error_body`."""
    code = ErrorCode.INTERNAL
    reason = body.decode("utf-8", "replace")
    try:
        err = _dec.decode(body)["error"]
        code = ErrorCode[str(err["code"]).upper()]
        reason = str(err["reason"])
    except (msgspec.DecodeError, KeyError, TypeError, ValueError):
        for c, s in STATUS.items():
            if s == status:
                code = c
                break
    return MaitredError(reason, code)


def frames_json(frames: Sequence[bytes]) -> dict[str, Any]:
    return {"frames": [base64.b64encode(f).decode("ascii") for f in frames]}


def frames_json_body(frames: Sequence[bytes]) -> bytes:
    return _enc.encode(frames_json(frames))


def parse_frames_json(body: bytes) -> list[bytes]:
    """``{"frames": ["<base64>", ...]}`` → frames; ValueError on bad input."""
    try:
        value = _dec.decode(body)
        frames = value["frames"]
        if not isinstance(frames, list):
            raise ValueError("frames must be a list")
        return [base64.b64decode(f, validate=True) for f in frames]
    except (msgspec.DecodeError, KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"expected {{'frames': [base64, ...]}}: {exc}") from None


def encode_json(value: Any) -> bytes:
    return _enc.encode(value)


def sse_event(event: str, data: bytes, event_id: int | None = None) -> bytes:
    """One Server-Sent Event; ``data`` is one line of JSON (no newlines)."""
    head = b"event: " + event.encode() + b"\n"
    if event_id is not None:
        head += b"id: %d\n" % event_id
    return head + b"data: " + data + b"\n\n"


def topic_event_data(topic: str, frames: Sequence[bytes], headers: dict[str, str]) -> bytes:
    """A publication as SSE data: topic, base64 frames, headers, and ``text`` (the frames
    joined) when they are UTF-8."""
    value: dict[str, Any] = {"topic": topic, **frames_json(frames)}
    if headers:
        value["headers"] = headers
    try:
        value["text"] = b"".join(frames).decode("utf-8")
    except UnicodeDecodeError:
        pass
    return _enc.encode(value)


def parse_sse(stream: bytes) -> list[tuple[str, bytes]]:
    """(event, data) of each complete event in ``stream`` (for clients and tests)."""
    out: list[tuple[str, bytes]] = []
    for block in stream.split(b"\n\n"):
        if not block.strip():
            continue
        event, data = "message", b""
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                event = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        out.append((event, data))
    return out
