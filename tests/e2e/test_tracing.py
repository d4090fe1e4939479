"""Tracing across protocols over real sockets (docs/howto/tracing.md): one broker span per
request, child of the caller's W3C ``traceparent``, and the worker's ``traceparent`` a child of
the broker's span, whatever the caller's and the worker's transports.

The spans go to the SDK's in-memory exporter (a tracer added through the port, as ``[tracing]``
adds its own), except in the last test, where ``[tracing] otlp_endpoint`` sends them over
OTLP/HTTP to a small collector in the test."""

from __future__ import annotations

import http.client
import http.server
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from maitred.core.otel import OtelTracer
from maitred.core.tracing import parse_traceparent
from maitred.transports.http.client import SwitchClient
from tests.e2e.helpers import BrokerThread, RawWorker, wait_until
from tests.e2e.matrix_peers import WS_KEY, json_connect, mm_connect, mm_decode, mm_encode

Ctx = zmq.Context[Any]

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
PARENT = f"00-{TRACE}-{CALLER_SPAN}-01"

CONFIG = f"""
[transports.http]
listen = ["127.0.0.1:0"]

[store]
backend = "memory"

[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0

[[transports.ws.keys]]
key = "{WS_KEY}"
trusted = true
"""


@pytest.fixture
def traced(
    make_broker: Callable[..., BrokerThread],
) -> Iterator[tuple[BrokerThread, InMemorySpanExporter]]:
    broker = make_broker(CONFIG)
    exporter = InMemorySpanExporter()
    tracer = OtelTracer(broker.broker.clock, exporter, batch=False)
    stop = broker.call(lambda: broker.broker.port.trace(tracer))
    yield broker, exporter
    broker.call(stop)
    tracer.shutdown()


def _http(broker: BrokerThread) -> tuple[str, int]:
    host, _, port = broker.endpoints["http"][0].removeprefix("http://").rpartition(":")
    return host, int(port)


def _rest_call(
    broker: BrokerThread, service: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*_http(broker), timeout=10)
    try:
        conn.request("POST", f"/v1/services/{service}", body=b"hi", headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _serve_one_mdp(ctx: Ctx, broker: BrokerThread, service: bytes) -> threading.Thread:
    worker = RawWorker(ctx, broker.endpoint, "rfc", service)
    worker.ready()
    name = service.decode()
    wait_until(lambda: broker.call(lambda: name in broker.broker.router.services), what=name)

    def serve() -> None:
        try:
            addr, body = worker.request(timeout=10)
            worker.final(addr, b"echo:", *body)
        finally:
            worker.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _spans(exporter: InMemorySpanExporter, count: int = 1) -> tuple[ReadableSpan, ...]:
    wait_until(lambda: len(exporter.get_finished_spans()) >= count, what=f"{count} spans")
    spans = exporter.get_finished_spans()
    assert len(spans) == count, [s.name for s in spans]
    return spans


def _hex(span: ReadableSpan) -> tuple[str, str]:
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def test_rest_call_served_by_an_mdp_worker_is_one_span_in_the_callers_trace(
    traced: tuple[BrokerThread, InMemorySpanExporter], ctx: Ctx
) -> None:
    broker, exporter = traced
    served = _serve_one_mdp(ctx, broker, b"echo")
    status, headers, body = _rest_call(broker, "echo", {"traceparent": PARENT})
    served.join(10)
    assert (status, body) == (200, b"echo:hi")
    (span,) = _spans(exporter)
    trace_id, span_id = _hex(span)
    assert trace_id == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CALLER_SPAN
    assert span.name == "maitred echo" and span.kind is SpanKind.SERVER
    attrs = dict(span.attributes or {})
    assert attrs["maitred.caller.transport"] == "http"
    assert attrs["maitred.worker.transport"] == "mdp"
    assert attrs["maitred.service"] == "echo" and attrs["maitred.outcome"] == "reply"
    assert isinstance(attrs["maitred.request.id"], int)
    assert attrs["maitred.queued_ms"] >= 0 and attrs["maitred.service_ms"] >= 0
    # the response names the broker's span: same trace, the span that served it
    back = parse_traceparent(headers["traceparent"])
    assert back is not None and (back.trace_id, back.span_id) == (trace_id, span_id)


def test_rest_call_without_traceparent_starts_a_trace_and_errors_are_spans_too(
    traced: tuple[BrokerThread, InMemorySpanExporter],
) -> None:
    broker, exporter = traced
    status, headers, _ = _rest_call(
        broker, "nobody.here", {"X-Maitred-Timeout": "0.2", "traceparent": "ff" + PARENT[2:]}
    )
    assert status == 504
    (span,) = _spans(exporter)
    assert span.parent is None and _hex(span)[0] != TRACE  # the bad header was ignored
    attrs = dict(span.attributes or {})
    assert attrs["maitred.outcome"] == "error" and attrs["maitred.error.code"] == 504
    back = parse_traceparent(headers["traceparent"])
    assert back is not None and back.trace_id == _hex(span)[0]


@pytest.mark.parametrize(
    "bad",
    [
        PARENT[:-2],  # wrong length
        PARENT.replace("0af7", "0afz"),  # bad hex
        f"00-{'0' * 32}-{CALLER_SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        "ff" + PARENT[2:],  # version ff
    ],
)
def test_a_malformed_traceparent_is_ignored_never_an_error(
    traced: tuple[BrokerThread, InMemorySpanExporter], ctx: Ctx, bad: str
) -> None:
    broker, exporter = traced
    served = _serve_one_mdp(ctx, broker, b"echo")
    status, headers, body = _rest_call(broker, "echo", {"traceparent": bad})
    served.join(10)
    assert (status, body) == (200, b"echo:hi")
    (span,) = _spans(exporter)
    assert span.parent is None and _hex(span)[0] != TRACE
    assert parse_traceparent(headers["traceparent"]) is not None


def _transfer(url: str, token: str, queue: str, timeout: float) -> list[Any]:
    """One raw Transfer (the client library drops fields it does not know)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout + 10)
    try:
        conn.request("GET", f"/login/{token}")
        conn.getresponse().read()
        req = {"timeout": timeout, "queues": [queue]}
        conn.request("POST", "/transfer", body=json.dumps(req).encode())
        resp = conn.getresponse()
        data = json.loads(resp.read())
        messages: list[Any] = data["messages"]
        return messages
    finally:
        conn.close()


def test_websocket_json_call_served_by_a_switch_worker_carries_the_trace(
    traced: tuple[BrokerThread, InMemorySpanExporter],
) -> None:
    broker, exporter = traced
    url = broker.endpoints["http"][0]
    token = f"serve:{uuid.uuid4().hex[:8]}"
    with SwitchClient(url, token=token, timeout=10) as sw, json_connect(broker) as (ws, _):
        sw.create("q.traced", persistent=True)
        request = {
            "type": "request",
            "id": 7,
            "destination": "q.traced",
            "data": "aGk=",  # base64 of "hi"
            "headers": {"traceparent": PARENT, "tracestate": "vendor=1"},
        }
        ws.send(json.dumps(request))
        messages = _transfer(url, token, "q.traced", 5.0)
        assert len(messages) == 1
        (q, n), message = messages[0]
        assert message["payload"] == "hi"
        # the switch worker's parent is the broker's span, in the caller's trace
        got = parse_traceparent(message["traceparent"])
        assert got is not None and got.trace_id == TRACE and got.span_id != CALLER_SPAN
        assert message["tracestate"] == "vendor=1"
        sw.respond(str(message["kind"][1]), q, n, b"done")
        sw.ack(q, n)
        reply = json.loads(ws.recv(5))
        assert reply["type"] == "reply" and reply["id"] == 7, reply
    (span,) = _spans(exporter)
    assert _hex(span) == (TRACE, got.span_id)
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CALLER_SPAN
    attrs = dict(span.attributes or {})
    assert attrs["maitred.caller.transport"] == "ws"
    assert attrs["maitred.worker.transport"] == "http"
    assert attrs["maitred.service"] == "q.traced" and attrs["maitred.outcome"] == "reply"


def test_a_switch_request_reaches_a_json_worker_with_the_trace(
    traced: tuple[BrokerThread, InMemorySpanExporter],
) -> None:
    broker, exporter = traced
    host, port = _http(broker)
    with json_connect(broker, name="svc", methods=[]) as (ws, _):
        wait_until(lambda: broker.call(lambda: "svc" in broker.broker.router.services))
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/login/caller")
        conn.getresponse().read()
        for path in ("/transient/caller.replies", "/persistent/svc"):
            conn.request("GET", path)
            conn.getresponse().read()
        conn.request(
            "POST", "/request/svc/caller.replies", body=b"hi", headers={"traceparent": PARENT}
        )
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
        conn.close()
        served = json.loads(ws.recv(5))
        assert served["type"] == "request", served
        got = parse_traceparent(served["headers"]["traceparent"])
        assert got is not None and got.trace_id == TRACE and got.span_id != CALLER_SPAN
        ws.send(json.dumps({"type": "reply", "id": served["id"], "data": "b2s="}))
        (span,) = _spans(exporter)
    assert _hex(span) == (TRACE, got.span_id)
    attrs = dict(span.attributes or {})
    assert attrs["maitred.caller.transport"] == "http"
    assert attrs["maitred.worker.transport"] == "ws"


def test_rest_call_served_by_a_middleman_responder_carries_the_trace(
    traced: tuple[BrokerThread, InMemorySpanExporter],
) -> None:
    broker, exporter = traced
    result: list[tuple[int, dict[str, str], bytes]] = []
    with mm_connect(broker) as ws:
        ws.send(mm_encode("EREQ", "mm.svc", [], ""))
        wait_until(lambda: broker.call(lambda: "mm.svc" in broker.broker.router.services))
        caller = threading.Thread(
            target=lambda: result.append(
                _rest_call(broker, "mm.svc", {"traceparent": PARENT, "tracestate": "a=b"})
            ),
            daemon=True,
        )
        caller.start()
        frame = ws.recv(5)
        assert isinstance(frame, str)
        command, target, headers, _ = mm_decode(frame)
        assert command == "REQ", frame
        named = {k.lower(): v for k, v in headers}  # names are compared without case
        got = parse_traceparent(named["traceparent"])
        assert got is not None and got.trace_id == TRACE and got.span_id != CALLER_SPAN
        assert named["tracestate"] == "a=b"
        ws.send(mm_encode("RES", target, [("Rid", named["rid"])], "ok"))
        caller.join(10)
    assert result and result[0][0] == 200
    (span,) = _spans(exporter)
    assert _hex(span) == (TRACE, got.span_id)
    assert dict(span.attributes or {})["maitred.worker.transport"] == "ws"


class _Collector(http.server.BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP traces receiver: keeps each request body."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_tracing_config_exports_over_otlp_http(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    bodies: list[bytes] = []
    handler = type("Handler", (_Collector,), {"bodies": bodies})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        broker = make_broker(
            CONFIG + f'\n[tracing]\notlp_endpoint = "{endpoint}"\nservice_name = "edge"\n'
        )
        served = _serve_one_mdp(ctx, broker, b"echo")
        status, headers, _ = _rest_call(broker, "echo", {"traceparent": PARENT})
        served.join(10)
        assert status == 200 and headers["traceparent"].startswith(f"00-{TRACE}-")
        broker.stop(drain_timeout=0)  # flushes the batch
        assert bodies, "no export reached the collector"
        spans = []
        for body in bodies:
            export = ExportTraceServiceRequest.FromString(body)
            for rs in export.resource_spans:
                names = {a.key: a.value.string_value for a in rs.resource.attributes}
                assert names["service.name"] == "edge"
                spans += [s for ss in rs.scope_spans for s in ss.spans]
        assert [(s.name, s.trace_id.hex()) for s in spans] == [("maitred echo", TRACE)]
    finally:
        server.shutdown()
        server.server_close()


def test_without_tracing_opentelemetry_is_never_imported() -> None:
    code = """
import asyncio, sys
from maitred.core.app import embedded

async def main():
    async with embedded(mdp=["tcp://127.0.0.1:0"]) as broker:
        assert broker.spans is None
        assert broker.router.tracers == []

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
print(loaded)
sys.exit(1 if loaded else 0)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
