"""Worker liveness: idle workers expire after heartbeat_interval * liveness of silence, busy
workers after busy_timeout; 0 means the router never expires the worker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from maitred.core.errors import ErrorCode
from maitred.core.routing.model import RequestState, ServicePolicy
from maitred.core.routing.router import Liveness
from tests.core.harness import Harness, sink_of

HarnessFactory = Callable[..., Harness]

#: idle workers expire after 3 s of silence, busy ones after 10 s
LIVE = Liveness(heartbeat_interval=1.0, liveness=3, busy_timeout=10.0)


@pytest.fixture
def lh(make_harness: HarnessFactory) -> Harness:
    return make_harness(liveness=LIVE, policy=ServicePolicy(request_timeout=0))


def test_liveness_defaults() -> None:
    live = Liveness()
    assert live.idle_timeout == live.heartbeat_interval * live.liveness
    assert live.problems() == []
    bad = Liveness(heartbeat_interval=0, liveness=0, busy_timeout=-1)
    assert len(bad.problems()) == 3


def test_silent_idle_worker_expires(lh: Harness) -> None:
    h = lh
    watcher = h.session("watcher")
    h.router.subscribe(watcher, "$sys.>")
    w = h.worker("svc")
    start = h.now
    h.clock.now = start + 2.99
    h.tick()
    assert w.alive
    h.clock.now = start + 3.0
    h.tick()
    assert not w.alive
    assert sink_of(w.session).removed == [(w, "expired")]
    assert h.router.stats["workers.expired"] == 1
    assert h.payloads("$sys.worker.expired") == [
        {"service": "svc", "worker": w.label, "reason": "expired"}
    ]
    assert h.payloads("$sys.service.offline") == [{"service": "svc"}]
    assert "$sys.worker.gone" not in h.event_topics()
    topics = sink_of(watcher).topics()
    assert topics[-2:] == ["$sys.worker.expired", "$sys.service.offline"]
    assert "svc" not in h.router.services
    assert w not in w.session.workers
    # the session itself stays open
    assert not w.session.closed


def test_touch_keeps_a_worker_alive(lh: Harness) -> None:
    h = lh
    w = h.worker("svc")
    for _ in range(10):
        h.advance(2.0)
        h.router.touch(w, h.now)
    assert w.alive
    h.advance(2.9)
    assert w.alive
    h.advance(0.1)
    assert not w.alive


def test_only_the_silent_workers_expire(lh: Harness) -> None:
    h = lh
    a = h.worker("svc")
    b = h.worker("svc")
    c = h.worker("svc")
    h.advance(2.0)
    h.router.touch(b, h.now)
    h.advance(1.0)
    assert (a.alive, b.alive, c.alive) == (False, True, False)
    assert "$sys.service.offline" not in h.event_topics()  # b is still there
    assert set(h.router.services["svc"].workers) == {b}
    assert list(h.router.services["svc"].free) == [b]


def test_busy_worker_uses_busy_timeout(lh: Harness) -> None:
    h = lh
    w = h.worker("svc")
    client = h.session("client")
    h.advance(2.0)
    req = h.req(client, "svc")  # assignment restarts the clock: busy from now on
    busy_since = h.now
    h.advance(5.0)
    assert w.alive
    h.clock.now = busy_since + 9.99
    h.tick()
    assert w.alive
    h.clock.now = busy_since + 10.0
    h.tick()
    assert not w.alive
    assert sink_of(w.session).removed == [(w, "expired")]
    assert sink_of(client).code_for(req) is ErrorCode.WORKER_DIED


def test_partial_replies_are_signs_of_life(lh: Harness) -> None:
    h = lh
    w = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    for _ in range(5):
        h.advance(8.0)
        h.reply(w, req, (b"p",), final=False)
    assert w.alive
    h.advance(9.9)
    assert w.alive
    h.advance(0.1)
    assert not w.alive


def test_back_to_idle_after_the_final_reply(lh: Harness) -> None:
    h = lh
    w = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    h.advance(5.0)  # longer than the idle timeout: fine while busy
    h.reply(w, req)
    h.advance(2.9)
    assert w.alive
    h.advance(0.1)
    assert not w.alive


def test_busy_timeout_zero_never_expires_a_busy_worker(make_harness: HarnessFactory) -> None:
    h = make_harness(
        liveness=Liveness(heartbeat_interval=1.0, liveness=3, busy_timeout=0),
        policy=ServicePolicy(request_timeout=0),
    )
    w = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    h.advance(1e6)
    assert w.alive
    h.router.touch(w, h.now)
    h.advance(1e6)
    assert w.alive
    h.reply(w, req)
    h.advance(3.0)
    assert not w.alive  # idle again: the idle timeout applies


def test_per_worker_timeouts(lh: Harness) -> None:
    h = lh
    short = h.worker("svc", idle_timeout=1.0)
    normal = h.worker("svc")
    h.advance(1.0)
    assert not short.alive and normal.alive
    client = h.session("client")
    busy = h.worker("other", busy_timeout=100.0)
    h.req(client, "other")
    h.advance(50.0)
    assert busy.alive
    assert not normal.alive


def test_idle_timeout_zero_is_never_expired_by_the_router(lh: Harness) -> None:
    h = lh
    w = h.worker("svc", idle_timeout=0)
    h.advance(1e6)
    assert w.alive
    h.router.touch(w, h.now)  # harmless
    client = h.session("client")
    req = h.req(client, "svc")
    h.advance(10.0)  # busy: the busy timeout applies
    assert not w.alive
    assert sink_of(client).code_for(req) is ErrorCode.WORKER_DIED


def test_expired_worker_requests_wait_for_the_next_worker(make_harness: HarnessFactory) -> None:
    h = make_harness(liveness=LIVE, policy=ServicePolicy(redeliver=True, request_timeout=0))
    silent = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    assert req.worker is silent
    h.advance(10.0)
    assert not silent.alive
    assert req.state is RequestState.QUEUED
    assert sink_of(client).errors == []
    fresh = h.worker("svc")
    assert req.worker is fresh
    assert req.deliveries == 2


def test_expiry_redelivers_to_a_live_worker(make_harness: HarnessFactory) -> None:
    h = make_harness(liveness=LIVE, policy=ServicePolicy(redeliver=True, request_timeout=0))
    silent = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    h.advance(8.0)
    other = h.worker("svc")
    h.advance(2.0)
    assert not silent.alive and other.alive
    assert req.worker is other
    assert sink_of(other.session).tokens() == [req.id]
    h.reply(other, req)
    assert sink_of(client).finals() == [[b"ok"]]


def test_touch_on_a_removed_worker_is_harmless(lh: Harness) -> None:
    h = lh
    w = h.worker("svc")
    h.router.remove_worker(w, h.now)
    h.router.touch(w, h.now)
    h.advance(100)
    assert sink_of(w.session).removed == []  # removed by its peer: not told back


@pytest.mark.allow_error_logs("worker_removed failed")
def test_worker_removed_failure_does_not_corrupt_state(
    lh: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = lh
    w = h.worker("svc")
    survivor = h.worker("svc", idle_timeout=0)

    def boom(worker: object, reason: str) -> None:
        raise RuntimeError("transport bug")

    w.session.sink.worker_removed = boom  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="maitred.core.router"):
        h.advance(3.0)
    assert not w.alive
    assert "worker_removed failed" in caplog.text
    assert set(h.router.services["svc"].workers) == {survivor}
