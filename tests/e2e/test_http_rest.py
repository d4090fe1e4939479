"""maitred's REST API (docs/reference/http.md) over real sockets: calls reaching MDP workers, SSE
partials, the error table, MMI as JSON, publish/subscribe, metrics, health, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from maitred.core.errors import ErrorCode, MaitredError
from maitred.transports.http import codec
from maitred.transports.http.client import AsyncRestClient, RestClient
from maitred.transports.http.openapi import openapi_document
from tests.e2e.helpers import BrokerThread, RawWorker, wait_until
from tests.e2e.http_helpers import RawHttp, endpoint_of, http_toml, short_socket_path

Ctx = zmq.Context[Any]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rest(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    extra = """
[services.strict]
on_no_worker = "fail"

[access]
default = "allow"
[[access.rules]]
allow = false
actions = ["call"]
names = ["secret.>"]
"""
    return make_broker(
        extra + http_toml(["127.0.0.1:0", f"unix:{short_socket_path()}"], "max_body_size = 1000")
    )


def ready(broker: BrokerThread, worker: RawWorker) -> None:
    worker.ready()
    name = worker.service.decode()
    wait_until(lambda: broker.call(lambda: name in broker.broker.router.services), what=name)


@pytest.fixture
def echo(rest: BrokerThread, ctx: Ctx) -> Iterator[Callable[..., None]]:
    """Start an MDP echo worker (in a thread) with ``partials`` partial replies first."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(partials: int = 0) -> None:
        worker = RawWorker(ctx, rest.endpoint, "rfc", b"echo")
        ready(rest, worker)

        def serve() -> None:
            while not stop.is_set():
                if not worker.sock.poll(50):
                    continue
                kind, frames = worker.next()
                if kind != "request":
                    continue
                addr, body = frames[0], frames[1:]
                for i in range(partials):
                    worker.partial(addr, b"p%d" % i)
                worker.final(addr, *body)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        threads.append(t)

    yield start
    stop.set()
    for t in threads:
        t.join(5)


def test_call_reaches_an_mdp_worker(rest: BrokerThread, echo: Callable[..., None]) -> None:
    echo()
    for kind in ("http://", "unix:"):
        c = RawHttp(endpoint_of(rest, kind))
        status, headers, body = (c.send("POST", "/v1/services/echo", b"hello"), c.read())[1]
        assert (status, body) == (200, b"hello")
        assert headers["x-maitred-frames"] == "5"
        assert headers["content-type"] == "application/octet-stream"
        # several frames as JSON both ways
        req = codec.frames_json_body([b"a", b"\x00\xff", b""])
        c.send(
            "POST",
            "/v1/services/echo",
            req,
            {"Content-Type": "application/json", "Accept": "application/json"},
        )
        status, headers, body = c.read()
        assert status == 200 and codec.parse_frames_json(body) == [b"a", b"\x00\xff", b""]
        c.close()
    with RestClient(endpoint_of(rest, "unix:")) as client:
        assert client.call("echo", b"x", b"y") == [b"x", b"y"]


def test_sse_streams_partials_then_final(rest: BrokerThread, echo: Callable[..., None]) -> None:
    echo(partials=2)

    async def go() -> list[tuple[str, list[bytes]]]:
        async with AsyncRestClient(endpoint_of(rest, "http://")) as client:
            assert await client.call("echo", b"plain") == [b"plain"]
            return await client.stream("echo", b"body")

    assert asyncio.run(go()) == [
        ("partial", [b"p0"]),
        ("partial", [b"p1"]),
        ("final", [b"body"]),
    ]


def test_error_table(rest: BrokerThread) -> None:
    c = RawHttp(endpoint_of(rest, "http://"))

    def err(method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, Any]:
        c.send(method, path, body, headers)
        status, _, data = c.read()
        return status, json.loads(data)["error"]["code"]

    assert err("POST", "/v1/services/strict") == (503, "no_worker")
    assert err("POST", "/v1/services/nobody", **{"X-Maitred-Timeout": "0.1"}) == (504, "timeout")
    assert err("POST", "/v1/services/x", **{"X-Maitred-Timeout": "soon"}) == (400, "bad_request")
    assert err("POST", "/v1/services/secret.plans") == (403, "forbidden")
    assert err("GET", "/v1/services/nobody") == (404, "not_found")
    assert err("GET", "/v1/nothing/here") == (404, "not_found")
    assert err("POST", "/v1/services/x", b"{", **{"Content-Type": "application/json"}) == (
        400,
        "bad_request",
    )
    assert err("POST", "/v1/topics/a.*", b"x") == (400, "bad_request")
    c.close()
    # too large: refused from the Content-Length, before the body is read
    big = RawHttp(endpoint_of(rest, "http://"))
    big.sock.sendall(
        b"POST /v1/services/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10
    )
    status, _, data = big.read()
    assert status == 413 and json.loads(data)["error"]["code"] == "too_large"
    big.close()
    with RestClient(endpoint_of(rest, "http://")) as client:
        with pytest.raises(MaitredError) as info:
            client.call("strict", b"x")
        assert info.value.code == ErrorCode.NO_WORKER
        with pytest.raises(TimeoutError):
            client.call("nobody", b"x", timeout=0.1)


def test_mmi_as_json(rest: BrokerThread, echo: Callable[..., None]) -> None:
    echo()
    with RestClient(endpoint_of(rest, "http://")) as client:
        rows = client.services()
        assert [r["name"] for r in rows] == ["echo"] and rows[0]["workers"] == 1
        one = client.get_json("/v1/services/echo")
        assert one["name"] == "echo" and one["worker_list"][0]["transport"] == "mdp"
        assert client.get_json("/v1/queues")["services"]["echo"] == {"queued": 0, "inflight": 0}
        assert client.get_json("/v1/topics") == {}
        assert client.call("mmi.service", b"echo") == [b"200"]
        assert client.get_json("/healthz") == {"status": "ok"}
        assert client.get_json("/readyz") == {"status": "ready"}
        assert client.get_json("/v1/openapi.json") == openapi_document()
    kept = json.loads((ROOT / "docs" / "reference" / "openapi.json").read_text())
    assert kept == openapi_document(), "regenerate docs/reference/openapi.json"


def test_metrics(rest: BrokerThread, echo: Callable[..., None]) -> None:
    echo()
    with RestClient(endpoint_of(rest, "http://")) as client:
        client.call("echo", b"x")
    c = RawHttp(endpoint_of(rest, "http://"))
    status, headers, body = (c.send("GET", "/metrics"), c.read())[1]
    c.close()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert 'maitred_service_workers{service="echo"} 1.0' in text
    assert 'maitred_service_replies_total{service="echo"} 1.0' in text
    assert 'maitred_router_events_total{event="http.calls"} 1.0' in text
    # latency histogram, per-transport counters (the REST caller, the MDP worker)
    assert 'maitred_service_latency_seconds_count{service="echo"} 1.0' in text
    assert 'maitred_service_latency_seconds_bucket{le="+Inf",service="echo"} 1.0' in text
    assert 'maitred_transport_replies_total{transport="http"} 1.0' in text
    assert 'maitred_transport_served_total{transport="mdp"} 1.0' in text
    with RestClient(endpoint_of(rest, "http://")) as client, pytest.raises(TimeoutError):
        client.call("nobody.home", b"x", timeout=0.05)
    c = RawHttp(endpoint_of(rest, "http://"))
    text = (c.send("GET", "/metrics"), c.read())[1][2].decode()
    c.close()
    assert 'maitred_transport_errors_total{transport="http"} 1.0' in text


def test_publish_and_subscribe_with_sys_events(rest: BrokerThread, ctx: Ctx) -> None:
    ep = endpoint_of(rest, "http://")
    sub = RawHttp(ep)
    sub.send("GET", "/v1/topics/news.*")
    syssub = RawHttp(ep)
    syssub.send("GET", "/v1/topics/$sys.>")
    for s in (sub, syssub):
        while b"subscribed" not in s.buf:
            s._fill()
    with RestClient(ep) as client:
        wait_until(lambda: client.get_json("/v1/topics") == {"news.*": 1, "$sys.>": 1})
        assert client.publish("news.today", b"hello") == 1
        assert client.publish("other", b"x") == 0
    # (the stream is chunked: look for the event's lines in the raw bytes)
    while b'"topic":"news.today"' not in sub.buf:
        sub._fill()
    line = next(x for x in sub.buf.split(b"\n") if b'"topic":"news.today"' in x)
    assert line.startswith(b"data: ")
    value = json.loads(line[6:])
    assert value == {"topic": "news.today", "frames": ["aGVsbG8="], "text": "hello"}
    assert b"event: message\nid: 0\n" in sub.buf
    worker = RawWorker(ctx, rest.endpoint, "rfc", b"svc")
    worker.ready()
    while b"$sys.worker.ready" not in syssub.buf:
        syssub._fill()
    sub.close()
    syssub.close()


def test_client_disconnect_cancels_its_request(rest: BrokerThread, ctx: Ctx) -> None:
    c = RawHttp(endpoint_of(rest, "http://"))
    c.send("POST", "/v1/services/slow", b"x", {"X-Maitred-Timeout": "30"})
    wait_until(lambda: rest.call(lambda: "slow" in rest.broker.router.services))
    c.close()
    wait_until(lambda: rest.stats().get("http.calls_cancelled") == 1, what="the call was cancelled")
    wait_until(lambda: rest.call(lambda: "slow" not in rest.broker.router.services))


def test_tail_shows_requests_of_every_protocol(
    rest: BrokerThread, echo: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    """Once a trace reader has come (``maitred tail``), requests that never touch the switch —
    here a REST call answered by an MDP worker — are traced too, under the router's request id."""
    from maitred.core.cli import main

    echo()
    url = endpoint_of(rest, "http://")
    assert main(["tail", "-b", url]) == 0  # a reader: the router's requests are traced from now
    with RestClient(url) as client:
        assert client.call("echo", b"traced") == [b"traced"]
    capsys.readouterr()
    assert main(["tail", "-b", url]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " echo" in ln or "rest" in ln]
    assert len(lines) == 3, lines
    rid = lines[0].rsplit("echo/", 1)[1].split()[0]
    # accepted from the REST caller, handed to the MDP worker, answered by it
    assert "http:rest -> echo -> -: Request echo/" + rid + ' "traced"' in lines[0]
    assert "-> echo -> mdp" in lines[1] and f'echo/{rid} "traced"' in lines[1]
    assert lines[2].split()[1].startswith("mdp")
    assert f"-> http:rest -> http:rest: Response http:rest/{rid}" in lines[2]
    assert re.search(r" in \d+\.\d{3} ms$", lines[2]), lines[2]  # the processing time


def test_mmi_routes_denied_by_access_answer_403(make_broker: Callable[..., BrokerThread]) -> None:
    extra = """
[access]
default = "allow"
[[access.rules]]
allow = false
actions = ["call"]
names = ["mmi.>"]
"""
    b = make_broker(extra + http_toml(["127.0.0.1:0"]))
    c = RawHttp(endpoint_of(b, "http://"))
    for path in ("/v1/services", "/v1/services/echo", "/v1/queues", "/v1/topics"):
        c.send("GET", path)
        status, _, data = c.read()
        assert (status, json.loads(data)["error"]["code"]) == (403, "forbidden"), path
    c.close()


def test_prefer_respond_async_is_ignored_for_services_without_store(
    rest: BrokerThread, echo: Callable[..., None]
) -> None:
    echo()
    c = RawHttp(endpoint_of(rest, "http://"))
    c.send("POST", "/v1/services/echo", b"sync", {"Prefer": "respond-async"})
    status, headers, data = c.read()
    c.close()
    assert (status, data) == (200, b"sync")
    assert "preference-applied" not in {k.lower() for k in headers}
