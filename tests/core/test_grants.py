"""Restricted identities and run-time grants (the core half of middleman's EPUB/EREQ/ESUB)."""

from __future__ import annotations

import pytest

from maitred.core.access import Action, Identity, Rule, RuleTable
from maitred.core.errors import Denied, ErrorCode, MaitredError
from tests.core.harness import Harness, sink_of

GUEST = Identity("guest", frozenset({"untrusted"}), restricted=True)
TRUSTED = Identity("svc", frozenset({"trusted"}))


def test_restricted_identity_is_denied_until_granted() -> None:
    h = Harness()
    guest = h.session("guest", GUEST)
    h.worker("echo")
    assert h.call(guest, "echo") is None
    assert sink_of(guest).errors[-1][1].code is ErrorCode.FORBIDDEN
    assert h.events[-1][0] == "$sys.auth.denied"
    with pytest.raises(Denied):
        h.router.subscribe(guest, "news")
    assert h.router.grant("untrusted", Action.CALL, "echo")
    assert not h.router.grant("untrusted", Action.CALL, "echo")  # idempotent
    assert h.call(guest, "echo") is not None  # the cached denial was cleared
    h.router.grant("untrusted", Action.SUBSCRIBE, "news.>")
    assert h.router.subscribe(guest, "news.eu")
    with pytest.raises(Denied):
        h.router.subscribe(guest, "news")  # '>' needs at least one more segment


def test_unrestricted_identities_ignore_grants() -> None:
    h = Harness(access=RuleTable([], default_allow=False))
    svc = h.session("svc", TRUSTED)
    h.router.grant("trusted", Action.CALL, "x")  # grants open doors for restricted ones only
    assert h.call(svc, "x") is None


def test_an_explicit_rule_beats_a_grant() -> None:
    rules = RuleTable([Rule(allow=False, who=("role:untrusted",), names=("secret",))])
    h = Harness(access=rules)
    guest = h.session("guest", GUEST)
    h.router.grant("untrusted", Action.CALL, ">")
    assert h.call(guest, "secret") is None
    assert sink_of(guest).errors[-1][1].code is ErrorCode.FORBIDDEN
    h.worker("open")
    assert h.call(guest, "open") is not None


def test_revoke_closes_the_door_again() -> None:
    h = Harness()
    guest = h.session("guest", GUEST)
    h.router.grant("untrusted", Action.PUBLISH, "chat")
    assert h.router.publish(guest, "chat", (b"hi",)) == 0
    assert h.router.revoke("untrusted", Action.PUBLISH, "chat")
    with pytest.raises(Denied):
        h.router.publish(guest, "chat", (b"hi",))
    assert h.router.grants.listing() == {}


def test_bad_grant_pattern_is_refused() -> None:
    h = Harness()
    with pytest.raises(ValueError):
        h.router.grant("untrusted", Action.CALL, "a.>.b")


# -- grants bounded by their granter, and owned by its session -------------------------------------

DENY_ALL = RuleTable([], default_allow=False)
GUEST2 = Identity("guest2", frozenset({"untrusted"}), restricted=True)


def test_a_grant_is_bounded_by_the_granters_own_rights() -> None:
    h = Harness(access=DENY_ALL)
    svc = h.session("svc", TRUSTED)
    guest = h.session("guest", GUEST)
    with pytest.raises(Denied) as info:
        h.router.grant("untrusted", Action.SUBSCRIBE, ">", by=svc)
    assert info.value.reason == "svc may not subscribe to >"
    with pytest.raises(Denied):
        h.router.grant("untrusted", Action.PUBLISH, "svc.x", by=svc)
    assert h.router.grants.listing() == {}
    assert h.router.stats["denied.subscribe"] == 1
    assert h.router.stats["denied.publish"] == 1
    assert [(p["identity"], p["action"], p["name"]) for p in h.payloads("$sys.auth.denied")] == [
        ("svc", "subscribe", ">"),
        ("svc", "publish", "svc.x"),
    ]
    with pytest.raises(Denied):
        h.router.subscribe(guest, "$sys.>")


def test_a_grant_wider_than_the_granters_rights_is_refused() -> None:
    rules = RuleTable(
        [Rule(who=("svc",), actions=(Action.SUBSCRIBE,), names=("news.*",))], default_allow=False
    )
    h = Harness(access=rules)
    svc = h.session("svc", TRUSTED)
    guest = h.session("guest", GUEST)
    with pytest.raises(Denied):
        h.router.grant("untrusted", Action.SUBSCRIBE, "news.>", by=svc)  # news.a.b: not svc's
    assert h.router.grant("untrusted", Action.SUBSCRIBE, "news.*", by=svc)
    assert h.router.subscribe(guest, "news.eu")
    assert h.router.subscribe(guest, "news.*")
    with pytest.raises(Denied):
        h.router.subscribe(guest, "news.>")  # the grant news.* does not cover news.>


def test_grants_end_with_the_last_session_that_made_them() -> None:
    h = Harness()
    a = h.session("a", TRUSTED)
    b = h.session("b", TRUSTED)
    guest = h.session("guest", GUEST)
    assert h.router.grant("untrusted", Action.PUBLISH, "chat", by=a)
    assert not h.router.grant("untrusted", Action.PUBLISH, "chat", by=b)  # shared now
    assert h.router.publish(guest, "chat", (b"1",)) == 0
    h.close(a)
    assert h.router.publish(guest, "chat", (b"2",)) == 0  # b still holds it
    assert h.router.stats["grants.withdrawn"] == 0
    h.close(b)
    with pytest.raises(Denied):
        h.router.publish(guest, "chat", (b"3",))
    assert h.router.grants.listing() == {}
    assert h.router.stats["grants.withdrawn"] == 1


def test_a_grant_subscription_stops_receiving_when_the_grant_ends() -> None:
    h = Harness()
    svc = h.session("svc", TRUSTED)
    guest = h.session("guest", GUEST)
    h.router.grant("untrusted", Action.SUBSCRIBE, "news.*", by=svc)
    h.router.subscribe(guest, "news.*")
    h.router.publish(None, "news.eu", (b"1",))
    h.close(svc)
    h.router.publish(None, "news.eu", (b"2",))
    assert [b for _, b, _ in sink_of(guest).events] == [[b"1"]]


def test_revoke_by_a_session_ends_only_its_share() -> None:
    h = Harness()
    a = h.session("a", TRUSTED)
    b = h.session("b", TRUSTED)
    h.router.grant("untrusted", Action.CALL, "x", by=a)
    h.router.grant("untrusted", Action.CALL, "x", by=b)
    assert not h.router.revoke("untrusted", Action.CALL, "x", by=a)
    assert not h.router.revoke("untrusted", Action.CALL, "x", by=a)  # a has no share left
    assert h.router.grants.listing() == {"call": {"x": 1}}
    assert h.router.revoke("untrusted", Action.CALL, "x", by=b)
    assert h.router.grants.listing() == {}


def test_grants_no_longer_covered_are_dropped_when_the_rules_change() -> None:
    h = Harness()
    svc = h.session("svc", TRUSTED)
    guest = h.session("guest", GUEST)
    h.router.grant("untrusted", Action.SUBSCRIBE, "news.>", by=svc)
    h.router.grant("untrusted", Action.PUBLISH, "chat", by=svc)
    h.router.grant("untrusted", Action.CALL, "ops", by=None)  # the broker's: no granter
    h.router.subscribe(guest, "news.eu")
    h.router.set_access(
        RuleTable([Rule(allow=False, who=("svc",), actions=(Action.SUBSCRIBE,), names=("news.x",))])
    )
    assert h.router.grants.listing() == {"publish": {"chat": 1}, "call": {"ops": 1}}
    assert h.router.stats["grants.dropped"] == 1
    h.router.publish(None, "news.eu", (b"x",))
    assert sink_of(guest).events == []  # the grant is gone, so is the delivery
    with pytest.raises(Denied):
        h.router.subscribe(guest, "news.eu")


def test_a_changed_identity_keeps_only_the_grants_it_may_make() -> None:
    rules = RuleTable([Rule(who=("role:trusted",))], default_allow=False)
    h = Harness(access=rules)
    svc = h.session("svc", TRUSTED)
    h.router.grant("untrusted", Action.CALL, "x", by=svc)
    h.router.set_identity(svc, Identity("nobody"))
    assert h.router.grants.listing() == {}


def test_a_closed_session_cannot_grant() -> None:
    h = Harness()
    svc = h.session("svc", TRUSTED)
    h.close(svc)
    with pytest.raises(MaitredError):
        h.router.grant("untrusted", Action.CALL, "x", by=svc)


def test_a_session_that_becomes_restricted_receives_only_what_is_granted() -> None:
    h = Harness()  # open policy: deliveries are checked only for restricted sessions
    s = h.session("s", TRUSTED)
    h.router.subscribe(s, "news.*")
    h.router.publish(None, "news.eu", (b"1",))
    h.router.set_identity(s, GUEST)
    h.router.publish(None, "news.eu", (b"2",))
    h.router.grant("untrusted", Action.SUBSCRIBE, "news.eu")
    h.router.publish(None, "news.eu", (b"3",))
    h.router.set_identity(s, TRUSTED)
    h.close(s)
    assert [b for _, b, _ in sink_of(s).events] == [[b"1"], [b"3"]]
    assert h.router._restricted == 0
