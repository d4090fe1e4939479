"""Request deadlines: a coarse timing wheel, never early, at most one resolution late."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.core.errors import ErrorCode
from maitred.core.routing.model import NO_DEADLINE, RequestState, ServicePolicy
from tests.core.harness import Harness, sink_of

HarnessFactory = Callable[..., Harness]


@pytest.fixture
def h1(make_harness: HarnessFactory) -> Harness:
    """request_timeout 1.0 s, resolution 0.05 s."""
    return make_harness(policy=ServicePolicy(request_timeout=1.0), resolution=0.05)


def test_queued_request_expires_with_timeout(h1: Harness) -> None:
    h = h1
    watcher = h.session("watcher")
    h.router.subscribe(watcher, "$sys.message.unhandled")
    client = h.session("client")
    req = h.req(client, "svc")
    assert req.deadline == h.now + 1.0
    h.advance(1.05)
    assert req.state is RequestState.EXPIRED
    error = sink_of(client).error_for(req)
    assert error is not None and error.code is ErrorCode.TIMEOUT
    assert h.router.stats["requests.expired_queued"] == 1
    assert h.payloads("$sys.message.unhandled") == [
        {
            "service": "svc",
            "reason": "deadline passed while waiting for a worker",
            "caller": client.label,
        }
    ]
    assert len(sink_of(watcher).event_payloads("$sys.message.unhandled")) == 1
    assert "svc" not in h.router.services  # nothing left of it
    # a worker that comes later gets nothing
    w = h.worker("svc")
    assert sink_of(w.session).requests == []
    h.advance(5)
    assert len(sink_of(client).errors) == 1


def test_never_early_and_at_most_one_resolution_late(h1: Harness) -> None:
    h = h1
    client = h.session("client")
    start = h.now
    req = h.req(client, "svc")
    h.clock.now = start + 0.99
    h.tick()
    assert req.state is RequestState.QUEUED
    h.clock.now = start + 1.0 - 1e-9
    h.tick()
    assert req.state is RequestState.QUEUED
    h.clock.now = start + 1.05
    h.tick()
    assert req.state is RequestState.EXPIRED
    assert sink_of(client).code_for(req) is ErrorCode.TIMEOUT


def test_expiry_keeps_queue_accounting(h1: Harness) -> None:
    h = h1
    client = h.session("client")
    old = h.req(client, "svc")
    h.advance(0.5)
    new = h.req(client, "svc")
    svc = h.router.services["svc"]
    assert svc.queued == 2
    h.advance(0.6)
    assert old.state is RequestState.EXPIRED and new.state is RequestState.QUEUED
    assert svc.queued == 1
    assert svc.timeouts == 1
    w = h.worker("svc")
    assert new.worker is w
    assert sink_of(w.session).tokens() == [new.id]


def test_dispatched_request_expires_and_its_worker_keeps_the_credit(h1: Harness) -> None:
    h = h1
    w = h.worker("svc")
    client = h.session("client")
    first = h.req(client, "svc")
    req = h.req(client, "svc")  # waits, so its deadline is armed; then dispatched
    h.advance(0.5)
    h.reply(w, first)
    assert req.state is RequestState.DISPATCHED
    h.advance(0.55)
    assert req.state is RequestState.EXPIRED
    assert sink_of(client).code_for(req) is ErrorCode.TIMEOUT
    assert h.router.stats["requests.expired_inflight"] == 1
    assert h.router.services["svc"].timeouts == 1
    assert req.id in w.inflight and w not in w.service.free
    # partials and the final are dropped; the final frees the worker
    assert h.reply(w, req, (b"p",), final=False)
    assert h.reply(w, req, (b"f",))
    assert sink_of(client).reply_bodies(req) == []
    assert w in w.service.free


def test_reply_before_the_deadline_disarms_it(h1: Harness) -> None:
    h = h1
    w = h.worker("svc")
    client = h.session("client")
    first = h.req(client, "svc")
    req = h.req(client, "svc")
    h.reply(w, first)
    h.reply(w, req)
    h.advance(10)
    assert sink_of(client).errors == []
    assert req.state is RequestState.DONE


def test_cancel_disarms_the_deadline(h1: Harness) -> None:
    h = h1
    client = h.session("client")
    req = h.req(client, "svc")
    h.router.cancel(req, h.now)
    h.advance(10)
    assert sink_of(client).errors == []
    assert req.state is RequestState.CANCELLED


def test_per_request_timeout_overrides_the_policy(h1: Harness) -> None:
    h = h1
    client = h.session("client")
    short = h.req(client, "svc", timeout=0.2)
    long = h.req(client, "svc", timeout=5.0)
    default = h.req(client, "svc")
    h.advance(0.25)
    assert [short.state, long.state, default.state] == [
        RequestState.EXPIRED,
        RequestState.QUEUED,
        RequestState.QUEUED,
    ]
    h.advance(1.0)
    assert default.state is RequestState.EXPIRED and long.state is RequestState.QUEUED
    h.advance(4.0)
    assert long.state is RequestState.EXPIRED
    assert [r.id for r, _ in sink_of(client).errors] == [short.id, default.id, long.id]


def test_request_timeout_zero_means_no_deadline(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(request_timeout=0))
    client = h.session("client")
    req = h.req(client, "svc")
    assert req.deadline == NO_DEADLINE
    h.advance(1e6)
    assert req.state is RequestState.QUEUED
    assert sink_of(client).errors == []


@pytest.mark.parametrize("asked", [0, 0.0, -5.0, math.nan, None])
def test_a_caller_cannot_switch_its_deadline_off(h1: Harness, asked: float | None) -> None:
    """A timeout of 0, negative, NaN or none from a caller means the service's deadline."""
    h = h1
    client = h.session("client")
    req = h.req(client, "svc", timeout=asked)
    assert req.deadline == h.now + 1.0
    h.advance(1.05)
    assert req.state is RequestState.EXPIRED
    assert sink_of(client).error_codes() == [ErrorCode.TIMEOUT]


def test_a_caller_deadline_is_capped(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(request_timeout=1.0, max_request_timeout=60.0))
    client = h.session("client")
    assert h.req(client, "svc", timeout=1e300).deadline == h.now + 60.0
    assert h.req(client, "svc", timeout=5.0).deadline == h.now + 5.0
    # only a transport's own queue asks for no deadline at all, with math.inf
    assert math.isinf(h.req(client, "svc", timeout=math.inf).deadline)
    uncapped = make_harness(policy=ServicePolicy(request_timeout=1.0, max_request_timeout=0))
    client = uncapped.session("client")
    assert uncapped.req(client, "svc", timeout=1e6).deadline == uncapped.now + 1e6


def test_many_deadlines_in_one_bucket(h1: Harness) -> None:
    h = h1
    client = h.session("client")
    reqs = [h.req(client, "svc") for _ in range(50)]
    h.advance(1.05)
    assert all(r.state is RequestState.EXPIRED for r in reqs)
    assert [r.id for r, _ in sink_of(client).errors] == [r.id for r in reqs]


def test_expiry_for_a_closed_caller_delivers_nothing(h1: Harness) -> None:
    h = h1
    client = h.session("client")
    req = h.req(client, "svc")
    h.close(client)  # its waiting request leaves the queue with it
    assert req.state is RequestState.CANCELLED
    h.advance(2)
    assert req.state is RequestState.CANCELLED
    assert sink_of(client).errors == []


@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    timeout=st.floats(min_value=1e-3, max_value=1e4, allow_nan=False),
    resolution=st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.25, 1.0]),
)
def test_property_never_early_at_most_one_resolution_late(
    start: float, timeout: float, resolution: float
) -> None:
    h = Harness(policy=ServicePolicy(request_timeout=timeout), resolution=resolution, start=start)
    client = h.session("client")
    req = h.req(client, "svc")
    deadline = req.deadline
    just_before = math.nextafter(deadline, -math.inf)
    if just_before >= start:
        h.clock.now = just_before
        h.tick()
        assert req.state is RequestState.QUEUED, (deadline, h.now)
    h.clock.now = deadline + resolution * 1.001
    h.tick()
    assert req.state is RequestState.EXPIRED
