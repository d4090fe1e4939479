"""What the router counts and reports about every request: per-transport counters, errors by
code, latency histograms, tracers and the per-request debug log lines."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import LATENCY_BOUNDS, Histogram, Request, ServicePolicy
from tests.core.harness import Harness


def test_transport_counters_follow_caller_and_worker_transports() -> None:
    h = Harness()
    worker = h.worker("svc", h.session("w", transport="mdp"))
    ws = h.session("c1", transport="ws")
    http = h.session("c2", transport="http")
    r1 = h.req(ws, "svc")
    h.reply(worker, r1)
    h.req(http, "svc")  # dispatched: the worker answered r1, so it is free again
    h.call(http, "none", on_no_worker="fail")
    t = h.router.transports
    assert t["ws"].as_dict() == {"requests": 1, "replies": 1, "errors": 0, "served": 0}
    assert t["http"].as_dict() == {"requests": 2, "replies": 0, "errors": 1, "served": 0}
    assert t["mdp"].served == 2
    assert h.router.snapshot()["traffic"]["ws"]["replies"] == 1


def test_error_codes_are_counted_per_service_and_transport() -> None:
    h = Harness(policies={"full": ServicePolicy(max_queue=0)})
    c = h.session("c")
    w = h.worker("e")
    h.worker("full")
    busy = h.req(c, "full")  # takes the only worker of "full"
    req = h.req(c, "e")
    assert h.router.reply_error(w, req.id, MaitredError("bad", ErrorCode.BAD_REQUEST), h.now)
    assert h.call(c, "full") is None  # no worker free and no room to queue
    assert dict(h.router.services["e"].error_codes) == {int(ErrorCode.BAD_REQUEST): 1}
    assert dict(h.router.services["full"].error_codes) == {int(ErrorCode.QUEUE_FULL): 1}
    assert h.router.transports["test"].errors == 2
    assert busy.state.name == "DISPATCHED"


def test_worker_death_counts_502_while_the_service_lives() -> None:
    h = Harness()
    c = h.session("c")
    w1 = h.worker("s")
    h.worker("s")  # keeps the service alive
    h.req(c, "s")
    h.close(w1.session)
    assert dict(h.router.services["s"].error_codes) == {int(ErrorCode.WORKER_DIED): 1}


def test_histogram_buckets_and_quantiles() -> None:
    hist = Histogram()
    assert hist.quantile(0.5) is None
    for v in (0.0005, 0.0006, 0.002, 100.0):
        hist.observe(v)
    assert hist.counts[0] == 1  # <= 0.5 ms (Prometheus buckets are "le")
    assert hist.counts[1] == 1
    assert hist.counts[2] == 1
    assert hist.counts[-1] == 1  # +Inf
    assert hist.count == 4
    assert hist.sum == pytest.approx(100.0031)
    assert hist.quantile(0.5) == LATENCY_BOUNDS[1]
    assert hist.quantile(1.0) == math.inf


def test_latency_is_acceptance_to_final_reply() -> None:
    h = Harness()
    c = h.session("c")
    w = h.worker("s")
    r = h.req(c, "s")
    h.clock.advance(0.04)
    h.reply(w, r, final=False)
    h.clock.advance(0.02)
    h.reply(w, r)
    lat = h.router.services["s"].latency
    assert lat.count == 1
    assert lat.sum == pytest.approx(0.06)
    assert lat.quantile(0.5) == 0.1


@pytest.mark.allow_error_logs("RuntimeError: tracer bug")
def test_tracers_see_every_step_and_a_failing_tracer_does_not_break_routing() -> None:
    h = Harness()
    seen: list[tuple[str, int, str]] = []

    def tracer(event: str, request: Request, detail: str, now: float) -> None:
        seen.append((event, request.id, detail))

    def broken(*_: Any) -> None:
        raise RuntimeError("tracer bug")

    h.router.tracers.extend([broken, tracer])
    c = h.session("caller")
    w = h.worker("s", label="w1")
    r = h.req(c, "s")
    h.reply(w, r)
    bad = h.call(c, "gone", on_no_worker="fail")
    assert bad is None
    rid = r.id
    assert seen[:3] == [
        ("accepted", rid, "caller"),
        ("dispatched", rid, "w1"),
        ("replied", rid, "w1"),
    ]
    assert seen[3][0] == "accepted"
    assert seen[4][0] == "failed" and seen[4][2].startswith(f"{int(ErrorCode.NO_WORKER)} ")


def test_debug_log_lines_carry_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    c = h.session("caller", transport="ws")
    with caplog.at_level(logging.DEBUG, logger="maitred.core.router"):
        r = h.call(c, "nobody", on_no_worker="fail")
    assert r is None
    records = [rec for rec in caplog.records if getattr(rec, "req", None) is not None]
    assert len(records) == 2
    assert {getattr(rec, "transport", None) for rec in records} == {"ws"}
    assert records[0].getMessage() == f"req {records[0].req}: caller called nobody"
    assert f"failed: {int(ErrorCode.NO_WORKER)} " in records[1].getMessage()
