"""A broker holding a big state (20,000 services made by one anonymous MDP client over real
sockets) still answers GET /metrics and the MMI listings correctly and in bounded size; the
event loop's worst lag meanwhile is measured with bench.lag.LagProbe and printed (no timing is
asserted: the machine is shared)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from bench.lag import LagProbe
from maitred.core.cli import main as cli_main
from tests.e2e.helpers import BrokerThread, RawClient, wait_until
from tests.e2e.http_helpers import RawHttp, endpoint_of, http_toml

SERVICES = 20_000


def _request_total(metrics: str, service: str) -> float:
    key = f'maitred_service_requests_total{{service="{service}"}} '
    for line in metrics.splitlines():
        if line.startswith(key):
            return float(line[len(key) :])
    raise AssertionError(f"no requests line for {service}")


def test_a_big_state_answers_metrics_and_mmi_in_bounded_size(
    make_broker: Callable[..., BrokerThread], ctx: zmq.Context[Any]
) -> None:
    broker = make_broker(
        http_toml(["127.0.0.1:0"], "switch = false\n")
        + "[services.default]\nrequest_timeout = 600.0\nmax_queue = 10\n"
        # past the default max_services (10,000): this test is about a big state
        + "[broker]\nmax_services = 30000\n"
    )
    client = RawClient(ctx, broker.endpoint, "0.1-dealer")
    busy = RawClient(ctx, broker.endpoint, "0.1-dealer")
    started = time.monotonic()
    for i in range(SERVICES):
        client.send(f"anon.{i:05d}".encode(), b"x")
    for _ in range(5):  # one service with more traffic than the others
        busy.send(b"anon.busy", b"x")
    wait_until(
        lambda: broker.call(lambda: len(broker.broker.router.services)) >= SERVICES + 1,
        timeout=120,
        what="the services to be created",
    )
    made = time.monotonic() - started
    probe = LagProbe.on(broker.loop)
    http = RawHttp(endpoint_of(broker, "http://"), timeout=30)
    try:
        status, _, body = (http.send("GET", "/metrics"), http.read())[1]
        assert status == 200
        metrics_lag = probe.stop_from_thread(broker.loop)
        text = body.decode()
        assert len(body) < 200_000, len(body)
        assert _request_total(text, "anon.busy") == 5
        assert _request_total(text, "(other)") == SERVICES - 99
        assert f"maitred_services {float(SERVICES + 1)}" in text
        assert f"maitred_services_unlisted {float(SERVICES - 99)}" in text

        probe = LagProbe.on(broker.loop)
        mmi = RawClient(ctx, broker.endpoint, "0.1-dealer")
        answer = json.loads(mmi.call(b"mmi.services", b"")[-1])
        assert answer["total"] == SERVICES + 1 and answer["truncated"] is True
        assert len(answer["items"]) == 1000 and answer["next"] == 1000
        assert answer["items"][0]["name"] == "anon.00000"
        page = json.loads(mmi.call(b"mmi.services", b'{"offset": 19990, "limit": 50}')[-1])
        assert [row["name"] for row in page["items"]][-1] == "anon.busy"
        assert len(page["items"]) == 11 and page["next"] is None
        queues = json.loads(mmi.call(b"mmi.queues", b"")[-1])
        assert len(queues["items"]) == 1000 and queues["truncated"] is True
        mmi_lag = probe.stop_from_thread(broker.loop)
        mmi.close()
        # `maitred services` walks the pages
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert cli_main(["services", "-b", broker.endpoint, "--json", "-t", "30"]) == 0
        listed = json.loads(out.getvalue())
        assert len(listed) == SERVICES + 1 and listed[-1]["name"] == "anon.busy"
        rest = RawHttp(endpoint_of(broker, "http://"), timeout=30)
        try:
            status, data = rest.do("GET", "/v1/services?offset=20000&limit=5")
            assert status == 200 and json.loads(data)["items"][0]["name"] == "anon.busy"
        finally:
            rest.close()
    finally:
        http.close()
        client.close()
        busy.close()
    print(
        f"\nbig state: {SERVICES} services made in {made:.1f} s; worst loop lag during"
        f" GET /metrics ({len(body)} B) {metrics_lag * 1000:.1f} ms, during 3 MMI listings"
        f" {mmi_lag * 1000:.1f} ms",
        file=sys.stderr,
    )
