"""Dispatch: the oldest request goes to the least recently used worker with credit left."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import ReplyKind, RequestState, ServicePolicy
from tests.core.harness import Harness, sink_of


def test_a_request_goes_to_a_free_worker_at_once(h: Harness) -> None:
    w = h.worker("echo")
    client = h.session("client")
    req = h.call(client, "echo", (b"a", b"b"), correlation="corr-1", headers={"k": "v"})
    assert req is not None
    assert req.state is RequestState.DISPATCHED
    assert req.worker is w
    assert req.deliveries == 1
    assert req.correlation == "corr-1"
    assert req.headers == {"k": "v"}
    assert req.accepted == h.now
    [(worker, delivered)] = sink_of(w.session).requests
    assert worker is w and delivered is req
    assert list(delivered.body) == [b"a", b"b"]
    assert w.inflight == {req.id: req}
    assert w not in w.service.free


def test_final_reply_reaches_the_caller_and_frees_the_worker(h: Harness) -> None:
    w = h.worker("echo")
    client = h.session("client")
    req = h.call(client, "echo")
    assert req is not None
    assert h.reply(w, req, (b"done",)) is True
    assert sink_of(client).reply_bodies(req) == [(ReplyKind.FINAL, [b"done"])]
    assert req.state is RequestState.DONE
    assert w.inflight == {}
    assert w in w.service.free
    assert w.served == 1
    svc = h.router.services["echo"]
    assert (svc.requests, svc.replies, svc.errors) == (1, 1, 0)


def test_requests_are_unique_and_increasing(h: Harness) -> None:
    client = h.session("client")
    reqs = [h.call(client, "svc") for _ in range(5)]
    ids = [r.id for r in reqs if r is not None]
    assert len(ids) == 5
    assert ids == sorted(set(ids))


def test_oldest_request_to_least_recently_used_worker(h: Harness) -> None:
    w1 = h.worker("echo")
    w2 = h.worker("echo")
    w3 = h.worker("echo")
    client = h.session("client")
    r1 = h.call(client, "echo")
    assert r1 is not None and r1.worker is w1
    h.reply(w1, r1)  # w1 is now the most recently used
    r2, r3, r4 = (h.call(client, "echo") for _ in range(3))
    assert r2 is not None and r3 is not None and r4 is not None
    assert (r2.worker, r3.worker, r4.worker) == (w2, w3, w1)


def test_queued_requests_are_served_oldest_first(h: Harness) -> None:
    w1 = h.worker("echo")
    w2 = h.worker("echo")
    client = h.session("client")
    r1, r2, r3, r4, r5 = (h.req(client, "echo") for _ in range(5))
    assert (r1.worker, r2.worker) == (w1, w2)
    svc = h.router.services["echo"]
    assert svc.queued == 3
    assert [r.state for r in (r3, r4, r5)] == [RequestState.QUEUED] * 3
    # w2 finishes first: it gets the oldest waiting request
    h.reply(w2, r2)
    assert r3.worker is w2
    h.reply(w1, r1)
    assert r4.worker is w1
    h.reply(w1, r4)
    assert r5.worker is w1
    assert svc.queued == 0
    assert sink_of(w1.session).tokens() == [r1.id, r4.id, r5.id]
    assert sink_of(w2.session).tokens() == [r2.id, r3.id]


def test_a_worker_freed_by_a_final_gets_the_next_queued_request(h: Harness) -> None:
    w = h.worker("echo")
    client = h.session("client")
    r1 = h.call(client, "echo")
    r2 = h.call(client, "echo")
    assert r1 is not None and r2 is not None
    assert r2.state is RequestState.QUEUED
    h.reply(w, r1, (b"p",), final=False)
    assert r2.state is RequestState.QUEUED  # a partial does not free the credit
    h.reply(w, r1)
    assert r2.state is RequestState.DISPATCHED and r2.worker is w
    assert w not in w.service.free


def test_credit_above_one(h: Harness) -> None:
    w = h.worker("echo", credit=3)
    client = h.session("client")
    reqs = [h.req(client, "echo") for _ in range(4)]
    assert [r.worker for r in reqs[:3]] == [w, w, w]
    assert reqs[3].state is RequestState.QUEUED
    assert len(w.inflight) == 3
    assert w not in w.service.free
    h.reply(w, reqs[1])
    assert reqs[3].worker is w
    assert len(w.inflight) == 3
    h.reply(w, reqs[0])
    assert w in w.service.free
    assert len(w.inflight) == 2


def test_credit_spreads_work_least_recently_used_first(h: Harness) -> None:
    a = h.worker("echo", credit=2)
    b = h.worker("echo", credit=1)
    client = h.session("client")
    reqs = [h.call(client, "echo") for _ in range(4)]
    workers = [r.worker if r is not None else None for r in reqs]
    # a (LRU) -> b (a was used since) -> a (b is full) -> nobody left: queued
    assert workers == [a, b, a, None]
    assert reqs[3] is not None and reqs[3].state is RequestState.QUEUED


def test_partial_replies_reach_the_caller_before_the_final(h: Harness) -> None:
    w = h.worker("echo")
    client = h.session("client")
    req = h.call(client, "echo")
    assert req is not None
    assert h.reply(w, req, (b"1",), final=False)
    assert h.reply(w, req, (b"2",), final=False)
    assert h.reply(w, req, (b"3",))
    assert sink_of(client).reply_bodies(req) == [
        (ReplyKind.PARTIAL, [b"1"]),
        (ReplyKind.PARTIAL, [b"2"]),
        (ReplyKind.FINAL, [b"3"]),
    ]
    assert h.reply(w, req, (b"4",), final=False) is False  # nothing after the final


def test_reply_for_a_token_the_worker_does_not_hold(h: Harness) -> None:
    w1 = h.worker("echo")
    w2 = h.worker("echo")
    client = h.session("client")
    req = h.call(client, "echo")
    assert req is not None and req.worker is w1
    assert h.reply(w2, req) is False  # not w2's request
    assert h.reply(w1, 99_999) is False  # nobody's request
    assert h.router.reply_error(w2, req.id, MaitredError("x"), h.now) is False
    assert h.router.stats["replies.unknown"] == 3
    assert sink_of(client).replies == []
    assert req.state is RequestState.DISPATCHED
    assert h.reply(w1, req) is True
    assert h.reply(w1, req) is False  # answered already
    assert h.router.stats["replies.unknown"] == 4
    assert len(sink_of(client).finals()) == 1


def test_late_reply_after_the_deadline_is_dropped_but_frees_the_credit(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(policy=ServicePolicy(request_timeout=1.0))
    w = h.worker("echo")
    client = h.session("client")
    blocker = h.call(client, "echo")
    req = h.call(client, "echo")  # queued behind blocker, so it has a deadline
    assert blocker is not None and req is not None
    h.reply(w, blocker)
    assert req.worker is w
    h.advance(1.5)
    assert req.state is RequestState.EXPIRED
    assert sink_of(client).error_for(req) is not None
    nxt = h.call(client, "echo")
    assert nxt is not None and nxt.state is RequestState.QUEUED  # credit still taken
    assert h.reply(w, req, (b"late",), final=False) is True
    assert h.reply(w, req, (b"late",)) is True
    assert sink_of(client).reply_bodies(req) == []
    assert req.state is RequestState.DONE
    assert nxt.state is RequestState.DISPATCHED and nxt.worker is w


def test_reply_error_reaches_the_caller_and_frees_the_worker(h: Harness) -> None:
    w = h.worker("echo")
    client = h.session("client")
    r1 = h.call(client, "echo")
    r2 = h.call(client, "echo")
    assert r1 is not None and r2 is not None
    err = MaitredError("boom", ErrorCode.INTERNAL)
    assert h.router.reply_error(w, r1.id, err, h.now) is True
    assert sink_of(client).error_for(r1) is err
    assert sink_of(client).reply_bodies(r1) == []
    assert r1.state is RequestState.DONE
    assert r2.worker is w
    svc = h.router.services["echo"]
    assert (svc.replies, svc.errors) == (0, 1)


def test_cancel_a_queued_request(h: Harness) -> None:
    client = h.session("client")
    req = h.call(client, "echo")
    assert req is not None
    h.router.cancel(req, h.now)
    assert req.state is RequestState.CANCELLED
    assert "echo" not in h.router.services  # nothing left: forgotten
    w = h.worker("echo")
    assert sink_of(w.session).requests == []
    assert sink_of(client).calls == []


def test_cancel_a_dispatched_request_keeps_the_credit_until_the_worker_answers(
    h: Harness,
) -> None:
    w = h.worker("echo")
    client = h.session("client")
    req = h.call(client, "echo")
    nxt = h.call(client, "echo")
    assert req is not None and nxt is not None
    h.router.cancel(req, h.now)
    assert req.state is RequestState.CANCELLED
    assert nxt.state is RequestState.QUEUED
    assert h.reply(w, req, (b"p",), final=False) is True
    assert h.reply(w, req) is True
    assert sink_of(client).reply_bodies(req) == []
    assert nxt.worker is w


def test_waiting_requests_go_to_a_worker_that_arrives_later(h: Harness) -> None:
    client = h.session("client")
    reqs = [h.call(client, "late") for _ in range(3)]
    svc = h.router.services["late"]
    assert svc.queued == 3 and not svc.workers
    w = h.worker("late", credit=2)
    assert [r.state for r in reqs if r is not None] == [
        RequestState.DISPATCHED,
        RequestState.DISPATCHED,
        RequestState.QUEUED,
    ]
    assert sink_of(w.session).tokens() == [r.id for r in reqs[:2] if r is not None]


def test_service_is_forgotten_when_nothing_is_left(h: Harness) -> None:
    w = h.worker("echo")
    assert "echo" in h.router.services
    h.router.remove_worker(w, h.now)
    assert "echo" not in h.router.services
    assert h.router.reply(w, 1, (), h.now) is False
    h.router.remove_worker(w, h.now)  # twice: no-op


@pytest.mark.parametrize("name", ["", "mmi.echo", "mmi.service"])
def test_add_worker_refuses_bad_names(h: Harness, name: str) -> None:
    with pytest.raises(MaitredError) as info:
        h.worker(name)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert name not in h.router.services


def test_add_worker_refuses_credit_below_one(h: Harness) -> None:
    with pytest.raises(MaitredError) as info:
        h.worker("echo", credit=0)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_worker_label_and_tag(h: Harness) -> None:
    s = h.session("peer")
    w = h.router.add_worker(s, "echo", h.now, tag=("route", 7), label="w-label")
    assert w.tag == ("route", 7)
    assert w.label == "w-label"
    w2 = h.router.add_worker(s, "echo", h.now)
    assert w2.label.startswith(s.label)
    assert s.workers.keys() == {w, w2}


def test_inflight_counts(h: Harness) -> None:
    w = h.worker("echo", credit=2)
    client = h.session("client")
    h.call(client, "echo")
    h.call(client, "echo")
    h.call(client, "echo")
    svc = h.router.services["echo"]
    assert svc.inflight() == 2
    assert h.router.inflight_count() == 2
    assert svc.queued == 1
    assert list(h.router.iter_workers()) == [w]
    snap = h.router.snapshot()
    assert snap["services"] == 1 and snap["workers"] == 1 and snap["sessions"] == 2


# -- adaptive credit ---------------------------------------------------------------------------


def test_adaptive_credit_grows_with_fast_replies_under_backlog_and_drops_on_a_slow_one() -> None:
    h = Harness()
    w = h.router.add_worker(h.session("w"), "s", h.now, credit=1, max_credit=3, pipeline_below=0.01)
    c = h.session("c")
    reqs = [h.req(c, "s") for _ in range(6)]
    assert len(w.inflight) == 1  # starts at MDP's one request per worker
    h.clock.advance(0.001)
    h.reply(w, reqs[0])  # fast, with a backlog: credit 2
    assert w.credit == 2 and len(w.inflight) == 2
    h.clock.advance(0.001)
    h.reply(w, reqs[1])  # credit 3 (the maximum)
    assert w.credit == 3 and len(w.inflight) == 3
    h.clock.advance(0.001)
    h.reply(w, reqs[2])
    assert w.credit == 3 and len(w.inflight) == 3
    h.clock.advance(0.5)
    h.reply(w, reqs[3])  # slow: back to 1, and no new request while it holds 2
    assert w.credit == 1 and len(w.inflight) == 2
    assert w not in w.service.free
    h.reply(w, reqs[4])  # slow too (it waited): still holds one
    assert len(w.inflight) == 1 and w not in w.service.free
    h.reply(w, reqs[5])
    assert not w.inflight and w in w.service.free


def test_adaptive_credit_does_not_grow_without_a_backlog() -> None:
    h = Harness()
    w = h.router.add_worker(h.session("w"), "s", h.now, credit=1, max_credit=8)
    c = h.session("c")
    for _ in range(5):
        h.reply(w, h.req(c, "s"))
    assert w.credit == 1


def test_fixed_credit_workers_never_change_credit() -> None:
    h = Harness()
    w = h.worker("s", credit=2)
    c = h.session("c")
    reqs = [h.req(c, "s") for _ in range(4)]
    h.reply(w, reqs[0])
    h.reply(w, reqs[1])
    assert w.credit == 2 and len(w.inflight) == 2


def test_max_credit_below_credit_is_refused() -> None:
    h = Harness()
    with pytest.raises(MaitredError):
        h.router.add_worker(h.session("w"), "s", h.now, credit=4, max_credit=2)


def test_worker_options_are_read_and_an_unknown_one_is_refused() -> None:
    """register_worker's options (one TypedDict for the port and the router) all reach the
    worker; a misspelt one is a TypeError, as for any keyword argument, and adds no worker."""
    h = Harness()
    w = h.router.add_worker(
        h.session("w"),
        "s",
        h.now,
        credit=2,
        tag="t",
        label="L",
        address="here",
        idle_timeout=7.0,
        busy_timeout=9.0,
        max_credit=4,
        pipeline_below=0.5,
        remote=True,
    )
    assert (w.credit, w.tag, w.label, w.address) == (2, "t", "L", "here")
    assert (w.idle_timeout, w.busy_timeout, w.max_credit, w.pipeline_below) == (7.0, 9.0, 4, 0.5)
    assert w.remote
    options: Any = {"credits": 3}
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'credits'"):
        h.router.add_worker(h.session("x"), "s2", h.now, **options)
    assert "s2" not in h.router.services
