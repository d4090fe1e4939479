"""Sessions: join/leave, closing a session drops its workers, subscriptions and replies."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from maitred.core.access import Action, Identity
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import RequestState, ServicePolicy
from tests.core.harness import Harness, sink_of

HarnessFactory = Callable[..., Harness]


def test_open_session(h: Harness) -> None:
    bob = Identity("bob", frozenset({"ops"}))
    s = h.session("peer-1", bob, transport="mdp")
    assert h.router.sessions[s.id] is s
    assert (s.transport, s.identity, s.label, s.opened, s.closed) == (
        "mdp",
        bob,
        "peer-1",
        h.now,
        False,
    )
    assert h.payloads("$sys.session.join") == [
        {"session": "peer-1", "transport": "mdp", "identity": "bob"}
    ]
    unnamed = h.session()
    assert unnamed.label == f"test:{unnamed.id}"
    assert unnamed.id != s.id


def test_quiet_session_does_not_announce_its_join(h: Harness) -> None:
    h.session("shared", quiet=True)
    assert h.payloads("$sys.session.join") == []


def test_close_session_removes_its_workers_and_subscriptions(h: Harness) -> None:
    s = h.session("peer")
    w1 = h.worker("a", s)
    w2 = h.worker("b", s)
    other = h.worker("a")
    h.router.subscribe(s, "news.>")
    h.router.subscribe(s, "alerts")
    h.close(s, "eof")
    assert s.closed
    assert s.id not in h.router.sessions
    assert not w1.alive and not w2.alive
    assert s.workers == {} and s.patterns == set()
    assert set(h.router.services["a"].workers) == {other}
    assert "b" not in h.router.services
    assert h.router.topics.patterns() == {}
    assert h.router.publish(None, "news.x", (b"n",)) == 0
    # the peer closed the session itself: worker_removed is not called back
    assert sink_of(s).removed == []
    gone = h.payloads("$sys.worker.gone")
    assert {(p["service"], p["reason"]) for p in gone} == {("a", "eof"), ("b", "eof")}
    assert h.payloads("$sys.service.offline") == [{"service": "b"}]
    assert h.payloads("$sys.session.leave") == [
        {"session": "peer", "transport": "test", "reason": "eof"}
    ]
    h.close(s)  # twice: no-op
    assert len(h.payloads("$sys.session.leave")) == 1


def test_close_session_fails_in_flight_requests_without_redeliver(h: Harness) -> None:
    ws = h.session("worker")
    w = h.worker("svc", ws)
    client = h.session("client")
    req = h.req(client, "svc")
    h.close(ws)
    assert sink_of(client).code_for(req) is ErrorCode.WORKER_DIED
    assert not w.alive


def test_close_session_redelivers_in_flight_requests(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(redeliver=True))
    ws = h.session("worker")
    w = h.worker("svc", ws)
    other = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    assert req.worker is w
    h.close(ws)
    assert req.worker is other
    assert sink_of(client).errors == []


def test_replies_to_a_closed_caller_are_dropped(h: Harness) -> None:
    w = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    nxt_client = h.session("next")
    nxt = h.req(nxt_client, "svc")
    h.close(client)
    assert h.reply(w, req, (b"p",), final=False) is True
    assert h.reply(w, req, (b"f",)) is True
    assert sink_of(client).replies == []
    assert w.served == 1
    assert nxt.worker is w  # the credit came back


def test_error_reply_to_a_closed_caller_is_dropped(h: Harness) -> None:
    w = h.worker("svc")
    client = h.session("client")
    req = h.req(client, "svc")
    h.close(client)
    assert h.router.reply_error(w, req.id, MaitredError("x"), h.now) is True
    assert sink_of(client).errors == []
    assert w in w.service.free


def test_queued_requests_of_a_closed_caller_are_skipped(h: Harness) -> None:
    client = h.session("client")
    stale = [h.req(client, "svc") for _ in range(3)]
    live_client = h.session("live")
    live = h.req(live_client, "svc")
    h.close(client)
    w = h.worker("svc")
    assert sink_of(w.session).tokens() == [live.id]
    assert all(r.state is RequestState.CANCELLED for r in stale)
    h.reply(w, live)
    assert h.router.services["svc"].queued == 0
    assert not h.router.services["svc"].queue


def test_closed_caller_with_only_queued_requests(h: Harness) -> None:
    client = h.session("client")
    h.req(client, "svc")
    h.close(client)
    w = h.worker("svc")
    assert sink_of(w.session).requests == []
    assert h.router.services["svc"].queued == 0
    assert w in w.service.free


def test_add_worker_to_a_closed_session_is_refused(h: Harness) -> None:
    s = h.session("peer")
    h.close(s)
    with pytest.raises(MaitredError) as info:
        h.worker("svc", s)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "svc" not in h.router.services


def test_a_session_may_be_caller_and_worker(h: Harness) -> None:
    s = h.session("both")
    w = h.worker("svc", s)
    req = h.req(s, "svc")
    assert sink_of(s).requests == [(w, req)]
    h.reply(w, req, (b"self",))
    assert sink_of(s).finals() == [[b"self"]]


def test_set_identity(h: Harness) -> None:
    s = h.session("peer")
    s.allow_cache[(Action.CALL, "x")] = False
    alice = Identity("alice")
    h.router.set_identity(s, alice)
    assert s.identity is alice
    assert s.allow_cache == {}
