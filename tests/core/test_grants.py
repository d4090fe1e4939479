"""Restricted identities and run-time grants (the core half of middleman's EPUB/EREQ/ESUB)."""

from __future__ import annotations

import pytest

from maitred.core.access import Action, Identity, Rule, RuleTable
from maitred.core.errors import Denied, ErrorCode
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
