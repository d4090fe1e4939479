"""Access control: one policy, asked by the core for every transport.

*Who* is an :class:`Identity` (a name and roles) that a transport attaches to a session after it
authenticated the peer. *What* is an :class:`Action` on a name (a service or a topic). The router
asks before it performs the action, so a denial is uniform across protocols. The decision:

1. the policy's explicit answer (``decide``): a ``maitred_authorize`` hook, then the first
   matching ``[access]`` rule; an explicit answer always wins;
2. otherwise, for a **restricted** identity (e.g. a middleman client-key connection), only what
   was granted at run time (:class:`Grants`, e.g. by a middleman EPUB/EREQ/ESUB);
3. otherwise the policy's default (``[access] default``, allow unless configured).

A *pattern* (a subscription, or the names a grant would open) is decided by containment
(:func:`decide_pattern`): allowed only if every name it can match is allowed as above.

:class:`RuleTable` is the policy built from the ``[access]`` config section: rules are tried in
order, the first whose ``who``, ``actions`` and ``names`` all match decides. ``who`` entries are
``*`` (anyone), ``role:NAME`` or an identity name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Protocol

import msgspec

from maitred.core.routing.patterns import (
    SubjectTree,
    TooComplex,
    find_name,
    intersects,
    is_pattern,
    matches,
    validate_pattern,
)

log = logging.getLogger("maitred.core.access")


class Action(StrEnum):
    CALL = "call"
    SERVE = "serve"
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    #: change what others rely on: destroy a queue, remove a message one does not hold, stop
    #: the broker (the message switch's management operations)
    MANAGE = "manage"
    #: read-only views of what passes through the broker: diagnostics, the trace, listings,
    #: metrics, dead letters
    OBSERVE = "observe"


#: the actions of a rule that names none: the traffic actions. ``manage`` and ``observe`` are
#: granted by naming them, so a rule written for traffic never opens administration
TRAFFIC_ACTIONS: tuple[Action, ...] = (
    Action.CALL,
    Action.SERVE,
    Action.PUBLISH,
    Action.SUBSCRIBE,
)


class Identity(msgspec.Struct, frozen=True):
    """Who a session is, once its transport authenticated it."""

    name: str
    roles: frozenset[str] = frozenset()
    #: restricted identities may do only what a rule explicitly allows or a grant permits
    restricted: bool = False

    def has_role(self, role: str) -> bool:
        return role in self.roles


ANONYMOUS = Identity("anonymous")


class AccessPolicy(Protocol):
    """Decides whether ``identity`` may perform ``action`` on ``name``.

    A policy may also offer ``decide(identity, action, name) -> bool | None`` (an explicit
    answer, or None when no rule speaks) and ``default_allow``; then run-time grants can open
    what it leaves undecided for restricted identities. A policy with only ``allowed`` is taken
    as always explicit.
    """

    def allowed(self, identity: Identity, action: Action, name: str) -> bool: ...


class AllowAll:
    """The policy when nothing is configured: everything is allowed."""

    open = True
    default_allow = True

    def decide(self, identity: Identity, action: Action, name: str) -> bool | None:
        return None

    def allowed(self, identity: Identity, action: Action, name: str) -> bool:
        return True


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of the access table (``[[access.rules]]`` in the config)."""

    allow: bool = True
    who: tuple[str, ...] = ("*",)
    #: when not given: the traffic actions only (``TRAFFIC_ACTIONS``), not manage/observe
    actions: tuple[Action, ...] = TRAFFIC_ACTIONS
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

    def decide(self, identity: Identity, action: Action, name: str) -> bool | None:
        for rule in self.rules:
            if rule.applies(identity, action, name):
                return rule.allow
        return None

    def allowed(self, identity: Identity, action: Action, name: str) -> bool:
        verdict = self.decide(identity, action, name)
        return self.default_allow if verdict is None else verdict


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
        self.default_allow: bool = getattr(fallback, "default_allow", True)

    @property
    def fallback(self) -> AccessPolicy:
        return self._fallback

    def hook_verdict(self, identity: Identity, action: Action, name: str) -> bool | None:
        """The hook's own answer (None: it leaves the decision to the fallback)."""
        verdict = self._hook(identity, action, name)
        return None if verdict is None else bool(verdict)

    def decide(self, identity: Identity, action: Action, name: str) -> bool | None:
        verdict = self.hook_verdict(identity, action, name)
        if verdict is not None:
            return verdict
        explicit = getattr(self._fallback, "decide", None)
        if explicit is None:
            return self._fallback.allowed(identity, action, name)
        result: bool | None = explicit(identity, action, name)
        return result

    def allowed(self, identity: Identity, action: Action, name: str) -> bool:
        verdict = self.decide(identity, action, name)
        return self.default_allow if verdict is None else verdict


class Grants:
    """Permissions granted at run time to roles, e.g. by a middleman EPUB/EREQ/ESUB: "anyone
    with role R may A on names matching P". They open doors for restricted identities only
    (unrestricted ones are governed by the policy alone)."""

    def __init__(self) -> None:
        self._trees: dict[Action, SubjectTree[str]] = {a: SubjectTree() for a in Action}
        #: action -> pattern -> roles (what :meth:`patterns_for` reads)
        self._roles: dict[Action, dict[str, set[str]]] = {a: {} for a in Action}
        self.version = 0

    def grant(self, role: str, action: Action, pattern: str) -> bool:
        """Grant; False when it was granted already. Raises ValueError for a bad pattern."""
        problem = validate_pattern(pattern)
        if problem:
            raise ValueError(problem)
        added = self._trees[action].add(pattern, role)
        if added:
            self._roles[action].setdefault(pattern, set()).add(role)
        self.version += added
        return added

    def revoke(self, role: str, action: Action, pattern: str) -> bool:
        removed = self._trees[action].remove(pattern, role)
        if removed:
            roles = self._roles[action][pattern]
            roles.discard(role)
            if not roles:
                del self._roles[action][pattern]
        self.version += removed
        return removed

    def patterns_for(self, identity: Identity, action: Action) -> list[str]:
        """The patterns granted to any of ``identity``'s roles for ``action``."""
        return [
            p for p, roles in self._roles[action].items() if not identity.roles.isdisjoint(roles)
        ]

    def permits(self, identity: Identity, action: Action, name: str) -> bool:
        tree = self._trees[action]
        if not len(tree):
            return False
        return not identity.roles.isdisjoint(tree.match(name))

    def listing(self) -> dict[str, dict[str, int]]:
        """``{action: {pattern: roles}}`` for MMI and diagnostics."""
        return {a.value: t.patterns() for a, t in self._trees.items() if len(t)}


def decide(
    policy: AccessPolicy, grants: Grants, identity: Identity, action: Action, name: str
) -> bool:
    """The whole decision described in the module docstring."""
    explicit = getattr(policy, "decide", None)
    if explicit is None:
        return policy.allowed(identity, action, name)
    verdict: bool | None = explicit(identity, action, name)
    if verdict is not None:
        return verdict
    if identity.restricted:
        return grants.permits(identity, action, name)
    return bool(getattr(policy, "default_allow", True))


def _verb(action: Action) -> str:
    return {Action.PUBLISH: "publish to", Action.SUBSCRIBE: "subscribe to"}.get(
        action, action.value
    )


def refusal(identity: Identity, action: Action, name: str) -> str:
    """The reason a denial gives: ``<identity> may not <verb> <name>``."""
    return f"{identity.name} may not {_verb(action)} {name}"


def decide_pattern(
    policy: AccessPolicy, grants: Grants, identity: Identity, action: Action, pattern: str
) -> bool:
    """The decision for a *pattern* (a subscription, or what a grant would open): allowed
    only if every name the pattern matches is allowed as :func:`decide` decides for that name.

    A plain name is decided by :func:`decide`. For a pattern: a ``maitred_authorize`` hook is
    asked first, with the pattern string, and its answer stands; then, for a rule table, the
    rules are walked as "first matching rule decides" would for each name the pattern matches
    (rules whose names do not intersect the pattern play no part), names no rule matches fall
    to the grants (restricted identities) or the default. A policy that is neither (a plain
    ``allowed``) is asked with the pattern string.
    """
    return pattern_witness(policy, grants, identity, action, pattern) is None


#: what :func:`pattern_witness` answers when it gave up (the pattern is refused)
TOO_COMPLEX = "<too complex to decide>"


def pattern_witness(
    policy: AccessPolicy, grants: Grants, identity: Identity, action: Action, pattern: str
) -> str | None:
    """None when :func:`decide_pattern` allows ``pattern``; else a name it matches that is
    denied (the pattern itself when the answer came for the string), or :data:`TOO_COMPLEX`."""
    if not is_pattern(pattern):
        return None if decide(policy, grants, identity, action, pattern) else pattern
    if isinstance(policy, HookedPolicy):
        verdict = policy.hook_verdict(identity, action, pattern)
        if verdict is not None:
            return None if verdict else pattern
        policy = policy.fallback
    if isinstance(policy, RuleTable):
        rules = policy.rules
        default_allow = policy.default_allow
    elif isinstance(policy, AllowAll):
        rules, default_allow = (), True
    else:
        return None if decide(policy, grants, identity, action, pattern) else pattern
    names: list[str] = []  # the names of the rules that speak, in rule order
    allow: list[bool] = []  # per entry of names: its rule's verdict
    for rule in rules:
        if action in rule.actions and any(_who_matches(w, identity) for w in rule.who):
            for name in rule.names:
                if intersects(name, pattern):
                    names.append(name)
                    allow.append(rule.allow)
    granted: list[str] = []
    if identity.restricted:
        granted = [g for g in grants.patterns_for(identity, action) if intersects(g, pattern)]

    def denied(first: int | None, by_grant: bool) -> bool:
        if first is not None:
            return not allow[first]  # the first matching rule decides
        if identity.restricted:
            return not by_grant
        return not default_allow

    try:
        return find_name(pattern, names, denied, granted)
    except TooComplex:
        log.warning(
            "access: %s %s for %s is too complex to decide against the rules: refused",
            action.value,
            pattern,
            identity.name,
        )
        return TOO_COMPLEX


def is_open(policy: AccessPolicy) -> bool:
    """True when the policy allows everything (the router then skips asking it)."""
    return bool(getattr(policy, "open", False))


def roles(items: Iterable[str]) -> frozenset[str]:
    return frozenset(items)
