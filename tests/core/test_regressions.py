"""Regression tests: defects found in the routing core while writing tests/core, now fixed.

Each test states the expected behaviour; ``@bug(n, ...)`` only records which defect it guards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

from maitred.core.access import ANONYMOUS
from maitred.core.config import parse_config
from maitred.core.errors import ConfigError, Denied, ErrorCode, MaitredError
from maitred.core.routing.model import RequestState, ServicePolicy
from maitred.core.routing.router import Liveness
from tests.core.harness import FakeSink, Harness, sink_of

F = TypeVar("F", bound=Callable[..., object])


def bug(n: int, what: str) -> Callable[[F], F]:
    """Label a regression test with the defect it guards (no effect on how it runs)."""

    def label(test: F) -> F:
        test.__doc__ = f"BUG-{n}: {what}. {test.__doc__ or ''}".strip()
        return test

    return label


# -- BUG-1 ----------------------------------------------------------------------------------------


@bug(1, "a request dispatched at once (a worker was free) never gets its deadline armed")
def test_bug1_directly_dispatched_request_times_out() -> None:
    h = Harness(policy=ServicePolicy(request_timeout=1.0))
    w = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    assert req.worker is w  # took the fast path in submit()
    h.advance(1.05)
    assert req.state is RequestState.EXPIRED
    assert sink_of(client).code_for(req) is ErrorCode.TIMEOUT


@bug(1, "... nor after it is redelivered and waits in the queue again")
def test_bug1_redelivered_request_keeps_its_deadline() -> None:
    h = Harness(policy=ServicePolicy(request_timeout=1.0, redeliver=True))
    w = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    h.router.remove_worker(w, h.now)
    assert req.state is RequestState.QUEUED  # waiting for a new worker
    h.advance(1.05)
    assert sink_of(client).code_for(req) is ErrorCode.TIMEOUT


# -- BUG-2 ----------------------------------------------------------------------------------------


@bug(2, "close_session redelivers to another worker of the session being closed")
def test_bug2_close_session_does_not_deliver_to_itself() -> None:
    h = Harness(policy=ServicePolicy(redeliver=True, max_deliveries=2))
    peer = h.session("peer")
    w1 = h.worker("svc", peer)
    h.worker("svc", peer)  # a second worker of the same service on the same connection
    client = h.session("client")
    req = h.req(client, "svc")
    assert req.worker is w1
    h.close(peer)
    assert h.violations() == []  # deliver_request went to the closed session's sink
    assert req.deliveries == 1  # the wasted delivery used up max_deliveries ...
    assert sink_of(client).errors == []  # ... so the request failed WORKER_DIED
    assert req.state is RequestState.QUEUED
    other = h.worker("svc")
    assert req.worker is other


# -- BUG-3 ----------------------------------------------------------------------------------------


@bug(3, "a quiet session still publishes $sys.session.leave")
def test_bug3_quiet_session_has_no_leave_event() -> None:
    h = Harness()
    s = h.session("shared", quiet=True)
    h.close(s)
    assert h.payloads("$sys.session.join") == []
    assert h.payloads("$sys.session.leave") == []


# -- BUG-4 ----------------------------------------------------------------------------------------


def _refused_or_silent(h: Harness, call: Callable[[], object]) -> None:
    """``call()`` on a closed session must raise a MaitredError or do nothing visible."""
    try:
        call()
    except MaitredError:
        pass
    assert h.violations() == []


@bug(4, "submit() on a closed session is dispatched to a worker")
def test_bug4_submit_from_a_closed_session_is_not_dispatched() -> None:
    h = Harness()
    w = h.worker("svc")
    client = h.session("client")
    h.close(client)
    _refused_or_silent(h, lambda: h.call(client, "svc"))
    assert sink_of(w.session).requests == []
    assert w.inflight == {}


@bug(4, "submit() on a closed session delivers its refusal to the closed session")
def test_bug4_refusal_is_not_delivered_to_a_closed_session() -> None:
    h = Harness(policy=ServicePolicy(on_no_worker="fail"))
    client = h.session("client")
    h.close(client)
    _refused_or_silent(h, lambda: h.call(client, "svc"))


@bug(4, "an mmi.* call on a closed session is answered to the closed session")
def test_bug4_mmi_from_a_closed_session() -> None:
    h = Harness()
    client = h.session("client")
    h.close(client)
    _refused_or_silent(h, lambda: h.call(client, "mmi.service", (b"x",)))


@bug(4, "subscribe() on a closed session leaves it in the topic tree for ever")
def test_bug4_subscribe_from_a_closed_session_leaks() -> None:
    h = Harness()
    client = h.session("client")
    h.close(client)
    _refused_or_silent(h, lambda: h.router.subscribe(client, "news"))
    assert h.router.topics.patterns() == {}
    assert h.router.publish(None, "news", (b"x",)) == 0


# -- BUG-5 ----------------------------------------------------------------------------------------


@bug(5, "publishing on a reserved $sys. topic is not counted/published as a denial")
def test_bug5_reserved_topic_denial_is_reported() -> None:
    h = Harness()  # the default, open policy
    watcher = h.session("watcher")
    h.router.subscribe(watcher, "$sys.auth.denied")
    pub = h.session("pub")
    with pytest.raises(Denied):
        h.router.publish(pub, "$sys.service.online", (b"{}",))
    assert h.router.stats["denied.publish"] == 1
    assert [p["name"] for p in h.payloads("$sys.auth.denied")] == ["$sys.service.online"]
    assert len(sink_of(watcher).events) == 1


# -- BUG-6 ----------------------------------------------------------------------------------------


@bug(6, "NaN/inf config values pass check() (x <= 0 is False for NaN)")
@pytest.mark.parametrize(
    "text",
    [
        "[broker]\ntick_interval = nan\n",
        "[broker]\ntick_interval = inf\n",
        "[broker]\ndrain_timeout = nan\n",
        "[liveness]\nheartbeat_interval = nan\n",
        "[liveness]\nbusy_timeout = nan\n",
        "[services.default]\nrequest_timeout = nan\n",
    ],
)
def test_bug6_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(text, "f.toml")


@bug(6, "with tick_interval = nan every submit() raises ValueError (not a MaitredError)")
def test_bug6_nan_resolution_breaks_submit() -> None:
    try:
        config = parse_config("[broker]\ntick_interval = nan\n", "f.toml")
    except ConfigError:
        return  # fixed at the source: good
    h = Harness(resolution=config.broker.tick_interval)
    client = h.session("client")
    h.call(client, "svc")  # ValueError: cannot convert float NaN to integer


# -- BUG-7 ----------------------------------------------------------------------------------------


@bug(7, "a non-table value under [services]/[transports] is reported as 'services[...]'")
@pytest.mark.parametrize(
    ("text", "key"),
    [("[services]\necho = 5\n", "services.echo"), ("[transports]\nmdp = 1\n", "transports.mdp")],
)
def test_bug7_error_names_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.toml")
    assert f"f.toml: {key}: " in str(info.value)


# -- BUG-8 ----------------------------------------------------------------------------------------


@pytest.mark.allow_error_logs("deliver_error failed for bad")
@bug(8, "a sink raising in deliver_error during tick() loses the rest of the deadline bucket")
def test_bug8_one_failing_sink_does_not_stop_other_expiries() -> None:
    h = Harness(policy=ServicePolicy(request_timeout=1.0))
    bad = h.session("bad")
    good = h.session("good")
    r_bad = h.req(bad, "svc")
    r_good = h.req(good, "svc")  # same deadline bucket as r_bad

    def boom(*_: object) -> None:
        raise RuntimeError("transport bug")

    sink_of(bad).on_error = boom
    h.clock.advance(1.05)
    try:
        h.tick()
    except RuntimeError:
        pass  # the runtime logs "router tick failed" and ticks again later
    h.advance(1.0)
    assert r_bad.state is RequestState.EXPIRED
    assert r_good.state is RequestState.EXPIRED
    assert sink_of(good).code_for(r_good) is ErrorCode.TIMEOUT


# -- BUG-9 ----------------------------------------------------------------------------------------


@bug(9, "tick() hands a redelivered request to a worker that is itself overdue in that tick")
def test_bug9_overdue_worker_gets_no_work_in_the_tick_that_expires_it() -> None:
    h = Harness(
        liveness=Liveness(heartbeat_interval=1.0, liveness=3, busy_timeout=10.0),
        policy=ServicePolicy(redeliver=True, request_timeout=0),
    )
    busy = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    h.advance(5.0)  # the idle liveness list is now empty and dropped
    idle = h.worker("svc")  # its list now comes after the busy one
    h.advance(5.0)  # busy: 10 s silent, idle: 5 s silent (> 3 s): both are dead
    assert not busy.alive
    assert not idle.alive  # it got req (and a fresh 10 s busy timeout) instead
    assert req.state is RequestState.QUEUED
    assert sink_of(idle.session).requests == []


def test_bug_harness_sanity() -> None:
    """The harness itself sees a closed-session delivery (so BUG-2/4 tests can fail)."""
    sink = FakeSink()
    h = Harness()
    session = h.router.open_session("t", sink, ANONYMOUS, h.now)
    sink.session = session
    h.sinks.append(sink)
    session.closed = True
    sink.deliver_event("x", (), {})
    assert h.violations() == [("event", "x", [], {})]
