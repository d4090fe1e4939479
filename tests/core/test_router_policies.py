"""ServicePolicy: on_no_worker, max_queue/overflow, redeliver/max_deliveries."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from maitred.core.errors import ErrorCode
from maitred.core.routing.model import RequestState, ServicePolicy
from tests.core.harness import Harness, sink_of

HarnessFactory = Callable[..., Harness]


# -- on_no_worker ---------------------------------------------------------------------------------


def test_wait_queues_until_a_worker_comes(h: Harness) -> None:
    client = h.session("client")
    req = h.req(client, "svc")
    assert req.state is RequestState.QUEUED
    assert sink_of(client).calls == []
    assert "$sys.message.unhandled" not in h.event_topics()


def test_fail_answers_no_worker_at_once(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(on_no_worker="fail"))
    watcher = h.session("watcher")
    h.router.subscribe(watcher, "$sys.message.unhandled")
    client = h.session("client")
    assert h.call(client, "svc", correlation="c1") is None
    [(request, error)] = sink_of(client).errors
    assert error.code is ErrorCode.NO_WORKER
    assert int(error.code) == 503
    assert request.correlation == "c1"
    assert request.service == "svc"
    assert h.payloads("$sys.message.unhandled") == [
        {"service": "svc", "reason": "no worker", "caller": client.label}
    ]
    assert sink_of(watcher).event_payloads("$sys.message.unhandled") == [
        {"service": "svc", "reason": "no worker", "caller": client.label}
    ]
    assert h.router.stats["requests.unhandled"] == 1
    assert "svc" not in h.router.services


def test_fail_still_queues_when_workers_are_busy(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(on_no_worker="fail"))
    w = h.worker("svc")
    client = h.session("client")
    r1 = h.req(client, "svc")
    r2 = h.req(client, "svc")
    assert r2.state is RequestState.QUEUED
    h.reply(w, r1)
    assert r2.worker is w


def test_fail_fails_the_queue_when_the_last_worker_leaves(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(on_no_worker="fail"))
    w = h.worker("svc")
    client = h.session("client")
    r1 = h.req(client, "svc")
    r2 = h.req(client, "svc")
    r3 = h.req(client, "svc")
    h.router.remove_worker(w, h.now)
    sink = sink_of(client)
    assert sink.code_for(r1) is ErrorCode.WORKER_DIED
    assert sink.code_for(r2) is ErrorCode.NO_WORKER
    assert sink.code_for(r3) is ErrorCode.NO_WORKER
    assert "svc" not in h.router.services


def test_policy_is_per_service(make_harness: HarnessFactory) -> None:
    h = make_harness(policies={"strict": ServicePolicy(on_no_worker="fail")})
    client = h.session("client")
    assert h.call(client, "strict") is None
    assert h.req(client, "lenient").state is RequestState.QUEUED
    assert h.router.services["lenient"].policy == ServicePolicy()


# -- max_queue and overflow -----------------------------------------------------------------------


def test_max_queue_reject(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(max_queue=2, overflow="reject"))
    client = h.session("client")
    r1 = h.req(client, "svc")
    r2 = h.req(client, "svc")
    assert h.call(client, "svc") is None
    assert sink_of(client).error_codes() == [ErrorCode.QUEUE_FULL]
    assert h.router.stats["requests.queue_full"] == 1
    svc = h.router.services["svc"]
    assert svc.queued == 2
    assert [r1.state, r2.state] == [RequestState.QUEUED, RequestState.QUEUED]


def test_max_queue_counts_only_waiting_requests(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(max_queue=1))
    h.worker("svc", credit=2)
    client = h.session("client")
    reqs = [h.req(client, "svc") for _ in range(3)]  # 2 in flight + 1 waiting
    assert [r.state for r in reqs].count(RequestState.DISPATCHED) == 2
    assert h.call(client, "svc") is None


def test_max_queue_drop_oldest(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(max_queue=2, overflow="drop_oldest"))
    client = h.session("client")
    r1 = h.req(client, "svc")
    r2 = h.req(client, "svc")
    r3 = h.req(client, "svc")
    sink = sink_of(client)
    assert [(r.id, e.code) for r, e in sink.errors] == [(r1.id, ErrorCode.QUEUE_FULL)]
    assert r1.state is RequestState.DONE
    assert (r2.state, r3.state) == (RequestState.QUEUED, RequestState.QUEUED)
    assert h.router.stats["requests.dropped_oldest"] == 1
    svc = h.router.services["svc"]
    assert svc.queued == 2
    w = h.worker("svc")
    assert r2.worker is w
    h.reply(w, r2)
    assert r3.worker is w


def test_drop_oldest_skips_cancelled_entries(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(max_queue=2, overflow="drop_oldest"))
    client = h.session("client")
    r1 = h.req(client, "svc")
    r2 = h.req(client, "svc")
    h.router.cancel(r1, h.now)
    r3 = h.req(client, "svc")  # room again: nothing dropped
    assert sink_of(client).errors == []
    r4 = h.req(client, "svc")  # full: r2 is the oldest live one
    assert [r.id for r, _ in sink_of(client).errors] == [r2.id]
    assert h.router.services["svc"].queued == 2
    assert (r3.state, r4.state) == (RequestState.QUEUED, RequestState.QUEUED)


@pytest.mark.parametrize("overflow", ["reject", "drop_oldest"])
def test_max_queue_zero_refuses_anything_that_would_wait(
    make_harness: HarnessFactory, overflow: str
) -> None:
    h = make_harness(policy=ServicePolicy(max_queue=0, overflow=overflow))
    w = h.worker("svc")
    client = h.session("client")
    r1 = h.req(client, "svc")
    assert r1.worker is w
    assert h.call(client, "svc") is None
    assert sink_of(client).error_codes() == [ErrorCode.QUEUE_FULL]


# -- redelivery -----------------------------------------------------------------------------------


def test_no_redeliver_fails_in_flight_requests_at_once(h: Harness) -> None:
    w1 = h.worker("svc")
    h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    assert req.worker is w1
    h.router.remove_worker(w1, h.now, "disconnect")
    error = sink_of(client).error_for(req)
    assert error is not None and error.code is ErrorCode.WORKER_DIED
    assert "disconnect" in error.reason
    assert req.state is RequestState.DONE
    assert h.router.services["svc"].errors == 1


def test_redeliver_to_another_worker(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(redeliver=True))
    w1 = h.worker("svc")
    w2 = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    assert req.worker is w1
    h.router.remove_worker(w1, h.now)
    assert req.worker is w2
    assert req.deliveries == 2
    assert sink_of(w2.session).tokens() == [req.id]
    assert sink_of(client).errors == []
    assert h.router.stats["requests.redelivered"] == 1
    h.reply(w2, req, (b"ok",))
    assert sink_of(client).finals() == [[b"ok"]]


def test_redelivered_requests_go_before_newer_ones(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(redeliver=True))
    w1 = h.worker("svc", credit=2)
    w2 = h.worker("svc")
    client = h.session("client")
    a, b, c = (h.req(client, "svc") for _ in range(3))
    assert (a.worker, b.worker, c.worker) == (w1, w2, w1)
    d = h.req(client, "svc")
    e = h.req(client, "svc")
    h.router.remove_worker(w1, h.now)
    svc = h.router.services["svc"]
    assert [r.id for r in svc.queue if r.state is RequestState.QUEUED] == [a.id, c.id, d.id, e.id]
    h.reply(w2, b)
    assert a.worker is w2
    h.reply(w2, a)
    assert c.worker is w2


def test_redeliver_waits_for_a_new_worker(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(redeliver=True))
    w1 = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    h.router.remove_worker(w1, h.now)
    assert req.state is RequestState.QUEUED
    assert h.router.services["svc"].queued == 1
    w2 = h.worker("svc")
    assert req.worker is w2


def test_redeliver_with_fail_policy_and_no_worker_left(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(redeliver=True, on_no_worker="fail"))
    w1 = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    h.router.remove_worker(w1, h.now)
    error = sink_of(client).error_for(req)
    assert error is not None and error.code is ErrorCode.NO_WORKER


@pytest.mark.parametrize("max_deliveries", [1, 2, 3])
def test_max_deliveries_is_respected(make_harness: HarnessFactory, max_deliveries: int) -> None:
    h = make_harness(policy=ServicePolicy(redeliver=True, max_deliveries=max_deliveries))
    client = h.session("client")
    workers = [h.worker("svc") for _ in range(max_deliveries + 2)]
    req = h.req(client, "svc")
    for n in range(1, max_deliveries + 1):
        assert req.deliveries == n
        current = req.worker
        assert current is not None
        h.router.remove_worker(current, h.now)
    error = sink_of(client).error_for(req)
    assert error is not None and error.code is ErrorCode.WORKER_DIED
    assert req.deliveries == max_deliveries
    delivered = sum(len(sink_of(w.session).requests) for w in workers)
    assert delivered == max_deliveries


def test_redeliver_skips_requests_already_answered(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(redeliver=True, request_timeout=1.0))
    w1 = h.worker("svc", credit=2)
    w2 = h.worker("svc")
    client = h.session("client")
    a = h.req(client, "svc")
    b = h.req(client, "svc")
    c = h.req(client, "svc")
    assert (a.worker, b.worker, c.worker) == (w1, w2, w1)
    h.router.cancel(a, h.now)
    h.router.remove_worker(w1, h.now)
    # a was cancelled: neither redelivered nor answered
    assert a.state is RequestState.CANCELLED
    assert sink_of(client).error_for(a) is None
    assert c.state is RequestState.QUEUED


# -- replacing the policies (reload) ---------------------------------------------------------------


def test_set_policies_changes_existing_and_future_services(h: Harness) -> None:
    client = h.session("client")
    h.req(client, "old")  # "old" exists now, with the default policy
    assert h.router.policy_for("old").on_no_worker == "wait"
    failing = ServicePolicy(on_no_worker="fail")
    h.router.set_policies(lambda name: failing)
    assert h.router.services["old"].policy is failing
    assert h.router.policy_for("new") is failing
    assert h.call(client, "new", correlation="c") is None  # refused at once: no worker
    [(_, error)] = sink_of(client).errors
    assert error.code is ErrorCode.NO_WORKER
