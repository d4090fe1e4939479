"""Drain and shutdown: refuse new work, let in-flight work finish, then fail what is left."""

from __future__ import annotations

import pytest

from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import RequestState
from tests.core.harness import Harness, sink_of


def test_begin_drain_refuses_new_requests_and_workers(h: Harness) -> None:
    w = h.worker("svc")
    client = h.session("client")
    inflight = h.req(client, "svc")
    waiting = h.req(client, "svc")
    h.router.begin_drain()
    assert h.router.draining
    assert h.call(client, "svc", correlation="late") is None
    [(refused, error)] = sink_of(client).errors
    assert refused.correlation == "late"
    assert error.code is ErrorCode.SHUTTING_DOWN
    with pytest.raises(MaitredError) as info:
        h.worker("svc")
    assert info.value.code is ErrorCode.SHUTTING_DOWN
    # what was accepted before still completes
    h.reply(w, inflight, (b"1",))
    assert waiting.worker is w
    h.reply(w, waiting, (b"2",))
    assert sink_of(client).finals() == [[b"1"], [b"2"]]
    assert h.router.inflight_count() == 0


def test_shutdown_fails_everything_and_removes_every_worker(h: Harness) -> None:
    w1 = h.worker("a")
    w2 = h.worker("b", credit=2)
    client = h.session("client")
    ra = h.req(client, "a")
    rb = h.req(client, "b")
    queued = h.req(client, "a")
    nobody = h.req(client, "c")  # a service nobody serves
    h.router.shutdown(h.now)
    sink = sink_of(client)
    for req in (ra, rb, queued, nobody):
        assert sink.code_for(req) is ErrorCode.SHUTTING_DOWN, req
        assert req.state is RequestState.DONE
    assert sink_of(w1.session).removed == [(w1, "shutdown")]
    assert sink_of(w2.session).removed == [(w2, "shutdown")]
    assert not w1.alive and not w2.alive
    assert list(h.router.iter_workers()) == []
    assert h.router.inflight_count() == 0
    assert h.router.draining
    # late replies find nothing
    assert h.reply(w1, ra) is False
    assert sink.finals() == []
    gone = h.payloads("$sys.worker.gone")
    assert {p["reason"] for p in gone} == {"shutdown"}
    h.router.shutdown(h.now)  # twice: harmless
    assert len(sink.errors) == 4


def test_shutdown_skips_closed_callers(h: Harness) -> None:
    h.worker("svc")
    client = h.session("client")
    h.req(client, "svc")
    h.req(client, "svc")
    h.close(client)
    h.router.shutdown(h.now)
    assert sink_of(client).errors == []


def test_shutdown_after_drain_with_expired_and_cancelled_requests(h: Harness) -> None:
    w = h.worker("svc", credit=2)
    client = h.session("client")
    cancelled = h.req(client, "svc")
    live = h.req(client, "svc")
    h.router.cancel(cancelled, h.now)
    h.router.begin_drain()
    h.router.shutdown(h.now)
    sink = sink_of(client)
    assert sink.code_for(cancelled) is None
    assert sink.code_for(live) is ErrorCode.SHUTTING_DOWN
    assert sink_of(w.session).removed == [(w, "shutdown")]
