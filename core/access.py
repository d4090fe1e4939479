"""Access control: one policy, asked by the core for every transport.

*Who* is an :class:`Identity` (a name and roles) that a transport attaches to a session after it
authenticated the peer. *What* is an :class:`Action` on a name (a service or a topic). The policy
answers allow or deny; the router asks it before it performs the action, so a denial is uniform
across protocols.

:class:`RuleTable` is the policy built from the ``[access]`` config section: rules are tried in
order, the first whose ``who``, ``actions`` and ``names`` all match decides; with no match the
table's default decides. ``who`` entries are ``*`` (anyone), ``role:NAME`` or an identity name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Protocol

import msgspec

from maitred.core.routing.patterns import matches, validate_pattern


class Action(StrEnum):
    CALL = "call"
    SERVE = "serve"
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


class Identity(msgspec.Struct, frozen=True):
    """Who a session is, once its transport authenticated it."""

    name: str
    roles: frozenset[str] = frozenset()

    def has_role(self, role: str) -> bool:
        return role in self.roles


ANONYMOUS = Identity("anonymous")


class AccessPolicy(Protocol):
    """Decides whether ``identity`` may perform ``action`` on ``name``."""

    def allowed(self, identity: Identity, action: Action, name: str) -> bool: ...


class AllowAll:
    """The policy when nothing is configured: everything is allowed."""

    open = True

    def allowed(self, identity: Identity, action: Action, name: str) -> bool:
        return True


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of the access table (``[[access.rules]]`` in the config)."""

    allow: bool = True
    who: tuple[str, ...] = ("*",)
    actions: tuple[Action, ...] = (Action.CALL, Action.SERVE, Action.PUBLISH, Action.SUBSCRIBE)
    names: tuple[str, ...] = (">",)

    def problems(self) -> list[str]:
        out = [p for p in (validate_pattern(n) for n in self.names) if p]
        out += [f"empty 'who' entry in {self.who!r}" for w in self.who if not w]
        return out

    def applies(self, identity: Identity, action: Action, name: str) -> bool:
        if action not in self.actions:
            return False
        if not any(_who_matches(w, identity) for w in self.who):
            return False
        return any(matches(p, name) for p in self.names)


def _who_matches(who: str, identity: Identity) -> bool:
    if who == "*":
        return True
    if who.startswith("role:"):
        return who[5:] in identity.roles
    return who == identity.name


class RuleTable:
    """First matching rule decides; otherwise ``default_allow``."""

    open = False

    def __init__(self, rules: Sequence[Rule], default_allow: bool = True) -> None:
        self.rules = tuple(rules)
        self.default_allow = default_allow
        self.open = default_allow and not self.rules

    def allowed(self, identity: Identity, action: Action, name: str) -> bool:
        for rule in self.rules:
            if rule.applies(identity, action, name):
                return rule.allow
        return self.default_allow


class HookedPolicy:
    """A policy whose decisions a plugin hook may take first (``maitred_authorize``).

    ``hook`` returns True/False to decide, or None to let ``fallback`` decide.
    """

    open = False

    def __init__(
        self,
        hook: Callable[[Identity, Action, str], bool | None],
        fallback: AccessPolicy,
    ) -> None:
        self._hook = hook
        self._fallback = fallback

    def allowed(self, identity: Identity, action: Action, name: str) -> bool:
        verdict = self._hook(identity, action, name)
        if verdict is None:
            return self._fallback.allowed(identity, action, name)
        return bool(verdict)


def is_open(policy: AccessPolicy) -> bool:
    """True when the policy allows everything (the router then skips asking it)."""
    return bool(getattr(policy, "open", False))


def roles(items: Iterable[str]) -> frozenset[str]:
    return frozenset(items)
