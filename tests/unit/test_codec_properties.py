"""Random bytes into every pure codec's decoders: each returns a well-formed value or raises its
documented refusal, never anything else (a crash would be a traceback at ERROR for peer input).

What the codecs' own test files did not cover yet: the maitred.json decoders and ``body_of``,
the middleman parser on arbitrary bytes as they arrive in a text frame (and on mutated valid
frames), the HTTP transport's decoders (message-switch bodies, kinds, ids, paths, trace
arguments, frames JSON, SSE, error bodies) and MDP's ``parse_error_body``. The MDP frame parsers
have their own total properties in test_mdp_codec.py. bench/fuzz.py runs the same targets with
a million inputs each (not in CI); the last test here runs it briefly so it keeps working."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maitred.core.errors import ErrorCode, MaitredError
from maitred.transports.http import codec as http_codec
from maitred.transports.mdp import codec as mdp_codec
from maitred.transports.ws import json_codec, mm_codec

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TAGS = ["hello", "request", "partial", "reply", "error", "publish", "subscribe", "unsubscribe"]
TAGS += ["welcome", "ack", "event", "nope"]
FIELDS = ["id", "key", "name", "methods", "destination", "payload", "data", "frames", "topic"]
FIELDS += ["headers", "code", "message", "timeout", "on_no_worker", "count", "services"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@st.composite
def near_messages(draw: st.DrawFn) -> bytes:
    """A JSON object with a known (or unknown) ``type`` and fields of any JSON type."""
    obj = {"type": draw(st.sampled_from(TAGS))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        obj[name] = draw(json_values | st.text(alphabet="aGk=!-_", max_size=12))
    return json.dumps(obj).encode()


def _check_client_message(data: bytes | str) -> None:
    try:
        msg = json_codec.decode(data)
    except msgspec.MsgspecError:
        return
    assert isinstance(msg, json_codec.ClientMessage.__args__)  # type: ignore[attr-defined]
    if isinstance(msg, json_codec._WithBody):
        try:
            body = json_codec.body_of(msg)
        except json_codec.JsonBodyError as exc:
            assert exc.reason
        else:
            assert all(isinstance(frame, bytes) for frame in body)


@PROPS
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode) | near_messages())
def test_json_decode_is_total(data: bytes) -> None:
    _check_client_message(data)
    _check_client_message(data.decode("utf-8", "replace"))
    try:
        json_codec.decode_server(data)
    except msgspec.MsgspecError:
        pass


def _mm_frames() -> st.SearchStrategy[str]:
    valid = st.builds(
        mm_codec.encode,
        st.sampled_from(["REQ", "RES", "PUB", "SUB", "EREQ", "INT"]),
        st.text(max_size=10),
        st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), max_size=3),
        st.text(max_size=20),
    )
    cut = st.tuples(valid, st.integers(0, 60), st.sampled_from(["", "\r", "\n", ".", ":", "\0"]))
    return st.one_of(
        st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")),
        cut.map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]),
    )


@PROPS
@given(_mm_frames())
def test_middleman_parse_is_total(frame: str) -> None:
    try:
        msg = mm_codec.parse(frame)
    except mm_codec.ParseError as exc:
        assert exc.reason
        return
    assert isinstance(msg.command, str) and isinstance(msg.target, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in msg.headers)
    assert isinstance(msg.body, str)


@PROPS
@given(st.binary(max_size=200))
def test_http_switch_decoders_refuse_with_switch_error(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for decode in (
        http_codec.parse_transfer,
        lambda d: http_codec.parse_kind(json.loads(d)) if _is_json(d) else None,
        lambda d: http_codec.parse_id(text),
        lambda d: http_codec.parse_id(text, cursor=True),
        lambda d: http_codec.parse_trace_args(text.split("/")),
    ):
        try:
            decode(data)
        except http_codec.SwitchError as exc:
            assert exc.reason


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


@PROPS
@given(json_values)
def test_http_parse_kind_is_total(value: object) -> None:
    """A message kind as a peer sends it (decoded JSON); decode_kind reads the store's own."""
    try:
        name, arg = http_codec.parse_kind(value)
    except http_codec.SwitchError:
        return
    assert name in ("Request", "Response")
    assert http_codec.parse_kind(http_codec.kind_json((name, arg))) == (name, arg)


@PROPS
@given(st.binary(max_size=200))
def test_http_transfer_values_are_in_range(data: bytes) -> None:
    try:
        start, wait, queues = http_codec.parse_transfer(data)
    except http_codec.SwitchError:
        return
    assert -1 <= start <= http_codec.MAX_ID
    assert 0 <= wait <= http_codec.MAX_WAIT
    assert all(isinstance(q, str) for q in queues)


@PROPS
@given(st.text(max_size=100))
def test_http_split_path_is_total(path: str) -> None:
    parts = http_codec.split_path(path)
    assert parts is None or all(isinstance(p, str) and "/" not in p.split("%")[0] for p in parts)


@PROPS
@given(st.binary(max_size=200) | near_messages(), st.integers(100, 599))
def test_http_body_decoders(data: bytes, status: int) -> None:
    error = http_codec.error_from_body(status, data)
    assert isinstance(error, MaitredError) and isinstance(error.code, ErrorCode)
    try:
        frames = http_codec.parse_frames_json(data)
    except ValueError:
        pass
    else:
        assert all(isinstance(f, bytes) for f in frames)
    for event, payload in http_codec.parse_sse(data.replace(b"\x80", b"")):
        assert isinstance(event, str) and isinstance(payload, bytes)


@PROPS
@given(st.lists(st.binary(max_size=6) | st.sampled_from([b"403", b"503", b"999"]), max_size=3))
def test_mdp_parse_error_body(body: list[bytes]) -> None:
    parsed = mdp_codec.parse_error_body(body)
    if parsed is not None:
        code, reason = parsed
        assert isinstance(code, ErrorCode) and isinstance(reason, str)
        assert len(body) == 2 and body[0][:1] in (b"4", b"5")


@pytest.mark.parametrize("target", ["mm", "json", "mdp", "http", "zap"])
def test_the_fuzz_script_runs(target: str) -> None:
    from bench import fuzz

    assert fuzz.main(["--target", target, "-n", "300", "--progress", "0"]) == 0
