"""Access control: the rule table, the hooked policy, and how the router applies a policy."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.core.access import (
    ANONYMOUS,
    TOO_COMPLEX,
    Action,
    AllowAll,
    Grants,
    HookedPolicy,
    Identity,
    Rule,
    RuleTable,
    decide,
    decide_pattern,
    is_open,
    pattern_witness,
    roles,
)
from maitred.core.errors import Denied, ErrorCode
from maitred.core.routing.model import RequestState
from maitred.core.routing.patterns import matches
from maitred.core.routing.throttle import PeerThrottle
from tests.core.harness import Harness, sink_of

HarnessFactory = Callable[..., Harness]

ALICE = Identity("alice", roles(["admin"]))
BOB = Identity("bob", frozenset({"ops", "dev"}))
EVE = Identity("eve")

CALL, SERVE, PUBLISH, SUBSCRIBE = Action.CALL, Action.SERVE, Action.PUBLISH, Action.SUBSCRIBE


# -- RuleTable ------------------------------------------------------------------------------------


def test_rule_defaults_apply_to_every_traffic_action() -> None:
    rule = Rule()
    for action in (CALL, SERVE, PUBLISH, SUBSCRIBE):
        assert rule.applies(EVE, action, "any.name")


def test_manage_and_observe_are_granted_only_by_naming_them() -> None:
    # a rule written for traffic never opens administration: manage/observe fall to the default
    table = RuleTable([Rule(who=("eve",))], default_allow=False)
    assert table.allowed(EVE, CALL, "a.b")
    assert not table.allowed(EVE, Action.MANAGE, "a.b")
    assert not table.allowed(EVE, Action.OBSERVE, "$switch.trace")
    table = RuleTable([Rule(who=("eve",), actions=(Action.OBSERVE,))], default_allow=False)
    assert table.allowed(EVE, Action.OBSERVE, "$switch.trace")
    assert not table.allowed(EVE, Action.MANAGE, "$sys.shutdown")
    assert not table.allowed(EVE, CALL, "a.b")


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


# -- subscriptions by containment ------------------------------------------------------------------


def _table(*rules: Rule, default_allow: bool = True) -> RuleTable:
    return RuleTable(list(rules), default_allow=default_allow)


CHAT_ONLY = _table(Rule(actions=(SUBSCRIBE,), names=("chat.*",)), default_allow=False)
NO_SECRETS = _table(Rule(allow=False, actions=(SUBSCRIBE,), names=("secret.>",)))


@pytest.mark.parametrize(
    ("policy", "pattern", "allowed"),
    [
        (CHAT_ONLY, "chat.*", True),
        (CHAT_ONLY, "chat.room1", True),
        (CHAT_ONLY, "chat.>", False),  # chat.room1.private is not allowed
        (CHAT_ONLY, ">", False),
        (CHAT_ONLY, "*.*", False),
        (NO_SECRETS, "secret.>", False),
        (NO_SECRETS, ">", False),  # intersects the deny: refused, not narrowed
        (NO_SECRETS, "*.plans", False),  # secret.plans
        (NO_SECRETS, "*.*", False),
        (NO_SECRETS, "secret.*", False),
        (NO_SECRETS, "public.>", True),
        (NO_SECRETS, "*", True),  # one segment: never secret.<something>
        (NO_SECRETS, "secret", True),
        # an earlier allow takes the names it covers before the deny is reached
        (
            _table(
                Rule(actions=(SUBSCRIBE,), names=("secret.public",)),
                Rule(allow=False, actions=(SUBSCRIBE,), names=("secret.>",)),
            ),
            "secret.public",
            True,
        ),
        (
            _table(
                Rule(actions=(SUBSCRIBE,), names=("secret.public",)),
                Rule(allow=False, actions=(SUBSCRIBE,), names=("secret.>",)),
            ),
            "secret.*",
            False,
        ),
        # two allows that together cover the pattern (neither alone does)
        (
            _table(Rule(names=("a.*", "a.*.>")), default_allow=False),
            "a.>",
            True,
        ),
        # a deny shadowed by an allow that covers the pattern
        (
            _table(Rule(names=("chat.>",)), Rule(allow=False, names=(">",))),
            "chat.*",
            True,
        ),
        # rules for other actions or other identities play no part
        (_table(Rule(allow=False, actions=(CALL,), names=(">",))), ">", True),
        (_table(Rule(allow=False, who=("alice",), names=(">",))), ">", True),
    ],
)
def test_subscription_is_decided_by_containment(
    policy: RuleTable, pattern: str, allowed: bool
) -> None:
    assert decide_pattern(policy, Grants(), EVE, SUBSCRIBE, pattern) is allowed
    witness = pattern_witness(policy, Grants(), EVE, SUBSCRIBE, pattern)
    if allowed:
        assert witness is None
    else:  # a topic the pattern matches that the rules deny
        assert witness is not None and matches(pattern, witness)
        assert not policy.allowed(EVE, SUBSCRIBE, witness)


GUEST = Identity("guest", frozenset({"guest"}), restricted=True)


def test_grants_open_only_patterns_they_cover() -> None:
    grants = Grants()
    grants.grant("guest", SUBSCRIBE, "news.*")
    policy = _table()
    assert decide_pattern(policy, grants, GUEST, SUBSCRIBE, "news.*")
    assert decide_pattern(policy, grants, GUEST, SUBSCRIBE, "news.eu")
    assert not decide_pattern(policy, grants, GUEST, SUBSCRIBE, "news.>")
    assert not decide_pattern(policy, grants, GUEST, SUBSCRIBE, ">")
    grants.grant("guest", SUBSCRIBE, "news.*.>")
    assert decide_pattern(policy, grants, GUEST, SUBSCRIBE, "news.>")  # both grants together
    # an explicit deny that intersects the pattern refuses it, grant or not
    denying = _table(Rule(allow=False, who=("role:guest",), names=("news.secret",)))
    assert not decide_pattern(denying, grants, GUEST, SUBSCRIBE, "news.*")
    assert decide_pattern(denying, grants, GUEST, SUBSCRIBE, "news.eu")
    # grants of other roles open nothing
    other = Identity("other", frozenset({"x"}), restricted=True)
    assert not decide_pattern(policy, grants, other, SUBSCRIBE, "news.*")


def test_the_hook_answers_for_the_pattern_string() -> None:
    asked: list[str] = []

    def hook(identity: Identity, action: Action, name: str) -> bool | None:
        asked.append(name)
        return {"open.>": True, "shut.*": False}.get(name)

    policy = HookedPolicy(hook, NO_SECRETS)
    assert decide_pattern(policy, Grants(), EVE, SUBSCRIBE, "open.>")
    assert not decide_pattern(policy, Grants(), EVE, SUBSCRIBE, "shut.*")
    assert not decide_pattern(policy, Grants(), EVE, SUBSCRIBE, ">")  # the rules: containment
    assert asked == ["open.>", "shut.*", ">"]


def test_a_plain_allowed_policy_is_asked_with_the_pattern(rec: Recording) -> None:
    assert decide_pattern(rec, Grants(), EVE, SUBSCRIBE, "ok.>")
    assert not decide_pattern(rec, Grants(), EVE, SUBSCRIBE, "deny.>")
    assert [a[2] for a in rec.asked] == ["ok.>", "deny.>"]


def test_router_refuses_wider_subscriptions(make_harness: HarnessFactory) -> None:
    h = make_harness(access=NO_SECRETS)
    s = h.session("s", EVE)
    for pattern in (">", "*.plans", "*.*", "secret.*"):
        with pytest.raises(Denied) as info:
            h.router.subscribe(s, pattern)
        assert info.value.reason == f"eve may not subscribe to {pattern}"
    assert s.patterns == set()
    assert h.router.stats["denied.subscribe"] == 4
    denied = [p["name"] for p in h.payloads("$sys.auth.denied")]
    assert denied == [">", "*.plans", "*.*", "secret.*"]
    assert h.router.subscribe(s, "public.>")


# -- the delivery check ----------------------------------------------------------------------------


def test_delivery_withholds_topics_the_subscriber_may_no_longer_have(
    make_harness: HarnessFactory,
) -> None:
    h = make_harness()
    s = h.session("s", EVE)
    assert h.router.subscribe(s, "chat.>")
    pub = h.session("pub", BOB)
    assert h.router.publish(pub, "chat.room1.private", (b"1",)) == 1
    h.router.set_access(_table(Rule(allow=False, actions=(SUBSCRIBE,), names=("chat.*.private",))))
    assert h.router.publish(pub, "chat.room1.private", (b"2",)) == 0
    assert h.router.publish(pub, "chat.room1.public", (b"3",)) == 1
    assert [b for t, b, _ in sink_of(s).events] == [[b"1"], [b"3"]]
    assert h.router.stats["delivered.withheld"] == 1
    assert h.router.stats.get("denied.subscribe", 0) == 0  # the publisher did nothing wrong


def test_delivery_check_covers_system_events(make_harness: HarnessFactory) -> None:
    h = make_harness()
    s = h.session("s", EVE)
    h.router.subscribe(s, "$sys.>")
    h.router.set_access(_table(Rule(allow=False, actions=(SUBSCRIBE,), names=("$sys.session.>",))))
    h.session("other", BOB)  # $sys.session.join
    assert "$sys.session.join" not in sink_of(s).topics()


def test_unchecked_channels_are_delivered_unasked(make_harness: HarnessFactory) -> None:
    h = make_harness(access=_table(default_allow=False))
    s = h.session("s", EVE)
    assert h.router.subscribe(s, "MSG:s", check=False)
    h.router.publish(None, "MSG:s", (b"x",))
    assert sink_of(s).topics() == ["MSG:s"]
    h.router.unsubscribe(s, "MSG:s")
    assert h.router._unchecked == {}


def _first_match(rules: list[Rule], default_allow: bool, name: str) -> bool:
    return _table(*rules, default_allow=default_allow).allowed(EVE, SUBSCRIBE, name)


_SEGS = ["a", "b", "c"]
_UNIVERSE = [
    ".".join(segs) for n in range(1, 6) for segs in itertools.product([*_SEGS, "z"], repeat=n)
]


@st.composite
def _pattern(draw: st.DrawFn) -> str:
    segs = draw(st.lists(st.sampled_from([*_SEGS, "*"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        segs[-1] = ">"
    return ".".join(segs)


_rules = st.lists(
    st.builds(
        lambda allow, names: Rule(allow=allow, actions=(SUBSCRIBE,), names=tuple(names)),
        st.booleans(),
        st.lists(_pattern(), min_size=1, max_size=2),
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    rules=_rules,
    default_allow=st.booleans(),
    grants=st.lists(_pattern(), max_size=2),
    restricted=st.booleans(),
    pattern=_pattern(),
)
def test_property_a_pattern_is_allowed_iff_every_topic_it_matches_is(
    rules: list[Rule], default_allow: bool, grants: list[str], restricted: bool, pattern: str
) -> None:
    identity = Identity("eve", frozenset({"guest"}), restricted=restricted)
    table = _table(*rules, default_allow=default_allow)
    granted = Grants()
    for g in grants:
        granted.grant("guest", SUBSCRIBE, g)
    expected = all(
        decide(table, granted, identity, SUBSCRIBE, t) for t in _UNIVERSE if matches(pattern, t)
    )
    assert decide_pattern(table, granted, identity, SUBSCRIBE, pattern) is expected


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    before=_rules,
    after=_rules,
    default_allow=st.booleans(),
    grants=st.lists(_pattern(), max_size=2),
    patterns=st.lists(_pattern(), min_size=1, max_size=4),
    topics=st.lists(st.sampled_from(_UNIVERSE), min_size=1, max_size=12),
)
def test_property_a_delivered_topic_is_one_the_subscriber_may_subscribe_to(
    before: list[Rule],
    after: list[Rule],
    default_allow: bool,
    grants: list[str],
    patterns: list[str],
    topics: list[str],
) -> None:
    """Whatever the rules, grants and subscriptions (and a change of rules in between), every
    topic delivered to a session is one it may subscribe to as a plain topic."""
    h = Harness(access=_table(*before, default_allow=default_allow))
    guest = h.session("guest", Identity("g", frozenset({"guest"}), restricted=True))
    plain = h.session("plain", EVE)
    granter = h.session("granter", Identity("root", frozenset({"root"})))
    for g in grants:
        with contextlib.suppress(Denied):
            h.router.grant("guest", SUBSCRIBE, g, by=granter)
    for session in (guest, plain):
        for p in patterns:
            with contextlib.suppress(Denied):
                h.router.subscribe(session, p)
    for phase in (0, 1):
        if phase:
            h.router.set_access(_table(*after, default_allow=not default_allow))
        for t in topics:
            h.router.publish(None, t, (b"x",))
        for session in (guest, plain):
            for t in sink_of(session).topics():
                assert decide(h.router.access, h.router.grants, session.identity, SUBSCRIBE, t)
            sink_of(session).events.clear()


def test_a_pattern_too_complex_to_decide_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    names = [p for i in range(100) for p in (f"a{i}.*.*.*", f"*.b{i}.*.*", f"*.*.c{i}.*")]
    table = _table(Rule(actions=(SUBSCRIBE,), names=tuple(names)))
    with caplog.at_level("WARNING", logger="maitred.core.access"):
        assert pattern_witness(table, Grants(), EVE, SUBSCRIBE, ">") == TOO_COMPLEX
    assert "too complex to decide" in caplog.text
    assert decide_pattern(table, Grants(), EVE, SUBSCRIBE, "a1.*.*.*")  # covered at once


def test_a_peer_refused_before_it_has_a_session_is_counted_and_published(hr: Harness) -> None:
    watcher = hr.session("watcher")
    hr.router.subscribe(watcher, "$sys.auth.denied")
    sessions = len(hr.router.sessions)
    hr.router.report_auth_failure("http", "127.0.0.1:40000", "unknown token", now=1.0)
    hr.router.report_auth_failure("mdp", "tcp://127.0.0.1", "unknown CURVE key", "Yne@", now=1.0)
    assert hr.router.stats["denied.authenticate"] == 2
    assert hr.router.stats["denied.authenticate.http"] == 1
    assert hr.router.stats["denied.authenticate.mdp"] == 1
    assert len(hr.router.sessions) == sessions  # nothing was opened for the refused peers
    assert sink_of(watcher).event_payloads("$sys.auth.denied") == [
        {
            "identity": "",
            "session": "",
            "transport": "http",
            "action": "authenticate",
            "name": "127.0.0.1:40000",
            "reason": "unknown token",
            "suppressed": 0,
        },
        {
            "identity": "Yne@",
            "session": "",
            "transport": "mdp",
            "action": "authenticate",
            "name": "tcp://127.0.0.1",
            "reason": "unknown CURVE key",
            "suppressed": 0,
        },
    ]


def test_a_peer_refused_again_and_again_is_published_once_per_interval(hr: Harness) -> None:
    watcher = hr.session("watcher")
    hr.router.subscribe(watcher, "$sys.auth.denied")
    now = 100.0
    for _ in range(50):  # a CURVE client with a wrong server key, retrying every 100 ms
        hr.router.report_auth_failure("mdp", "127.0.0.1", "unknown CURVE key", "k", now=now)
        now += 0.1
    hr.router.report_auth_failure("mdp", "10.0.0.2", "unknown CURVE key", now=now)  # another peer
    hr.router.report_auth_failure("ws", "127.0.0.1", "no credentials", now=now)  # transport
    hr.router.report_auth_failure("mdp", "127.0.0.1", "failed handshake", now=now)  # reason
    now += 5.5
    hr.router.report_auth_failure("mdp", "127.0.0.1", "unknown CURVE key", "k", now=now)
    events = sink_of(watcher).event_payloads("$sys.auth.denied")
    assert [(e["transport"], e["name"], e["reason"], e["suppressed"]) for e in events] == [
        ("mdp", "127.0.0.1", "unknown CURVE key", 0),
        ("mdp", "10.0.0.2", "unknown CURVE key", 0),
        ("ws", "127.0.0.1", "no credentials", 0),
        ("mdp", "127.0.0.1", "failed handshake", 0),
        # after 10 s: the ones held back are counted in the next event
        ("mdp", "127.0.0.1", "unknown CURVE key", 49),
    ]
    # every refusal is counted, the held-back ones also on their own
    assert hr.router.stats["denied.authenticate"] == 54
    assert hr.router.stats["denied.authenticate.mdp"] == 53
    assert hr.router.stats["denied.authenticate.suppressed"] == 49


def test_the_throttle_remembers_a_bounded_number_of_peers() -> None:
    throttle = PeerThrottle(interval=10.0, max_peers=3)
    assert [throttle.admit(p, 0.0) for p in "abc"] == [0, 0, 0]
    assert throttle.admit("a", 0.0) is None
    assert throttle.admit("d", 0.0) == 0  # full: the peer heard from longest ago ("a") goes
    assert len(throttle) == 3
    assert throttle.admit("a", 0.0) == 0  # let through early: its count went with it
    assert throttle.admit("c", 0.0) is None
    # every interval is over: all of them are forgotten for one new peer
    assert throttle.admit("e", 10.0) == 0
    assert len(throttle) == 1
    assert throttle.admit("c", 10.0) == 0
    assert throttle.admit("c", 10.0) is None
    assert throttle.admit("c", 25.0) == 1  # the same peer after its interval: the held count
