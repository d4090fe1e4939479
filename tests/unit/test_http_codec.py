"""transports/http/codec.py on bytes: the switch's JSON (rpclib rules and the RPC pattern of
docs/reference/wire.md), paths, the error table, SSE and frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.core.errors import ErrorCode
from maitred.transports.http import codec


def test_transcript_vectors() -> None:
    assert codec.id_list("foo", 0) == b'[["foo",0]]'
    assert codec.id_list("foo", None) == b"[]"
    assert (
        codec.transfer_body([("foo", 0, b"hello", codec.request_kind("cli:2"))], 0)
        == b'{"messages":[[["foo",0],{"payload":"hello","kind":["Request","cli:2"]}]],"next":"0"}'
    )
    assert (
        codec.transfer_body([("cli:2", 0, b"hello", codec.response_kind("foo", 0))], 0)
        == b'{"messages":[[["cli:2",0],{"payload":"hello","kind":["Response",["foo",0]]}]],'
        b'"next":"0"}'
    )
    assert codec.transfer_body([], -1) == b'{"messages":[],"next":"-1"}'


def test_parse_transfer() -> None:
    assert codec.parse_transfer(b'{"timeout":30.0,"queues":["foo"]}') == (-1, 30.0, ["foo"])
    assert codec.parse_transfer(b'{"from":"7","timeout":1,"queues":[],"x":1}') == (7, 1.0, [])
    for bad in (
        b"{",
        b'{"queues":"x"}',
        b'{"from":"a","queues":[]}',
        b'{"timeout":-1,"queues":[]}',
    ):
        with pytest.raises(codec.SwitchError):
            codec.parse_transfer(bad)


def test_diagnostics_omits_absent_fields() -> None:
    entry = codec.queue_entry("foo", 0, "cli:42", 5, b"x", codec.request_kind("cli:42"))
    body = codec.diagnostics_body(9, {"foo": (7, [entry])}, {"cli:42": (None, [])})
    assert body == (
        b'{"start_time":0,"current_time":9,"permanent_queues":{"foo":{"next_transfer_expected":7,'
        b'"queue_contents":[[["foo",0],{"origin":["Name","cli:42"],"time":5,"message":'
        b'{"payload":"x","kind":["Request","cli:42"]}}]]}},'
        b'"transient_queues":{"cli:42":{"queue_contents":[]}}}'
    )
    # the document built one queue at a time is the same bytes
    assert body == codec.diagnostics_document(
        9,
        [codec.diagnostics_queue("foo", 7, [entry])],
        [codec.diagnostics_queue("cli:42", None, [])],
    )
    assert codec.diagnostics_document(1, [], []) == codec.diagnostics_body(1, {}, {})


def test_numbers_are_validated_or_clamped() -> None:
    # huge timeouts are clamped (no OverflowError later), bad ones refused
    for text in (b"1e300", b"1.7976931348623157e308"):
        _, timeout, _ = codec.parse_transfer(b'{"timeout":%s,"queues":[]}' % text)
        assert timeout == codec.MAX_WAIT
    assert codec.parse_trace_args(["-1", "1e300"]) == (-1, codec.MAX_WAIT)
    assert codec.parse_trace_args(["-1", "inf"]) == (-1, codec.MAX_WAIT)
    for bad in (
        b'{"timeout":-1,"queues":[]}',
        b'{"timeout":1e309,"queues":[]}',  # beyond a double: msgspec refuses it
        b'{"from":"99999999999999999999","queues":[]}',
    ):
        with pytest.raises(codec.SwitchError):
            codec.parse_transfer(bad)
    for args in (["0", "nan"], ["0", "-1"], ["-2", "1"], ["1" * 30, "1"]):
        with pytest.raises(codec.SwitchError):
            codec.parse_trace_args(args)
    assert codec.parse_id(str(codec.MAX_ID)) == codec.MAX_ID
    for bad_id in ("-1", "x", str(codec.MAX_ID + 1)):
        with pytest.raises(codec.SwitchError):
            codec.parse_id(bad_id)
    assert codec.parse_id("-1", cursor=True) == -1


def test_trace_event_and_args() -> None:
    event = codec.trace_event(1.5, "q", codec.trace_ack("q", 3), input="a", processing_time=10)
    assert codec.trace_body([(0, event)]) == (
        b'{"events":[[0,{"time":1.5,"input":"a","queue":"q","message":["Ack",["q",3]],'
        b'"processing_time":10}]]}'
    )
    long = codec.trace_message("q", 1, b"x" * 1000, codec.request_kind("r"))
    assert len(long[2]["payload"]) == codec.TRACE_PAYLOAD_LIMIT
    assert codec.parse_trace_args([]) == (-1, 5.0)
    assert codec.parse_trace_args(["3", "0.5"]) == (3, 0.5)
    with pytest.raises(codec.SwitchError):
        codec.parse_trace_args(["x", "1"])


def test_paths() -> None:
    assert codec.split_path("/request/foo/cli%3A2?x=1") == ["request", "foo", "cli:2"]
    assert codec.split_path("/") == [""]
    assert codec.split_path("/list/") == ["list", ""]
    assert codec.split_path("/a/%ff") is None
    assert codec.not_found("/x?y") == b"Not found: /x?y"


def test_kinds_case_insensitive() -> None:
    assert codec.parse_kind(["request", "r"]) == ("Request", "r")
    assert codec.parse_kind(["RESPONSE", ["q", 2]]) == ("Response", ("q", 2))
    assert codec.decode_kind(codec.encode_kind(("Response", ("q", 2)))) == ("Response", ("q", 2))
    with pytest.raises(codec.SwitchError):
        codec.parse_kind(["Other", 1])


def test_error_table_and_body() -> None:
    assert codec.status_for(ErrorCode.NO_WORKER) == 503
    assert codec.status_for(ErrorCode.TIMEOUT) == 504
    assert codec.status_for(ErrorCode.FORBIDDEN) == 403
    assert codec.status_for(ErrorCode.TOO_LARGE) == 413
    assert all(400 <= codec.status_for(c) < 600 for c in ErrorCode)
    body = codec.error_body(ErrorCode.NO_WORKER, "no worker for x")
    assert body == b'{"error":{"code":"no_worker","reason":"no worker for x"}}'
    err = codec.error_from_body(503, body)
    assert (err.code, err.reason) == (ErrorCode.NO_WORKER, "no worker for x")
    assert codec.error_from_body(504, b"garbage").code == ErrorCode.TIMEOUT


def test_sse() -> None:
    stream = codec.sse_event("partial", b'{"a":1}') + codec.sse_event("final", b"{}", 3)
    assert stream == b'event: partial\ndata: {"a":1}\n\nevent: final\nid: 3\ndata: {}\n\n'
    assert codec.parse_sse(stream) == [("partial", b'{"a":1}'), ("final", b"{}")]


@given(st.binary())
def test_payload_text(payload: bytes) -> None:
    text = codec.payload_text(payload)
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        # not UTF-8: one code point per byte (documented: such payloads read back as UTF-8)
        assert text.encode("latin-1") == payload
    else:
        assert codec.payload_bytes(text) == payload


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_frames_round_trip(frames: list[bytes]) -> None:
    assert codec.parse_frames_json(codec.frames_json_body(frames)) == frames


@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"),
            min_size=1,
        ),
        max_size=5,
    )
)
def test_split_path_round_trip(parts: list[str]) -> None:
    from urllib.parse import quote

    raw = "/" + "/".join(quote(p, safe="") for p in parts)
    assert codec.split_path(raw) == (parts or [""])


def test_the_status_table_covers_every_error_code() -> None:
    """The REST front end's one table from error code to HTTP status."""
    assert set(codec.STATUS) == set(ErrorCode)
    for code in ErrorCode:
        if code < 530:  # maitred's own codes (530 and up) have no HTTP twin
            assert codec.status_for(code) == int(code)
