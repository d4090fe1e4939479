"""Topics through the router: subscribe/unsubscribe/publish and the broker's `$sys.` events."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from maitred.core.access import Action, Identity, Rule, RuleTable
from maitred.core.errors import Denied, ErrorCode, MaitredError
from maitred.core.routing.model import ServicePolicy
from maitred.core.routing.router import Liveness, Router
from tests.core.harness import FakeSink, Harness, sink_of

HarnessFactory = Callable[..., Harness]


@pytest.mark.parametrize(
    ("pattern", "topic", "hit"),
    [
        ("orders.eu", "orders.eu", True),
        ("orders.eu", "orders.us", False),
        ("orders.eu", "orders.eu.created", False),
        ("orders.*", "orders.eu", True),
        ("orders.*", "orders.eu.created", False),
        ("orders.*", "orders", False),
        ("*.eu", "orders.eu", True),
        ("orders.*.created", "orders.eu.created", True),
        ("orders.>", "orders.eu", True),
        ("orders.>", "orders.eu.created", True),
        ("orders.>", "orders", False),
        (">", "anything.at.all", True),
        (">", "x", True),
    ],
)
def test_pattern_matching(h: Harness, pattern: str, topic: str, hit: bool) -> None:
    sub = h.session("sub")
    pub = h.session("pub")
    assert h.router.subscribe(sub, pattern) is True
    reached = h.router.publish(pub, topic, (b"body",), {"h": "v"})
    assert reached == int(hit)
    expected = [(topic, [b"body"], {"h": "v"})] if hit else []
    assert sink_of(sub).events == expected


def test_one_delivery_per_session_with_overlapping_patterns(h: Harness) -> None:
    sub = h.session("sub")
    other = h.session("other")
    for p in ("a.b", "a.*", "a.>", ">", "*.b"):
        h.router.subscribe(sub, p)
    h.router.subscribe(other, "a.*")
    assert h.router.publish(None, "a.b", (b"x",)) == 2
    assert sink_of(sub).events == [("a.b", [b"x"], {})]
    assert sink_of(other).events == [("a.b", [b"x"], {})]
    assert h.router.stats["published"] == 1
    assert h.router.stats["delivered"] == 2


def test_subscribe_twice_and_unsubscribe(h: Harness) -> None:
    sub = h.session("sub")
    assert h.router.subscribe(sub, "a.*") is True
    assert h.router.subscribe(sub, "a.*") is False
    assert h.router.topics.patterns() == {"a.*": 1}
    assert h.router.unsubscribe(sub, "a.*") is True
    assert h.router.unsubscribe(sub, "a.*") is False
    assert h.router.unsubscribe(sub, "never") is False
    assert h.router.publish(None, "a.b", (b"x",)) == 0
    assert sink_of(sub).events == []
    assert h.router.topics.patterns() == {}


def test_subscriptions_per_session_are_limited(h: Harness) -> None:
    h.router.max_subscriptions = 2
    sub = h.session("sub")
    assert h.router.subscribe(sub, "a") is True
    assert h.router.subscribe(sub, "b.*") is True
    assert h.router.subscribe(sub, "a") is False  # already held: no error
    with pytest.raises(MaitredError) as info:
        h.router.subscribe(sub, "c")
    assert info.value.code == ErrorCode.QUEUE_FULL
    assert h.router.stats["subscriptions.refused"] == 1
    assert h.router.topics.patterns() == {"a": 1, "b.*": 1}
    other = h.session("other")
    assert h.router.subscribe(other, "c") is True  # the limit is per session
    h.router.unsubscribe(sub, "a")
    assert h.router.subscribe(sub, "c") is True


def test_unsubscribe_one_of_overlapping_patterns(h: Harness) -> None:
    sub = h.session("sub")
    h.router.subscribe(sub, "a.*")
    h.router.subscribe(sub, "a.>")
    h.router.unsubscribe(sub, "a.*")
    assert h.router.publish(None, "a.b", (b"x",)) == 1
    assert h.router.publish(None, "a.b.c", (b"y",)) == 1
    assert [t for t, _, _ in sink_of(sub).events] == ["a.b", "a.b.c"]


def test_several_subscribers_to_one_pattern(h: Harness) -> None:
    subs = [h.session(f"s{i}") for i in range(3)]
    for s in subs:
        h.router.subscribe(s, "t")
    assert h.router.topics.patterns() == {"t": 3}
    h.router.unsubscribe(subs[1], "t")
    assert h.router.publish(None, "t", (b"x",)) == 2
    assert [len(sink_of(s).events) for s in subs] == [1, 0, 1]


@pytest.mark.parametrize("pattern", ["", ".", "a..b", ".a", "a.", "a.>.b", ">.a"])
def test_invalid_patterns_are_rejected(h: Harness, pattern: str) -> None:
    sub = h.session("sub")
    with pytest.raises(MaitredError) as info:
        h.router.subscribe(sub, pattern)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert not isinstance(info.value, Denied)
    assert sub.patterns == set()


@pytest.mark.parametrize("topic", ["a.*", "a.>", ">", "*", "", "a..b", "a."])
def test_publishing_to_a_pattern_or_bad_name_is_rejected(h: Harness, topic: str) -> None:
    pub = h.session("pub")
    sub = h.session("sub")
    h.router.subscribe(sub, ">")
    with pytest.raises(MaitredError) as info:
        h.router.publish(pub, topic, (b"x",))
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert sink_of(sub).topics() == []


@pytest.mark.parametrize("topic", ["$sys.service.online", "$sys.anything", "$sys.auth.denied"])
def test_sys_topics_are_reserved_for_the_broker(h: Harness, topic: str) -> None:
    sub = h.session("sub")
    h.router.subscribe(sub, topic)
    pub = h.session("pub")
    with pytest.raises(Denied) as info:
        h.router.publish(pub, topic, (b"fake",))
    assert info.value.code is ErrorCode.FORBIDDEN
    # nothing the client sent arrives; only the broker's own denial event may
    assert all(b"fake" not in b"".join(e[1]) for e in sink_of(sub).events)


def test_client_may_publish_on_sys_broadcast(h: Harness) -> None:
    sub = h.session("sub")
    h.router.subscribe(sub, "$sys.broadcast")
    pub = h.session("pub")
    assert h.router.publish(pub, "$sys.broadcast", (b"hi",)) == 1
    assert sink_of(sub).events == [("$sys.broadcast", [b"hi"], {})]


def test_the_broker_may_publish_anywhere(h: Harness) -> None:
    sub = h.session("sub")
    h.router.subscribe(sub, "$sys.custom")
    assert h.router.publish(None, "$sys.custom", (b"b",)) == 1


def test_publisher_receives_its_own_publication(h: Harness) -> None:
    s = h.session("s")
    h.router.subscribe(s, "echo.>")
    assert h.router.publish(s, "echo.me", (b"x",)) == 1
    assert sink_of(s).topics() == ["echo.me"]


def test_body_frames_are_passed_through(h: Harness) -> None:
    sub = h.session("sub")
    h.router.subscribe(sub, "bin")
    frames = (b"", b"\x00\xff", b"x" * 10_000)
    h.router.publish(None, "bin", frames)
    assert sink_of(sub).events == [("bin", list(frames), {})]


@pytest.mark.allow_error_logs("deliver_event failed for bad")
def test_a_failing_subscriber_does_not_stop_the_others(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    bad = h.session("bad")
    good = h.session("good")
    h.router.subscribe(bad, "t")
    h.router.subscribe(good, "t")

    def boom(topic: str) -> None:
        raise RuntimeError("transport bug")

    sink_of(bad).on_event = boom
    with caplog.at_level("ERROR", logger="maitred.core.router"):
        assert h.router.publish(None, "t", (b"x",)) == 2
    assert sink_of(good).topics() == ["t"]
    assert "deliver_event failed" in caplog.text


# -- system events --------------------------------------------------------------------------------


def _sys_events(h: Harness, watcher_name: str = "watcher") -> Callable[[], list[tuple[str, dict]]]:
    watcher = h.session(watcher_name)
    h.router.subscribe(watcher, "$sys.>")
    sink = sink_of(watcher)
    seen = len(sink.events)

    def new() -> list[tuple[str, dict]]:
        nonlocal seen
        out = []
        for topic, body, headers in sink.events[seen:]:
            assert len(body) == 1 and headers == {}
            out.append((topic, json.loads(body[0])))
        seen = len(sink.events)
        return out

    return new


def test_system_events_for_sessions_and_workers(make_harness: HarnessFactory) -> None:
    h = make_harness(liveness=Liveness(heartbeat_interval=1.0, liveness=2))
    new = _sys_events(h)
    peer = h.session("peer", Identity("bob"), transport="mdp")
    assert new() == [
        ("$sys.session.join", {"session": "peer", "transport": "mdp", "identity": "bob"})
    ]
    w = h.router.add_worker(peer, "svc", h.now, label="w1")
    assert new() == [
        ("$sys.service.online", {"service": "svc"}),
        (
            "$sys.worker.ready",
            {"service": "svc", "worker": "w1", "transport": "mdp", "identity": "bob"},
        ),
    ]
    w2 = h.router.add_worker(peer, "svc", h.now, label="w2")
    assert [t for t, _ in new()] == ["$sys.worker.ready"]  # online only for the first
    h.router.remove_worker(w2, h.now, "bye")
    assert new() == [("$sys.worker.gone", {"service": "svc", "worker": "w2", "reason": "bye"})]
    h.advance(2.0)
    assert not w.alive
    assert new() == [
        ("$sys.worker.expired", {"service": "svc", "worker": "w1", "reason": "expired"}),
        ("$sys.service.offline", {"service": "svc"}),
    ]
    h.close(peer, "eof")
    assert new() == [
        ("$sys.session.leave", {"session": "peer", "transport": "mdp", "reason": "eof"})
    ]


def test_system_event_for_unhandled_messages(make_harness: HarnessFactory) -> None:
    h = make_harness(policy=ServicePolicy(on_no_worker="fail"))
    new = _sys_events(h)
    client = h.session("client")
    new()
    h.call(client, "nobody")
    assert new() == [
        ("$sys.message.unhandled", {"service": "nobody", "reason": "no worker", "caller": "client"})
    ]


def test_system_event_for_denials(make_harness: HarnessFactory) -> None:
    rules = RuleTable([Rule(allow=False, who=("mallory",))], default_allow=True)
    h = make_harness(access=rules)
    new = _sys_events(h)
    mallory = h.session("m", Identity("mallory"))
    new()
    with pytest.raises(Denied):
        h.router.subscribe(mallory, "secrets.>")
    assert new() == [
        (
            "$sys.auth.denied",
            {
                "identity": "mallory",
                "session": "m",
                "transport": "test",
                "action": "subscribe",
                "name": "secrets.>",
            },
        )
    ]
    assert h.router.stats["denied.subscribe"] == 1


def test_system_events_reach_narrow_subscriptions(h: Harness) -> None:
    sub = h.session("sub")
    h.router.subscribe(sub, "$sys.worker.*")
    h.router.subscribe(sub, "$sys.service.online")
    w = h.worker("svc")
    h.router.remove_worker(w, h.now)
    assert sink_of(sub).topics() == [
        "$sys.service.online",
        "$sys.worker.ready",
        "$sys.worker.gone",
    ]


def test_wildcard_subscribers_see_system_events(h: Harness) -> None:
    sub = h.session("sub")
    h.router.subscribe(sub, ">")
    h.worker("svc")
    assert "$sys.worker.ready" in sink_of(sub).topics()


def test_no_event_is_delivered_to_the_leaving_session(h: Harness) -> None:
    s = h.session("s")
    h.router.subscribe(s, "$sys.>")
    h.worker("svc", s)
    before = len(sink_of(s).events)
    h.close(s)
    assert len(sink_of(s).events) == before


@pytest.mark.allow_error_logs("system event hook failed")
def test_event_hook_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def hook(topic: str, payload: dict) -> None:
        raise RuntimeError("plugin bug")

    router = Router(on_event=hook)
    with caplog.at_level("ERROR", logger="maitred.core.router"):
        session = router.open_session("t", FakeSink(), Identity("x"), 0.0)
    assert "system event hook failed" in caplog.text
    assert router.sessions == {session.id: session}


def test_action_values() -> None:
    # new members go at the end (manage and observe came with the message switch's checks)
    assert [a.value for a in Action] == [
        "call",
        "serve",
        "publish",
        "subscribe",
        "manage",
        "observe",
    ]


def test_a_node_of_a_cluster_names_itself_in_every_system_event(h: Harness) -> None:
    from maitred.core.port import CorePort

    sub = h.session("sub")
    h.router.subscribe(sub, "$sys.>")
    h.worker("plain")  # no cluster: payloads as they always were
    assert h.events and all("node" not in payload for _, payload in h.events)
    assert sink_of(sub).event_payloads("$sys.worker.ready") == [
        payload for topic, payload in h.events if topic == "$sys.worker.ready"
    ]
    CorePort(h.router, h.clock, Liveness()).set_node_name("a")  # what the fabric does at start
    before, delivered = len(h.events), len(sink_of(sub).events)
    w = h.worker("svc")
    h.router.remove_worker(w, h.now)
    h.router.close_session(h.session("late"), h.now)
    emitted = h.events[before:]
    assert {t for t, _ in emitted} >= {
        "$sys.service.online",
        "$sys.worker.ready",
        "$sys.worker.gone",
        "$sys.service.offline",
        "$sys.session.join",
        "$sys.session.leave",
    }
    assert all(payload["node"] == "a" for _, payload in emitted)
    got = [json.loads(body[0]) for _, body, _ in sink_of(sub).events[delivered:]]
    assert got and all(payload["node"] == "a" for payload in got)
    ready = sink_of(sub).event_payloads("$sys.worker.ready")
    assert ready[-1]["service"] == "svc"  # the rest of the payload is untouched
    assert ready[-1].keys() == ready[0].keys() | {"node"}
