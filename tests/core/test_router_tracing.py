"""The debug log is a tracer: one DEBUG line per step of every request, with extras."""

from __future__ import annotations

import logging

import pytest

from maitred.core.access import ANONYMOUS
from maitred.core.routing.model import BaseSink, Request, Session
from maitred.core.routing.tracing import log_trace
from tests.core.harness import Harness


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [rec for rec in caplog.records if getattr(rec, "req", None) is not None]


def test_every_step_of_a_served_request_is_logged_with_its_extras(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    c = h.session("caller", transport="ws")
    w = h.worker("echo", label="w1")
    with caplog.at_level(logging.DEBUG, logger="maitred.core.router"):
        r = h.req(c, "echo")
        h.clock.now += 0.25
        h.reply(w, r)
    lines = _lines(caplog)
    assert [rec.getMessage() for rec in lines] == [
        f"req {r.id}: caller called echo",
        f"req {r.id}: echo -> worker w1 (delivery 1)",
        f"req {r.id}: echo answered by w1 in 250.0 ms",
    ]
    assert [getattr(rec, "transport", None) for rec in lines] == ["ws", "test", "ws"]
    assert [getattr(rec, "worker", None) for rec in lines] == [None, "w1", "w1"]


def test_nothing_is_logged_when_debug_is_off(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    c = h.session("caller")
    h.worker("echo")
    with caplog.at_level(logging.INFO, logger="maitred.core.router"):
        h.req(c, "echo")
    assert _lines(caplog) == []


def test_a_failure_line_carries_the_code(caplog: pytest.LogCaptureFixture) -> None:
    session = Session(1, "mdp", BaseSink(), ANONYMOUS, "c1", 0.0)
    request = Request(
        id=9, service="s", body=(), caller=session, correlation=None, deadline=1.0, accepted=0.0
    )
    with caplog.at_level(logging.DEBUG, logger="maitred.core.router"):
        log_trace("failed", request, "504 too late", float("nan"))
        log_trace("dispatched", request, "w9", 0.0)  # no worker on the request: no transport
        log_trace("unknown", request, "", 0.0)  # an event it does not know: nothing
    lines = _lines(caplog)
    assert [rec.getMessage() for rec in lines] == [
        "req 9: s failed: 504 too late",
        "req 9: s -> worker w9 (delivery 0)",
    ]
    assert getattr(lines[0], "code", None) == 504
    assert getattr(lines[1], "transport", None) == ""
