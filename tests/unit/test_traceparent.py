"""The W3C trace context codec (maitred.core.tracing): pure functions, no tracer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.core.routing.headers import HeaderPairs
from maitred.core.tracing import (
    TraceContext,
    format_traceparent,
    parse_traceparent,
    trace_headers,
    trace_in,
    with_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
GOOD = f"00-{TRACE}-{SPAN}-01"

_hex = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)


def test_a_valid_header_parses() -> None:
    ctx = parse_traceparent(GOOD)
    assert ctx == TraceContext(TRACE, SPAN, 1)
    assert ctx is not None and ctx.sampled
    unsampled = parse_traceparent(f"00-{TRACE}-{SPAN}-00")
    assert unsampled is not None and not unsampled.sampled


@pytest.mark.parametrize(
    "value",
    [
        "",
        GOOD[:-1],  # too short
        GOOD + "0",  # version 00 is exactly 55 characters
        GOOD + "-extra",  # ... even with a further field
        f"00-{TRACE[:-1]}g-{SPAN}-01",  # not hex
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper-case hex
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"0g-{TRACE}-{SPAN}-01",  # version not hex
        f"00_{TRACE}-{SPAN}-01",  # wrong separator
        f"00-{TRACE}_{SPAN}-01",
        f"00-{TRACE}-{SPAN}_01",
        f"00-{TRACE}-{SPAN}-0x",  # flags not hex
        f"01-{TRACE}-{SPAN}-01x",  # a later version: more fields only after a dash
    ],
)
def test_malformed_headers_are_refused(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_may_append_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-whatever") == TraceContext(TRACE, SPAN, 1)
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01") == TraceContext(TRACE, SPAN, 1)


@given(st.text(max_size=80))
def test_any_string_parses_or_is_refused_never_raises(value: str) -> None:
    ctx = parse_traceparent(value)
    if ctx is not None:  # what parses formats back to its version-00 form
        assert len(ctx.trace_id) == 32 and len(ctx.span_id) == 16 and 0 <= ctx.flags <= 255
        assert format_traceparent(ctx) == "00" + value[2:55]


@given(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    st.integers(0, 255),
)
def test_format_then_parse_round_trips(trace_id: str, span_id: str, flags: int) -> None:
    ctx = TraceContext(trace_id, span_id, flags)
    parsed = parse_traceparent(format_traceparent(ctx))
    if trace_id == "0" * 32 or span_id == "0" * 16:
        assert parsed is None
    else:
        assert parsed == ctx


@given(_hex, _hex, st.text(max_size=4))
def test_near_misses_are_refused(a: str, b: str, sep: str) -> None:
    value = f"00{sep}{a}{sep}{b}{sep}01"
    ctx = parse_traceparent(value)
    assert ctx is None or (sep == "-" and len(a) == 32 and len(b) == 16)


def test_trace_headers_ignore_case_and_keep_the_first() -> None:
    headers = HeaderPairs(
        [("X", "1"), ("Traceparent", GOOD), ("TRACESTATE", "a=b"), ("traceparent", "second")]
    )
    assert trace_headers(headers) == {"traceparent": GOOD, "tracestate": "a=b"}
    assert trace_headers(None) == {}
    assert trace_headers({"tracexxxxxx": "1", "Content-Type": "x"}) == {}


def test_trace_in_reads_a_case_insensitive_mapping() -> None:
    assert trace_in({}) is None
    assert trace_in({"traceparent": GOOD}) == {"traceparent": GOOD}
    assert trace_in({"traceparent": GOOD, "tracestate": "k=v"}) == {
        "traceparent": GOOD,
        "tracestate": "k=v",
    }


def test_with_traceparent_replaces_in_any_case_and_keeps_the_rest() -> None:
    headers = HeaderPairs([("Traceparent", "old"), ("A", "1"), ("tracestate", "k=v")])
    out = with_traceparent(headers, GOOD)
    assert out.pairs == (("A", "1"), ("tracestate", "k=v"), ("Traceparent", GOOD))
    assert with_traceparent(None, GOOD).pairs == (("traceparent", GOOD),)
    replaced = with_traceparent(headers, GOOD, "x=y")
    assert replaced.pairs == (("A", "1"), ("Traceparent", GOOD), ("tracestate", "x=y"))
