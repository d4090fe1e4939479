"""MMI (mmi.*), answered by the core through :class:`Management`, whatever the protocol."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from maitred.core.access import Identity
from maitred.core.clock import FakeClock
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.management import MMI_SERVICES, Management
from maitred.core.routing.model import ReplyKind, RequestState
from tests.core.harness import START, Harness, sink_of

HarnessFactory = Callable[..., Harness]


@pytest.fixture
def mh(make_harness: HarnessFactory) -> Harness:
    clock = FakeClock(START)
    info = {"version": "9.9", "name": "test"}
    return make_harness(clock=clock, mmi=Management(info=lambda: info, now=clock))


def ask(h: Harness, name: str, *body: bytes) -> list[bytes]:
    """Call ``name`` and return the (single, final) answer."""
    client = h.session(f"mmi-client-{len(h.sinks)}")
    req = h.call(client, name, body)
    assert req is not None
    assert req.state is RequestState.DONE
    [(request, kind, answer)] = sink_of(client).replies
    assert request is req and kind is ReplyKind.FINAL
    assert sink_of(client).errors == []
    return answer


def ask_json(h: Harness, name: str, *body: bytes) -> Any:
    answer = ask(h, name, *body)
    return json.loads(answer[-1])


def test_mmi_names() -> None:
    assert set(MMI_SERVICES) == {
        "mmi.service",
        "mmi.services",
        "mmi.workers",
        "mmi.queues",
        "mmi.topics",
        "mmi.sessions",
        "mmi.info",
    }


def test_mmi_service_counts_live_workers(mh: Harness) -> None:
    assert ask(mh, "mmi.service", b"echo") == [b"404"]
    w = mh.worker("echo")
    assert ask(mh, "mmi.service", b"echo") == [b"200"]
    mh.router.remove_worker(w, mh.now)
    assert ask(mh, "mmi.service", b"echo") == [b"404"]


def test_mmi_service_for_a_service_only_ever_requested(mh: Harness) -> None:
    client = mh.session("client")
    mh.req(client, "wanted")
    assert "wanted" in mh.router.services
    assert ask(mh, "mmi.service", b"wanted") == [b"404"]


def test_mmi_replaces_the_last_frame(mh: Harness) -> None:
    mh.worker("echo")
    assert ask(mh, "mmi.service", b"keep", b"me", b"echo") == [b"keep", b"me", b"200"]


def test_mmi_empty_body_gets_one_frame(mh: Harness) -> None:
    assert ask(mh, "mmi.service") == [b"404"]
    assert len(ask(mh, "mmi.services")) == 1


def test_unknown_mmi_is_501(mh: Harness) -> None:
    assert ask(mh, "mmi.nonesuch", b"a", b"b") == [b"a", b"501"]
    assert mh.router.stats["mmi.not_implemented"] == 1
    assert "mmi.nonesuch" not in mh.router.services


def test_router_without_management_answers_501(h: Harness) -> None:
    assert ask(h, "mmi.service", b"x", b"echo") == [b"x", b"501"]
    assert ask(h, "mmi.service") == [b"501"]


def test_mmi_requests_do_not_create_services(mh: Harness) -> None:
    for name in MMI_SERVICES:
        ask(mh, name, b"")
    assert mh.router.services == {}
    assert mh.router.stats["mmi.requests"] == len(MMI_SERVICES)


@pytest.mark.parametrize("name", ["mmi.service", "mmi.echo", "mmi.x.y"])
def test_nobody_may_serve_mmi(mh: Harness, name: str) -> None:
    with pytest.raises(MaitredError) as info:
        mh.worker(name)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_mmi_services(mh: Harness) -> None:
    w = mh.worker("b", credit=2)
    mh.worker("a")
    client = mh.session("client")
    r = mh.req(client, "b")
    mh.req(client, "waiting")
    mh.reply(w, r)
    mh.req(client, "b")
    rows = ask_json(mh, "mmi.services")
    assert rows == [
        {
            "name": "a",
            "workers": 1,
            "free": 1,
            "queued": 0,
            "inflight": 0,
            "requests": 0,
            "replies": 0,
            "errors": 0,
            "timeouts": 0,
            "errors_by_code": {},
            "latency": NO_LATENCY,
        },
        {
            "name": "b",
            "workers": 1,
            "free": 1,
            "queued": 0,
            "inflight": 1,
            "requests": 2,
            "replies": 1,
            "errors": 0,
            "timeouts": 0,
            "errors_by_code": {},
            "latency": {"count": 1, "mean_ms": 0.0, "p50_ms": 0.5, "p99_ms": 0.5},
        },
        {
            "name": "waiting",
            "workers": 0,
            "free": 0,
            "queued": 1,
            "inflight": 0,
            "requests": 1,
            "replies": 0,
            "errors": 0,
            "timeouts": 0,
            "errors_by_code": {},
            "latency": NO_LATENCY,
        },
    ]


NO_LATENCY = {"count": 0, "mean_ms": None, "p50_ms": None, "p99_ms": None}


def test_mmi_services_latency_and_error_codes(mh: Harness) -> None:
    w = mh.worker("s", credit=4)
    client = mh.session("client")
    fast = mh.req(client, "s")
    slow = mh.req(client, "s")
    mh.clock.advance(0.003)
    mh.reply(w, fast)  # 3 ms: the 5 ms bucket
    mh.clock.advance(0.2)
    mh.reply(w, slow)  # 203 ms: the 250 ms bucket
    mh.req(client, "s", timeout=1.0)
    mh.clock.advance(2.0)
    mh.router.tick(mh.now)  # expires in flight: 504
    (row,) = ask_json(mh, "mmi.services")
    assert row["latency"] == {"count": 2, "mean_ms": 103.0, "p50_ms": 5.0, "p99_ms": 250.0}
    assert row["errors_by_code"] == {"504": 1}
    assert row["timeouts"] == 1


def test_mmi_workers(mh: Harness) -> None:
    start = mh.now
    wa = mh.router.add_worker(
        mh.session("pa"), "a", mh.now, credit=3, label="wa", address="127.0.0.1:41234"
    )
    mh.clock.advance(2.5)
    mh.router.add_worker(mh.session("pb"), "b", mh.now, label="wb")
    client = mh.session("client")
    r = mh.req(client, "a")
    mh.clock.advance(1.0)
    mh.reply(wa, r)
    mh.clock.advance(0.5)
    rows = ask_json(mh, "mmi.workers")
    assert [row["worker"] for row in rows] == ["wa", "wb"]
    assert rows[0] == {
        "service": "a",
        "worker": "wa",
        "transport": "test",
        "address": "127.0.0.1:41234",
        "identity": "anonymous",
        "credit": 3,
        "inflight": 0,
        "served": 1,
        "idle_for": 0.5,
        "connected_for": round(mh.now - start, 3),
    }
    only_b = ask_json(mh, "mmi.workers", b"b")
    assert [row["worker"] for row in only_b] == ["wb"]
    assert only_b[0]["address"] == ""  # none given: the transport knows no address
    assert only_b[0]["idle_for"] == 1.5
    assert ask_json(mh, "mmi.workers", b"nobody") == []
    assert ask_json(mh, "mmi.workers", b"") == rows


def test_mmi_workers_without_a_clock(make_harness: HarnessFactory) -> None:
    h = make_harness(mmi=Management())
    h.worker("a")
    [row] = ask_json(h, "mmi.workers")
    assert row["idle_for"] is None and row["connected_for"] is None


def test_mmi_queues(mh: Harness) -> None:
    mh.worker("a")
    client = mh.session("client")
    mh.req(client, "a")
    mh.req(client, "a")
    mh.req(client, "z")
    assert ask_json(mh, "mmi.queues") == {
        "a": {"queued": 1, "inflight": 1},
        "z": {"queued": 1, "inflight": 0},
    }


def test_mmi_topics(mh: Harness) -> None:
    s1 = mh.session("s1")
    s2 = mh.session("s2")
    mh.router.subscribe(s1, "news.>")
    mh.router.subscribe(s2, "news.>")
    mh.router.subscribe(s2, "alerts")
    assert ask_json(mh, "mmi.topics") == {"alerts": 1, "news.>": 2}


def test_mmi_info(mh: Harness) -> None:
    mh.worker("a")
    info = ask_json(mh, "mmi.info")
    assert info["version"] == "9.9"
    assert info["name"] == "test"
    assert info["services"] == 1
    assert info["workers"] == 1
    assert info["sessions"] == len(mh.router.sessions)
    assert isinstance(info["stats"], dict)
    assert info["stats"]["mmi.requests"] >= 1


def test_mmi_is_answered_through_any_caller_session(mh: Harness) -> None:
    client = mh.session("client")
    req = mh.call(client, "mmi.service", (b"nothing",), correlation=("route", 1))
    assert req is not None
    [(request, kind, body)] = sink_of(client).replies
    assert kind is ReplyKind.FINAL
    assert request.correlation == ("route", 1)
    assert request.service == "mmi.service"
    assert body == [b"404"]


# -- bounded listings and pages ------------------------------------------------------------------


@pytest.fixture
def small(make_harness: HarnessFactory) -> Harness:
    return make_harness(mmi=Management(max_items=3))


def test_a_long_listing_is_the_first_page_marked_truncated(small: Harness) -> None:
    client = small.session("client")
    for name in ("e", "b", "d", "a", "c"):
        small.req(client, name)
    answer = ask_json(small, "mmi.services")
    assert [row["name"] for row in answer["items"]] == ["a", "b", "c"]
    assert answer["offset"] == 0 and answer["total"] == 5
    assert answer["next"] == 3 and answer["truncated"] is True
    assert small.router.stats["mmi.truncated"] == 1
    queues = ask_json(small, "mmi.queues")
    assert list(queues["items"]) == ["a", "b", "c"] and queues["truncated"] is True


def test_pages_walk_a_listing(small: Harness) -> None:
    client = small.session("client")
    for i in range(7):
        small.req(client, f"s{i}")
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        query = json.dumps({"offset": offset, "limit": 2}).encode()
        page = ask_json(small, "mmi.services", query)
        assert len(page["items"]) <= 2 and page["total"] == 7
        seen += [row["name"] for row in page["items"]]
        offset = page["next"]
    assert seen == [f"s{i}" for i in range(7)]
    # a limit above the cap is cut to it
    page = ask_json(small, "mmi.services", b'{"limit": 100}')
    assert len(page["items"]) == 3 and page["next"] == 3
    # past the end: empty, not truncated
    page = ask_json(small, "mmi.services", b'{"offset": 50}')
    assert page["items"] == [] and page["next"] is None and page["truncated"] is False


def test_a_short_listing_keeps_its_old_form(small: Harness) -> None:
    small.worker("a")
    assert [row["name"] for row in ask_json(small, "mmi.services")] == ["a"]
    assert list(ask_json(small, "mmi.queues")) == ["a"]
    assert len(ask_json(small, "mmi.workers", b"a")) == 1
    page = ask_json(small, "mmi.workers", b'{"service": "a"}')
    assert len(page["items"]) == 1 and page["truncated"] is False


def test_workers_and_topics_are_bounded(small: Harness) -> None:
    for _ in range(5):
        small.worker("w")
    answer = ask_json(small, "mmi.workers", b"w")
    assert len(answer["items"]) == 3 and answer["total"] == 5 and answer["truncated"]
    subscriber = small.session("sub")
    for i in range(4):
        small.router.subscribe(subscriber, f"t{i}.>")
    topics = ask_json(small, "mmi.topics")
    assert topics["total"] >= 4 and len(topics["items"]) == 3 and topics["truncated"]


def test_sessions_lists_each_open_session(mh: Harness) -> None:
    worker_session = mh.session(
        "w-conn", Identity("billing", frozenset({"workers"})), transport="ws"
    )
    worker = mh.worker("echo", worker_session)
    worker.address = "127.0.0.1:4000"
    shared = mh.session("mdp:clients", transport="mdp", quiet=True)
    mh.req(shared, "nobody-serves-this")
    subscriber = mh.session("sub", transport="ws")
    mh.router.subscribe(subscriber, "a.>")
    mh.router.subscribe(subscriber, "b.*")
    gone = mh.session("gone", transport="ws")
    mh.router.close_session(gone, mh.now)
    mh.clock.advance(2.5)
    rows = {row["session"]: row for row in ask_json(mh, "mmi.sessions")}
    assert "gone" not in rows
    assert rows["w-conn"] == {
        "id": worker_session.id,
        "session": "w-conn",
        "transport": "ws",
        "identity": "billing",
        "roles": ["workers"],
        "address": "127.0.0.1:4000",
        "shared": False,
        "workers": 1,
        "subscriptions": 0,
        "queued": 0,
        "connected_for": 2.5,
    }
    assert rows["mdp:clients"]["shared"] is True and rows["mdp:clients"]["queued"] == 1
    assert rows["sub"]["subscriptions"] == 2 and rows["sub"]["address"] == ""
    assert [r["id"] for r in rows.values()] == sorted(r["id"] for r in rows.values())
    # narrowed to one transport, by the last frame or in a page query
    assert {r["transport"] for r in ask_json(mh, "mmi.sessions", b"mdp")} == {"mdp"}
    page = ask_json(mh, "mmi.sessions", b'{"transport": "ws", "limit": 1}')
    assert page["total"] == 2 and [r["session"] for r in page["items"]] == ["w-conn"]
    assert page["next"] == 1
    assert ask_json(mh, "mmi.sessions", b"nope") == []
