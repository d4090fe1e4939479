"""The maitred.json codec: decoding, body mapping, and the schema/docs kept in step with it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.core.errors import ErrorCode
from maitred.transports.ws import json_codec as jc

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs/reference/ws-json.schema.json").read_text())
DOC = (ROOT / "docs/reference/ws-json.md").read_text()

CLIENT = [jc.Hello, jc.Request, jc.Partial, jc.Reply, jc.Error, jc.Publish, jc.Subscribe]
CLIENT += [jc.Unsubscribe]
SERVER = [jc.Welcome, jc.Request, jc.Partial, jc.Reply, jc.Error, jc.Event, jc.Ack]


def tag(cls: type[msgspec.Struct]) -> str:
    value = msgspec.inspect.type_info(cls).tag  # type: ignore[attr-defined]
    assert isinstance(value, str)
    return value


def test_decode_the_seed_shapes() -> None:
    hello = jc.decode('{"type":"hello","key":"k","name":"svc","version":"1.0.0","methods":["a"]}')
    assert hello == jc.Hello(key="k", name="svc", version="1.0.0", methods=["a"])
    req = jc.decode(
        '{"type":"request","id":"u-1","destination":"svc:a","responder":"cb",'
        '"payload":{"x":[1,2]},"consumer":"ignored","extra":"ignored too"}'
    )
    assert isinstance(req, jc.Request)
    assert req.destination == "svc:a" and req.responder == "cb"
    assert jc.body_of(req) == (b'{"x":[1,2]}',)


@pytest.mark.parametrize(
    "text",
    [
        *("", "[]", "{}", '{"type":"nope"}', '{"type":"request","id":1}'),
        *('{"type":"hello","key":1}', "nul"),
    ],
)
def test_decode_errors(text: str) -> None:
    with pytest.raises(msgspec.MsgspecError):
        jc.decode(text)


def test_body_mapping() -> None:
    assert jc.body_fields([b'{"a":1}']) == {"payload": msgspec.Raw(b'{"a":1}')}
    assert jc.body_fields([b"hello"]) == {"data": base64.b64encode(b"hello").decode()}
    assert jc.body_fields([b""]) == {"data": ""}
    assert jc.body_fields([]) == {"frames": []}
    assert jc.body_fields([b"1", b"2"]) == {"frames": ["MQ==", "Mg=="]}
    with pytest.raises(jc.JsonBodyError):
        jc.body_of(jc.Publish(topic="t", data="!!"))
    with pytest.raises(jc.JsonBodyError):
        jc.body_of(jc.Publish(topic="t", data="", frames=[]))
    assert jc.body_of(jc.Publish(topic="t")) == ()


def test_encode_omits_unset_fields() -> None:
    out = json.loads(jc.encode(jc.Reply(id=3, **jc.body_fields([b"[1]"]))))
    assert out == {"type": "reply", "id": 3, "payload": [1]}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=4))
def test_body_round_trip(frames: list[bytes]) -> None:
    msg = jc.Reply(id=1, **jc.body_fields(frames))
    again = jc.decode(jc.encode(msg))
    assert isinstance(again, jc.Reply)
    body = jc.body_of(again)
    if len(frames) == 1 and isinstance(again.payload, msgspec.Raw):
        # valid JSON travels as a JSON value: the same value, maybe re-spaced
        assert json.loads(body[0]) == json.loads(frames[0])
    else:
        assert list(body) == frames


def test_schema_matches_the_codec() -> None:
    defs = SCHEMA["$defs"]
    for cls in {*CLIENT, *SERVER}:
        name = tag(cls)
        assert name in defs, name
        fields = {f.encode_name for f in msgspec.structs.fields(cls)} | {"type"}
        assert set(defs[name]["properties"]) == fields, name
        required = {f.encode_name for f in msgspec.structs.fields(cls) if f.required}
        assert set(defs[name]["required"]) == required | {"type"}, name
        assert f'"type": "{name}"' in DOC or f"`{name}`" in DOC, name
    assert SCHEMA["x-client-messages"] == [tag(c) for c in CLIENT]
    assert SCHEMA["x-server-messages"] == [tag(c) for c in SERVER]


# -- errors: code -> wire form (the maitred.json transport's one table) --------------------------


def test_every_error_code_has_its_wire_code() -> None:
    assert set(jc.WIRE_CODES) == set(ErrorCode)
    assert all(jc.WIRE_CODES[c] == int(c) for c in ErrorCode)


def test_error_message() -> None:
    assert msgspec.json.decode(jc.error(7, ErrorCode.NO_WORKER, "no worker for s")) == {
        "type": "error",
        "id": 7,
        "code": 503,
        "message": "no worker for s",
    }
    assert msgspec.json.decode(jc.error(None, ErrorCode.TIMEOUT, "late", "w1")) == {
        "type": "error",  # no id: a null id is left out
        "code": 504,
        "message": "late",
        "responder": "w1",
    }
