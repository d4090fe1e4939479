"""One OpenTelemetry span per request (maitred.core.otel) on the router, without sockets: the
span's parent, attributes and end for every way a request ends, and the headers the worker
gets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from maitred.core.app import build_broker
from maitred.core.config import TracingSection, parse_config
from maitred.core.errors import ConfigError, ErrorCode, MaitredError
from maitred.core.otel import OtelTracer
from maitred.core.routing.model import ServicePolicy
from maitred.core.tracing import open_tracer, parse_traceparent, trace_headers
from tests.core.harness import Harness, sink_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
PARENT = f"00-{TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def h(exporter: InMemorySpanExporter) -> Iterator[Harness]:
    harness = Harness(policy=ServicePolicy(request_timeout=5.0))
    tracer = OtelTracer(harness.clock, exporter, batch=False)
    harness.router.tracers.append(tracer)
    yield harness
    tracer.shutdown()


def _one(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_served_request_is_one_span_child_of_the_callers(
    h: Harness, exporter: InMemorySpanExporter
) -> None:
    c = h.session("caller", transport="http")
    w = h.worker("echo", label="w1")
    r = h.req(c, "echo", headers={"traceparent": PARENT, "tracestate": "k=v", "X-A": "1"})
    assert exporter.get_finished_spans() == ()  # open until the reply
    got = sink_of(w.session).calls[-1][2]  # the request as the worker's sink got it
    sent = trace_headers(got.headers)
    ctx = parse_traceparent(sent["traceparent"])
    assert ctx is not None and ctx.trace_id == TRACE and ctx.span_id != CALLER_SPAN
    assert sent["tracestate"] == "k=v" and got.headers["X-A"] == "1"
    assert r.trace == sent["traceparent"]
    h.clock.advance(0.25)
    h.reply(w, r)
    span = _one(exporter)
    assert span.name == "maitred echo" and span.kind is SpanKind.SERVER
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CALLER_SPAN
    assert f"{span.context.trace_id:032x}" == TRACE
    assert f"{span.context.span_id:016x}" == ctx.span_id  # the worker's parent is this span
    assert span.context.trace_state.get("k") == "v"
    a = _attrs(span)
    assert a["maitred.request.id"] == r.id and a["maitred.service"] == "echo"
    assert a["maitred.caller.transport"] == "http" and a["maitred.worker.transport"] == "test"
    assert a["maitred.outcome"] == "reply" and a["maitred.deliveries"] == 1
    assert a["maitred.queued_ms"] == 0.0 and a["maitred.service_ms"] == pytest.approx(250.0)
    assert a["maitred.worker"] == "w1"
    assert r.span is None  # ended once


def test_without_a_traceparent_the_broker_starts_a_trace(
    h: Harness, exporter: InMemorySpanExporter
) -> None:
    c = h.session("caller")
    w = h.worker("echo")
    r = h.req(c, "echo")
    h.reply(w, r)
    span = _one(exporter)
    assert span.parent is None
    assert r.trace is not None and parse_traceparent(r.trace) is not None


@pytest.mark.parametrize(
    "bad",
    [
        PARENT[:-1],
        PARENT.replace("4bf9", "4bfz"),
        f"00-{'0' * 32}-{CALLER_SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        "ff" + PARENT[2:],
    ],
)
def test_a_malformed_traceparent_is_ignored(
    h: Harness, exporter: InMemorySpanExporter, bad: str
) -> None:
    c = h.session("caller")
    w = h.worker("echo")
    r = h.req(c, "echo", headers={"traceparent": bad})
    h.reply(w, r)
    span = _one(exporter)
    assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE
    assert sink_of(c).finals() == [[b"ok"]]


def test_a_refused_request_ends_its_span_with_the_error(
    h: Harness, exporter: InMemorySpanExporter
) -> None:
    h.policies["nobody"] = ServicePolicy(on_no_worker="fail")
    c = h.session("caller", transport="ws")
    assert h.call(c, "nobody", headers={"traceparent": PARENT}) is None
    span = _one(exporter)
    a = _attrs(span)
    assert a["maitred.outcome"] == "error"
    assert a["maitred.error.code"] == int(ErrorCode.NO_WORKER)
    assert "maitred.worker.transport" not in a and a["maitred.deliveries"] == 0
    assert span.status.status_code is StatusCode.ERROR


def test_an_expired_request_ends_its_span_once(h: Harness, exporter: InMemorySpanExporter) -> None:
    c = h.session("caller")
    w = h.worker("slow")
    r = h.req(c, "slow")
    h.advance(6.0)
    h.reply(w, r)  # too late: no second end
    span = _one(exporter)
    a = _attrs(span)
    assert a["maitred.error.code"] == int(ErrorCode.TIMEOUT)
    assert a["maitred.service_ms"] >= 5000.0


def test_a_worker_error_reply_ends_the_span(h: Harness, exporter: InMemorySpanExporter) -> None:
    c = h.session("caller")
    w = h.worker("svc")
    r = h.req(c, "svc")
    h.router.reply_error(w, r.id, MaitredError("nope", ErrorCode.BAD_REQUEST), h.now)
    a = _attrs(_one(exporter))
    assert a["maitred.outcome"] == "error" and a["maitred.error.code"] == 400


def test_cancelled_requests_end_their_spans(h: Harness, exporter: InMemorySpanExporter) -> None:
    c = h.session("caller")
    w = h.worker("svc")
    served = h.req(c, "svc")
    waiting = h.req(c, "svc")  # the worker is busy: it waits
    h.clock.advance(1.0)
    h.router.cancel(served, h.now)
    h.router.cancel(served, h.now)  # twice: still one end
    assert [_attrs(s)["maitred.outcome"] for s in exporter.get_finished_spans()] == ["cancelled"]
    h.close(c)  # the waiting request goes with its caller
    spans = exporter.get_finished_spans()
    assert [_attrs(s)["maitred.outcome"] for s in spans] == ["cancelled", "cancelled"]
    assert _attrs(spans[1])["maitred.request.id"] == waiting.id
    assert _attrs(spans[1])["maitred.queued_ms"] == pytest.approx(1000.0)
    h.reply(w, served)
    assert len(exporter.get_finished_spans()) == 2


def test_a_broken_tracer_never_breaks_routing(
    h: Harness, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: str, *_: Any) -> None:
        raise RuntimeError(event)

    h.router.tracers.insert(0, broken)
    c = h.session("caller")
    w = h.worker("echo")
    with caplog.at_level("CRITICAL", logger="maitred.core.router"):
        r = h.req(c, "echo")
        h.reply(w, r)
    assert sink_of(c).finals() == [[b"ok"]]
    assert len(exporter.get_finished_spans()) == 1


def test_sample_ratio_zero_records_nothing_but_still_propagates() -> None:
    exporter = InMemorySpanExporter()
    h = Harness()
    tracer = OtelTracer(h.clock, exporter, sample_ratio=0.0, batch=False)
    h.router.tracers.append(tracer)
    c = h.session("caller")
    w = h.worker("echo")
    r = h.req(c, "echo")
    h.reply(w, r)
    ctx = parse_traceparent(r.trace or "")
    assert ctx is not None and not ctx.sampled
    sampled = h.req(c, "echo", headers={"traceparent": PARENT})  # the caller's flag wins
    h.reply(w, sampled)
    assert [f"{s.context.trace_id:032x}" for s in exporter.get_finished_spans()] == [TRACE]
    tracer.shutdown()


def test_open_tracer_is_off_without_an_endpoint_and_otlp_with_one() -> None:
    clock = Harness().clock
    assert open_tracer(TracingSection(), clock) is None
    tracer = open_tracer(
        TracingSection(otlp_endpoint="http://127.0.0.1:9/v1/traces", service_name="b1"), clock
    )
    assert isinstance(tracer, OtelTracer)
    resource = tracer.provider.resource.attributes
    assert resource["service.name"] == "b1"
    tracer.shutdown()  # nothing buffered: returns without reaching the collector


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tracing]\nsample_ratio = 1.5", "tracing.sample_ratio"),
        ('[tracing]\notlp_endpoint = "grpc://x:4317"', "tracing.otlp_endpoint"),
        ('[tracing]\nservice_name = ""', "tracing.service_name"),
        ("[tracing]\nratio = 1", "tracing: .*unknown field `ratio`"),
    ],
)
def test_bad_tracing_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_a_reload_reports_tracing_as_needing_a_restart() -> None:
    broker = build_broker(parse_config("[transports]\n", "a.toml"))
    new = parse_config(
        '[transports]\n[tracing]\notlp_endpoint = "http://127.0.0.1:9/v1/traces"\n', "a.toml"
    )
    assert broker.reload(new) == {"applied": [], "unchanged": ["tracing"]}
    assert broker.spans is None and broker.router.tracers == []


def test_an_end_without_a_span_is_ignored(h: Harness, exporter: InMemorySpanExporter) -> None:
    c = h.session("caller")
    request = h.req(c, "nobody.yet")  # waits: its span is open
    tracer = h.router.tracers[0]
    span, request.span = request.span, None
    tracer("replied", request, "w", h.now)  # e.g. a stored request answered after its end
    assert exporter.get_finished_spans() == ()
    request.span = span
    tracer("failed", request, "504 late", h.now)
    assert _attrs(_one(exporter))["maitred.error.code"] == 504


class _Breaks:
    def __call__(self, event: str, request: Any, detail: str, now: float) -> None:
        pass

    def shutdown(self) -> None:
        raise RuntimeError("collector gone")


@pytest.mark.allow_error_logs("tracing: the span exporter failed to shut down")
def test_a_failing_exporter_shutdown_does_not_stop_the_broker_from_stopping() -> None:
    async def main() -> None:
        broker = build_broker(parse_config("[transports]\n", "a.toml"))
        await broker.start()
        spans = _Breaks()
        broker.spans = spans
        broker.router.tracers.append(spans)
        await broker.stop(0)
        assert broker.state == "stopped" and broker.router.tracers == []

    asyncio.run(main())
