"""Access control: the rule table, the hooked policy, and how the router applies a policy."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from maitred.core.access import (
    ANONYMOUS,
    Action,
    AllowAll,
    HookedPolicy,
    Identity,
    Rule,
    RuleTable,
    is_open,
    roles,
)
from maitred.core.errors import Denied, ErrorCode
from maitred.core.routing.model import RequestState
from tests.core.harness import Harness, sink_of

HarnessFactory = Callable[..., Harness]

ALICE = Identity("alice", roles(["admin"]))
BOB = Identity("bob", frozenset({"ops", "dev"}))
EVE = Identity("eve")

CALL, SERVE, PUBLISH, SUBSCRIBE = Action.CALL, Action.SERVE, Action.PUBLISH, Action.SUBSCRIBE


# -- RuleTable ------------------------------------------------------------------------------------


def test_rule_defaults_apply_to_everything() -> None:
    rule = Rule()
    for action in Action:
        assert rule.applies(EVE, action, "any.name")


@pytest.mark.parametrize(
    ("who", "identity", "applies"),
    [
        ("*", EVE, True),
        ("*", ANONYMOUS, True),
        ("alice", ALICE, True),
        ("alice", BOB, False),
        ("role:admin", ALICE, True),
        ("role:admin", BOB, False),
        ("role:dev", BOB, True),
        ("role:", BOB, False),
        ("admin", ALICE, False),  # a bare word is a name, not a role
    ],
)
def test_who(who: str, identity: Identity, applies: bool) -> None:
    assert Rule(who=(who,)).applies(identity, CALL, "x") is applies


def test_actions_and_names_must_match() -> None:
    rule = Rule(actions=(CALL, SUBSCRIBE), names=("orders.*", "billing"))
    assert rule.applies(EVE, CALL, "orders.eu")
    assert rule.applies(EVE, SUBSCRIBE, "billing")
    assert not rule.applies(EVE, SERVE, "orders.eu")
    assert not rule.applies(EVE, CALL, "orders.eu.x")
    assert not rule.applies(EVE, CALL, "other")


def test_first_matching_rule_decides() -> None:
    table = RuleTable(
        [
            Rule(allow=False, who=("eve",)),
            Rule(allow=True, who=("role:admin",)),
            Rule(allow=True, actions=(CALL,), names=("public.>",)),
            Rule(allow=False, actions=(CALL,), names=(">",)),
            Rule(allow=True, actions=(CALL,), names=("private.x",)),  # shadowed
        ],
        default_allow=True,
    )
    assert not table.allowed(EVE, CALL, "public.x")  # rule 0, before rule 2
    assert table.allowed(ALICE, CALL, "private.x")
    assert table.allowed(BOB, CALL, "public.info")
    assert not table.allowed(BOB, CALL, "private.x")  # rule 3 shadows rule 4
    assert table.allowed(BOB, SERVE, "anything")  # no rule: default allow


def test_default_deny() -> None:
    table = RuleTable([Rule(who=("role:ops",), actions=(SERVE,))], default_allow=False)
    assert table.allowed(BOB, SERVE, "svc")
    assert not table.allowed(BOB, CALL, "svc")
    assert not table.allowed(EVE, SERVE, "svc")
    assert not RuleTable([], default_allow=False).allowed(ALICE, CALL, "x")


def test_rule_problems() -> None:
    assert Rule().problems() == []
    assert Rule(names=("a.>", "*")).problems() == []
    problems = Rule(names=("a..b", "a.>.c", ""), who=("", "x")).problems()
    assert len(problems) == 4
    assert any("a..b" in p for p in problems)
    assert any("'>' must be the last" in p for p in problems)
    assert any("empty name" in p for p in problems)
    assert any("'who'" in p for p in problems)


def test_is_open() -> None:
    assert is_open(AllowAll())
    assert is_open(RuleTable([], default_allow=True))
    assert not is_open(RuleTable([], default_allow=False))
    assert not is_open(RuleTable([Rule()], default_allow=True))
    assert not is_open(HookedPolicy(lambda *a: None, AllowAll()))

    class Custom:
        def allowed(self, identity: Identity, action: Action, name: str) -> bool:
            return True

    assert not is_open(Custom())  # unknown policies are asked


def test_hooked_policy() -> None:
    asked: list[tuple[str, Action, str]] = []

    def hook(identity: Identity, action: Action, name: str) -> bool | None:
        asked.append((identity.name, action, name))
        if name == "yes":
            return True
        if name == "no":
            return False
        return None

    policy = HookedPolicy(hook, RuleTable([], default_allow=False))
    assert policy.allowed(EVE, CALL, "yes") is True
    assert policy.allowed(EVE, CALL, "no") is False
    assert policy.allowed(EVE, CALL, "other") is False  # fallback decides
    assert HookedPolicy(hook, AllowAll()).allowed(EVE, CALL, "other") is True
    assert [a[2] for a in asked] == ["yes", "no", "other", "other"]


def test_hooked_policy_coerces_truthy_answers() -> None:
    policy = HookedPolicy(lambda *a: 1, AllowAll())  # type: ignore[arg-type, return-value]
    assert policy.allowed(EVE, CALL, "x") is True


# -- the router applies the policy ----------------------------------------------------------------


class Recording:
    """A policy that denies names starting with ``deny`` and records every question."""

    open = False

    def __init__(self) -> None:
        self.asked: list[tuple[str, Action, str]] = []

    def allowed(self, identity: Identity, action: Action, name: str) -> bool:
        self.asked.append((identity.name, action, name))
        return not name.startswith("deny")


@pytest.fixture
def rec() -> Recording:
    return Recording()


@pytest.fixture
def hr(make_harness: HarnessFactory, rec: Recording) -> Harness:
    return make_harness(access=rec)


def test_router_asks_for_every_action(hr: Harness, rec: Recording) -> None:
    s = hr.session("s", BOB)
    hr.worker("svc", s)
    hr.req(s, "svc")
    hr.router.subscribe(s, "news.*")
    hr.router.publish(s, "news.x", (b"x",))
    assert rec.asked == [
        ("bob", SERVE, "svc"),
        ("bob", CALL, "svc"),
        ("bob", SUBSCRIBE, "news.*"),
        ("bob", PUBLISH, "news.x"),
        # the delivery of news.x to bob's own subscription: may bob receive news.x?
        ("bob", SUBSCRIBE, "news.x"),
    ]


def test_denied_call(hr: Harness) -> None:
    watcher = hr.session("watcher")
    hr.router.subscribe(watcher, "$sys.auth.denied")
    s = hr.session("s", EVE)
    assert hr.call(s, "deny.svc", correlation=7) is None
    [(request, error)] = sink_of(s).errors
    assert isinstance(error, Denied)
    assert error.code is ErrorCode.FORBIDDEN
    assert request.correlation == 7
    assert request.state is RequestState.DONE
    assert hr.router.stats["denied.call"] == 1
    expected = {
        "identity": "eve",
        "session": "s",
        "transport": "test",
        "action": "call",
        "name": "deny.svc",
    }
    assert hr.payloads("$sys.auth.denied") == [expected]
    assert sink_of(watcher).event_payloads("$sys.auth.denied") == [expected]
    assert "deny.svc" not in hr.router.services


def test_denied_call_with_a_worker_present(hr: Harness) -> None:
    w = hr.router.add_worker(hr.session("w"), "svc-ok", hr.now)
    s = hr.session("s", EVE)
    hr.router.set_access(RuleTable([Rule(allow=False, who=("eve",))]))
    assert hr.call(s, "svc-ok") is None
    assert sink_of(w.session).requests == []
    assert w in w.service.free


def test_denied_serve(hr: Harness) -> None:
    s = hr.session("s", EVE)
    with pytest.raises(Denied) as info:
        hr.worker("deny.svc", s)
    assert info.value.code is ErrorCode.FORBIDDEN
    assert s.workers == {}
    assert "deny.svc" not in hr.router.services
    assert hr.router.stats["denied.serve"] == 1
    assert hr.payloads("$sys.auth.denied")[0]["action"] == "serve"


def test_denied_subscribe_and_publish(hr: Harness) -> None:
    listener = hr.session("listener")
    hr.router.subscribe(listener, ">")
    s = hr.session("s", EVE)
    with pytest.raises(Denied):
        hr.router.subscribe(s, "deny.>")
    assert s.patterns == set()
    with pytest.raises(Denied):
        hr.router.publish(s, "deny.x", (b"x",))
    assert "deny.x" not in sink_of(listener).topics()
    assert hr.router.stats["denied.subscribe"] == 1
    assert hr.router.stats["denied.publish"] == 1
    assert [p["action"] for p in hr.payloads("$sys.auth.denied")] == ["subscribe", "publish"]


def test_verdicts_are_cached_per_session(hr: Harness, rec: Recording) -> None:
    a = hr.session("a", EVE)
    b = hr.session("b", EVE)
    for _ in range(3):
        hr.call(a, "deny.x")
        hr.req(a, "ok")
    hr.call(b, "deny.x")
    assert rec.asked.count(("eve", CALL, "deny.x")) == 2  # once per session
    assert rec.asked.count(("eve", CALL, "ok")) == 1
    assert hr.router.stats["denied.call"] == 4  # every denial is counted
    assert len(hr.payloads("$sys.auth.denied")) == 4


def test_set_access_replaces_the_policy_and_clears_caches(hr: Harness, rec: Recording) -> None:
    s = hr.session("s", EVE)
    assert hr.call(s, "deny.x") is None
    hr.router.set_access(AllowAll())
    assert hr.call(s, "deny.x") is not None
    assert s.allow_cache == {}
    hr.router.set_access(RuleTable([Rule(allow=False, names=("ok",))]))
    assert hr.call(s, "ok") is None
    assert hr.call(s, "deny.x") is not None
    assert sink_of(s).error_codes() == [ErrorCode.FORBIDDEN, ErrorCode.FORBIDDEN]


def test_set_identity_clears_the_cache(make_harness: HarnessFactory) -> None:
    h = make_harness(access=RuleTable([Rule(who=("role:admin",))], default_allow=False))
    s = h.session("s", EVE)
    assert h.call(s, "svc") is None
    h.router.set_identity(s, ALICE)
    assert h.call(s, "svc") is not None


def test_open_policy_is_never_asked(make_harness: HarnessFactory) -> None:
    class Open(Recording):
        open = True

    policy = Open()
    h = make_harness(access=policy)
    s = h.session("s")
    h.worker("deny.svc", s)
    h.req(s, "deny.svc")
    h.router.subscribe(s, "deny.t")
    h.router.publish(s, "deny.t", (b"x",))
    assert policy.asked == []


def test_mmi_calls_are_checked(hr: Harness, rec: Recording) -> None:
    s = hr.session("s", EVE)
    hr.router.set_access(RuleTable([Rule(allow=False, names=("mmi.>",))]))
    assert hr.call(s, "mmi.service", (b"x",)) is None
    assert sink_of(s).error_codes() == [ErrorCode.FORBIDDEN]
    assert sink_of(s).replies == []
