"""Tracing across protocols: the W3C trace context codec and the broker's span tracer.

A request carries a W3C ``traceparent`` (and ``tracestate``) in its headers when its caller sent
one: every transport that has headers puts them there (REST and switch request headers, the
WebSocket JSON dialect's ``headers`` field, middleman headers), and every transport that has
headers hands the request's headers on to its worker. With ``[tracing]`` configured, a
:class:`SpanTracer` (one of the router's tracers, see ``Router.tracers``) starts one span per
request when the router accepts it, as a child of the caller's context (or of a new trace),
replaces the request's ``traceparent`` with the span's own (so the worker's parent is the
broker's span) and sets ``Request.trace`` to it (what an HTTP response carries back). The span
ends when the request ends: its final reply, an error (refused, expired, worker gone), or the
caller's cancel.

The OpenTelemetry implementation lives in :mod:`maitred.core.otel` and is imported only by
:func:`open_tracer`, so a broker without ``[tracing]`` never imports ``opentelemetry``.

The codec functions are pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple, Protocol

from maitred.core.clock import Clock
from maitred.core.routing.headers import HeaderPairs, pairs_of
from maitred.core.routing.model import Request

if TYPE_CHECKING:
    from maitred.core.config import TracingSection

__all__ = [
    "TRACE_HEADERS",
    "SpanTracer",
    "TraceContext",
    "format_traceparent",
    "open_tracer",
    "parse_traceparent",
    "trace_headers",
    "trace_in",
    "with_traceparent",
]

#: the W3C trace context header names (lower case)
TRACE_HEADERS = ("traceparent", "tracestate")

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TraceContext(NamedTuple):
    """A parsed ``traceparent``: lower-case hex ids and the trace flags (bit 0: sampled)."""

    trace_id: str
    span_id: str
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)


def _is_hex(text: str) -> bool:
    return all(c in _HEX for c in text)


def parse_traceparent(value: str) -> TraceContext | None:
    """The context of a W3C ``traceparent`` header value, or None when it is not a valid one
    (wrong length or shape, upper-case or non-hex digits, an all-zero trace or span id, version
    ``ff``). Version ``00`` must be exactly 55 characters; a later version may append fields
    after a ``-``, which are ignored (as the recommendation says)."""
    if len(value) < 55:
        return None
    version = value[:2]
    if not _is_hex(version) or version == "ff":
        return None
    if len(value) > 55 and (version == "00" or value[55] != "-"):
        return None
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    trace_id, span_id, flags = value[3:35], value[36:52], value[53:55]
    if not (_is_hex(trace_id) and _is_hex(span_id) and _is_hex(flags)):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, int(flags, 16))


def format_traceparent(context: TraceContext) -> str:
    """The version-``00`` header value of ``context``."""
    return f"00-{context.trace_id}-{context.span_id}-{context.flags & 0xFF:02x}"


def trace_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The trace context headers among ``headers`` (names compared without regard to case),
    under their lower-case names; the first of repeated names. Empty when there are none."""
    found: dict[str, str] = {}
    for name, value in pairs_of(headers):
        if len(name) in (10, 11):  # "tracestate", "traceparent"
            key = name.lower()
            if key in TRACE_HEADERS and key not in found:
                found[key] = value
    return found


def trace_in(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The trace context of an incoming message whose header mapping compares names without
    regard to case (an HTTP library's), as request headers for the router; None (the common
    case, one lookup) when it has no ``traceparent``."""
    traceparent = headers.get("traceparent")
    if traceparent is None:
        return None
    found = {"traceparent": traceparent}
    tracestate = headers.get("tracestate")
    if tracestate is not None:
        found["tracestate"] = tracestate
    return found


def with_traceparent(
    headers: Mapping[str, str] | None, traceparent: str, tracestate: str | None = None
) -> HeaderPairs:
    """``headers`` with their ``traceparent`` (any case) replaced by ``traceparent``, and their
    ``tracestate`` by ``tracestate`` when one is given; the other headers keep their order. The
    new values come last, under the spelling the replaced ones had (``Traceparent`` from a
    middleman peer stays so), else in lower case."""
    drop = {"traceparent"} if tracestate is None else {"traceparent", "tracestate"}
    kept: list[tuple[str, str]] = []
    names = {"traceparent": "traceparent", "tracestate": "tracestate"}
    for k, v in pairs_of(headers):
        low = k.lower()
        if low in drop:
            names[low] = k
        else:
            kept.append((k, v))
    own = [(names["traceparent"], traceparent)]
    if tracestate:
        own.append((names["tracestate"], tracestate))
    return HeaderPairs((*kept, *own))


class SpanTracer(Protocol):
    """One span per request (a tracer of ``Router.tracers``, called with every step of every
    request: see :data:`maitred.core.routing.state.Tracer`), flushed by :meth:`shutdown`."""

    def __call__(self, event: str, request: Request, detail: str, now: float) -> None: ...

    def shutdown(self) -> None:
        """Export what is still buffered and stop (the broker is stopping)."""
        ...


def open_tracer(section: TracingSection, clock: Clock) -> SpanTracer | None:
    """The OpenTelemetry span tracer ``[tracing]`` asks for, or None when tracing is off (no
    ``otlp_endpoint``). Imports ``opentelemetry`` only when it is on; raises
    :class:`~maitred.core.errors.ConfigError` when the ``otel`` extra is not installed."""
    if not section.otlp_endpoint:
        return None
    from maitred.core.otel import OtelTracer  # only here: opentelemetry is an optional extra

    return OtelTracer.from_config(section, clock)
