"""Worker liveness: idle workers expire after heartbeat_interval * liveness of silence; busy
workers silent that long get no new request (and lose pipelined credit) and are dropped after
busy_timeout of silence; 0 means the router never expires the worker. A dead worker's requests
pipelined behind the one it worked on go to another worker whatever the redeliver policy."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from maitred.core.errors import ErrorCode
from maitred.core.routing.model import RequestState, ServicePolicy, Session, Worker
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


def test_busy_worker_silent_for_busy_timeout_is_dropped(lh: Harness) -> None:
    h = lh
    w = h.worker("svc")
    client = h.session("client")
    h.advance(2.0)
    h.router.touch(w, h.now)
    heard = h.now
    req = h.req(client, "svc")  # silence counts from the worker's last word, not the dispatch
    h.advance(5.0)
    assert w.alive and w.suspect
    h.clock.now = heard + 9.99
    h.tick()
    assert w.alive
    h.clock.now = heard + 10.0
    h.tick()
    assert not w.alive
    assert sink_of(w.session).removed == [(w, "expired")]
    assert sink_of(client).code_for(req) is ErrorCode.WORKER_DIED


def test_busy_worker_silent_for_its_window_gets_no_new_request(lh: Harness) -> None:
    h = lh
    a = h.worker("svc", credit=2)
    client = h.session("client")
    first = h.req(client, "svc")
    assert first.worker is a
    h.advance(3.0)  # silent for its window while busy: suspected, not dropped
    assert a.alive and a.suspect
    assert a not in h.router.services["svc"].free
    assert h.router.stats["workers.suspected"] == 1
    second = h.req(client, "svc")
    assert second.state is RequestState.QUEUED  # not to a, although it has credit left
    b = h.worker("svc")
    assert second.worker is b
    third = h.req(client, "svc")
    h.router.touch(a, h.now)  # a word from it: back in dispatch
    assert not a.suspect
    assert third.worker is a
    assert h.router.stats["workers.revived"] == 1


def test_a_reply_revives_a_suspect_worker(lh: Harness) -> None:
    h = lh
    a = h.worker("svc")
    client = h.session("client")
    first = h.req(client, "svc")
    h.advance(5.0)
    assert a.suspect
    h.reply(a, first)
    assert not a.suspect and a in h.router.services["svc"].free
    h.advance(2.9)
    assert a.alive
    h.advance(0.1)
    assert not a.alive  # idle and silent for its window again


def test_busy_timeout_within_the_window_drops_a_silent_busy_worker_at_the_window(
    make_harness: HarnessFactory,
) -> None:
    h = make_harness(
        liveness=Liveness(heartbeat_interval=1.0, liveness=3, busy_timeout=1.0),
        policy=ServicePolicy(request_timeout=0),
    )
    w = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    h.advance(2.9)
    assert w.alive
    h.advance(0.1)
    assert not w.alive
    assert sink_of(client).code_for(req) is ErrorCode.WORKER_DIED


def test_a_busy_worker_that_heartbeats_is_never_suspected(lh: Harness) -> None:
    h = lh
    w = h.worker("svc", credit=2)
    client = h.session("client")
    h.req(client, "svc")
    for _ in range(60):
        h.advance(2.0)
        h.router.touch(w, h.now)
    assert w.alive and not w.suspect
    assert w in h.router.services["svc"].free
    assert h.router.stats["workers.suspected"] == 0


def _grow_credit(h: Harness, worker: Worker, client: Session, to: int) -> None:
    """Answer at once while requests wait, until the worker's adaptive credit is ``to``."""
    for _ in range(200):
        if worker.credit >= to:
            return
        if len(h.router.services["svc"].queue) < 2 * to:
            for _ in range(2 * to):
                h.req(client, "svc")
        h.reply(worker, next(iter(worker.inflight.values())))
    raise AssertionError(f"credit stuck at {worker.credit}")


def test_pipelined_credit_collapses_when_the_worker_stops_answering(lh: Harness) -> None:
    h = lh
    w = h.worker("svc", max_credit=8, pipeline_below=0.002)
    client = h.session("client")
    _grow_credit(h, w, client, 8)
    assert w.credit == 8 and len(w.inflight) == 8
    # it keeps heartbeating but answers nothing: alive, but no longer pipelined
    h.advance(2.0)
    h.router.touch(w, h.now)
    assert w.credit == 8
    h.advance(1.0)
    h.router.touch(w, h.now)
    assert w.alive and not w.suspect
    assert w.credit == 1
    assert h.router.stats["workers.pipeline_stalled"] == 1
    assert w not in h.router.services["svc"].free


def test_a_dead_worker_hands_its_unstarted_requests_to_another(lh: Harness) -> None:
    """Without redeliver, the request the dead worker may have started fails with 502; those
    pipelined behind it were never started and go to another worker."""
    h = lh
    w = h.worker("svc", max_credit=4, pipeline_below=0.002)
    client = h.session("client")
    _grow_credit(h, w, client, 4)
    held = list(w.inflight.values())
    assert len(held) == 4
    h.router.remove_worker(w, h.now, "disconnected")
    assert sink_of(client).code_for(held[0]) is ErrorCode.WORKER_DIED
    assert all(r.state is RequestState.QUEUED for r in held[1:])
    assert all(r.deliveries == 0 for r in held[1:])
    assert h.router.stats["requests.handed_back"] == 3
    other = h.worker("svc", credit=4)
    assert [r.worker for r in held[1:]] == [other] * 3
    assert [r.deliveries for r in held[1:]] == [1, 1, 1]
    # they keep their place at the head of the queue
    assert list(other.inflight.values())[:3] == held[1:]


def test_a_dead_worker_redelivers_all_it_held_with_redeliver(make_harness: HarnessFactory) -> None:
    h = make_harness(liveness=LIVE, policy=ServicePolicy(redeliver=True, request_timeout=0))
    w = h.worker("svc", max_credit=4, pipeline_below=0.002)
    client = h.session("client")
    _grow_credit(h, w, client, 4)
    held = list(w.inflight.values())
    other = h.worker("svc", credit=50)  # takes what waits, with room for what w held
    h.router.remove_worker(w, h.now, "disconnected")
    assert sink_of(client).errors == []
    assert [r.worker for r in held] == [other] * 4
    assert [r.deliveries for r in held] == [2, 1, 1, 1]


def test_unstarted_requests_of_a_gone_caller_are_dropped(lh: Harness) -> None:
    h = lh
    w = h.worker("svc", max_credit=4, pipeline_below=0.002)
    client = h.session("client")
    _grow_credit(h, w, client, 4)
    held = list(w.inflight.values())
    h.close(client)
    h.router.remove_worker(w, h.now, "disconnected")
    assert all(r.state is RequestState.CANCELLED for r in held[1:])
    assert h.router.services.get("svc") is None or h.router.services["svc"].queued == 0


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
