"""The OpenTelemetry span tracer (``[tracing]``; needs the ``otel`` extra: ``pip install
'maitred[otel]'``). Imported only by :func:`maitred.core.tracing.open_tracer`, when tracing is
configured.

One span per request, named ``maitred SERVICE``, of kind SERVER, child of the caller's
``traceparent`` when it sent a valid one (else the root of a new trace). It starts when the
router accepts the request and ends when the request ends; its attributes:

========================== ==================================================================
``maitred.request.id``     the router's request id (what a worker answers with)
``maitred.service``        the service called
``maitred.caller.transport`` the caller's transport (``http``, ``ws``, ``mdp``, ...)
``maitred.worker.transport`` the transport of the worker it was handed to (when it was)
``maitred.worker``         that worker's label (as ``mmi.workers`` shows it)
``maitred.outcome``        ``reply``, ``error`` or ``cancelled``
``maitred.error.code``     the error code (with ``error``), and the span's status is ERROR
``maitred.deliveries``     how many times it was handed to a worker
``maitred.queued_ms``      milliseconds from acceptance to the (last) hand-over to a worker
``maitred.service_ms``     milliseconds from that hand-over to the end
========================== ==================================================================

"""

from __future__ import annotations

import math
from typing import Any

from maitred.core.clock import Clock
from maitred.core.config import TracingSection
from maitred.core.errors import ConfigError
from maitred.core.routing.model import Request
from maitred.core.tracing import (
    TraceContext,
    format_traceparent,
    parse_traceparent,
    trace_headers,
    with_traceparent,
)

try:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import SpanKind, Status, StatusCode, TraceFlags, TraceState
except ImportError as exc:  # pragma: no cover - the extra is installed wherever tests run
    raise ConfigError(
        f"[tracing] needs the opentelemetry packages: pip install 'maitred[otel]' ({exc})"
    ) from None

__all__ = ["OtelTracer"]


def _version() -> str:
    from maitred.core import __version__

    return __version__


class OtelTracer:
    """A :class:`~maitred.core.tracing.SpanTracer` on the OpenTelemetry SDK, with its own tracer
    provider (the process's global one is left alone, so an application that embeds the broker
    keeps its own)."""

    def __init__(
        self,
        clock: Clock,
        exporter: SpanExporter,
        *,
        service_name: str = "maitred",
        sample_ratio: float = 1.0,
        batch: bool = True,
    ) -> None:
        self.clock = clock
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}),
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        )
        processor: SpanProcessor = (
            BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        )
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("maitred", _version())

    @classmethod
    def from_config(cls, section: TracingSection, clock: Clock) -> OtelTracer:
        """Spans exported in batches over OTLP/HTTP (protobuf) to ``section.otlp_endpoint``."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls(
            clock,
            OTLPSpanExporter(endpoint=section.otlp_endpoint),
            service_name=section.service_name,
            sample_ratio=section.sample_ratio,
        )

    def shutdown(self) -> None:
        self.provider.shutdown()

    # -- the router's tracer ----------------------------------------------------------------

    def __call__(self, event: str, request: Request, detail: str, now: float) -> None:
        # "dispatched" needs nothing: the worker is read from the request when it ends (every
        # attribute set in one call there, the SDK's attribute checks being the costly part)
        if event == "accepted":
            self._start(request)
        elif event == "replied":
            self._end(request, now, "reply")
        elif event == "failed":  # from the paths that have no clock reading: now is NaN
            self._end(request, self.clock() if math.isnan(now) else now, "error", detail)
        elif event == "cancelled":
            self._end(request, now, "cancelled")

    def _start(self, request: Request) -> None:
        found = trace_headers(request.headers)
        parent = parse_traceparent(found.get("traceparent", ""))
        context = None
        if parent is not None:
            state = found.get("tracestate")
            remote = trace.SpanContext(
                int(parent.trace_id, 16),
                int(parent.span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(parent.flags & TraceFlags.SAMPLED),
                trace_state=TraceState.from_header([state]) if state else None,
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        caller = request.caller
        span = self.tracer.start_span(
            f"maitred {request.service}",
            context=context,
            kind=SpanKind.SERVER,
            attributes={
                "maitred.request.id": request.id,
                "maitred.service": request.service,
                "maitred.caller.transport": caller.transport,
            },
        )
        own = span.get_span_context()
        traceparent = format_traceparent(
            TraceContext(f"{own.trace_id:032x}", f"{own.span_id:016x}", int(own.trace_flags))
        )
        request.span = span
        request.trace = traceparent
        request.headers = with_traceparent(request.headers, traceparent)

    def _end(self, request: Request, now: float, outcome: str, detail: str = "") -> None:
        span: Any = request.span
        if span is None:
            return
        request.span = None
        attributes: dict[str, Any] = {
            "maitred.outcome": outcome,
            "maitred.deliveries": request.deliveries,
        }
        worker = request.worker
        if worker is not None:
            attributes["maitred.worker.transport"] = worker.session.transport
            attributes["maitred.worker"] = worker.label
        if request.deliveries:
            attributes["maitred.queued_ms"] = (request.dispatched - request.accepted) * 1000.0
            attributes["maitred.service_ms"] = max(0.0, now - request.dispatched) * 1000.0
        else:
            attributes["maitred.queued_ms"] = max(0.0, now - request.accepted) * 1000.0
        if outcome == "error":
            code, _, reason = detail.partition(" ")
            attributes["maitred.error.code"] = int(code) if code.isdigit() else 0
            span.set_status(Status(StatusCode.ERROR, reason))
        span.set_attributes(attributes)
        span.end()
