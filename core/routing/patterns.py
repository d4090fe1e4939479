"""Subject names and wildcard patterns, shared by topics and access rules.

A name is a dot-separated list of segments (``orders.eu.created``). In a pattern, ``*`` stands for
exactly one segment and ``>`` (last segment only) for one or more remaining segments: ``orders.*``
matches ``orders.eu`` but not ``orders.eu.created``; ``orders.>`` matches both; ``>`` matches
every name. Any other segment matches itself literally.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

V = TypeVar("V", bound=Hashable)


def is_pattern(name: str) -> bool:
    """True when ``name`` contains a wildcard segment."""
    return any(seg in ("*", ">") for seg in name.split("."))


def validate_pattern(pattern: str) -> str | None:
    """Return why ``pattern`` is not a valid pattern, or None when it is."""
    if not pattern:
        return "empty name"
    segs = pattern.split(".")
    for i, seg in enumerate(segs):
        if not seg:
            return f"empty segment in {pattern!r}"
        if seg == ">" and i != len(segs) - 1:
            return f"'>' must be the last segment in {pattern!r}"
    return None


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern`` (no trie; for rule tables and one-off checks)."""
    if pattern == name or pattern == ">":
        return True
    psegs = pattern.split(".")
    nsegs = name.split(".")
    for i, p in enumerate(psegs):
        if p == ">":
            return len(nsegs) > i
        if i >= len(nsegs):
            return False
        if p != "*" and p != nsegs[i]:
            return False
    return len(psegs) == len(nsegs)


class _Node(Generic[V]):
    __slots__ = ("children", "rest", "star", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.star: _Node[V] | None = None
        self.values: dict[V, int] = {}  # value -> how many times added at this exact node
        self.rest: dict[V, int] = {}  # values of the pattern "<prefix>.>"

    def empty(self) -> bool:
        return not (self.children or self.star or self.values or self.rest)


class SubjectTree(Generic[V]):
    """A trie of patterns, each holding a set of values; ``match(name)`` finds them all."""

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._count: dict[str, int] = {}

    def add(self, pattern: str, value: V) -> bool:
        """Add ``value`` under ``pattern``; False when it was there already."""
        node = self._root
        segs = pattern.split(".")
        for i, seg in enumerate(segs):
            if seg == ">" and i == len(segs) - 1:
                if value in node.rest:
                    return False
                node.rest[value] = 1
                self._count[pattern] = self._count.get(pattern, 0) + 1
                return True
            if seg == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(seg)
                if child is None:
                    child = node.children[seg] = _Node()
                node = child
        if value in node.values:
            return False
        node.values[value] = 1
        self._count[pattern] = self._count.get(pattern, 0) + 1
        return True

    def remove(self, pattern: str, value: V) -> bool:
        """Remove ``value`` from ``pattern``; False when it was not there."""
        path: list[tuple[_Node[V], str]] = []
        node: _Node[V] | None = self._root
        segs = pattern.split(".")
        for i, seg in enumerate(segs):
            assert node is not None
            if seg == ">" and i == len(segs) - 1:
                if node.rest.pop(value, None) is None:
                    return False
                break
            path.append((node, seg))
            node = node.star if seg == "*" else node.children.get(seg)
            if node is None:
                return False
        else:
            assert node is not None
            if node.values.pop(value, None) is None:
                return False
        left = self._count[pattern] - 1
        if left:
            self._count[pattern] = left
        else:
            del self._count[pattern]
        # prune empty nodes bottom-up
        for parent, seg in reversed(path):
            child = parent.star if seg == "*" else parent.children.get(seg)
            if child is None or not child.empty():
                break
            if seg == "*":
                parent.star = None
            else:
                del parent.children[seg]
        return True

    def match(self, name: str) -> set[V]:
        """Every value whose pattern matches ``name``."""
        out: set[V] = set()
        nodes = [self._root]
        segs = name.split(".")
        last = len(segs) - 1
        for i, seg in enumerate(segs):
            nxt: list[_Node[V]] = []
            for node in nodes:
                if node.rest:
                    out.update(node.rest)
                child = node.children.get(seg)
                if child is not None:
                    nxt.append(child)
                if node.star is not None:
                    nxt.append(node.star)
            if not nxt:
                return out
            nodes = nxt
            if i == last:
                for node in nodes:
                    if node.values:
                        out.update(node.values)
        return out

    def has_match(self, name: str) -> bool:
        """Cheaper than ``bool(match(name))`` for the common 'is anybody listening' test."""
        return bool(self._count) and bool(self.match(name))

    def patterns(self) -> dict[str, int]:
        """Each pattern with the number of values under it."""
        return dict(self._count)

    def __len__(self) -> int:
        return len(self._count)


def any_matches(patterns: Iterable[str], name: str) -> bool:
    """Whether ``name`` matches any of ``patterns``."""
    return any(matches(p, name) for p in patterns)


# -- pattern algebra: decisions on patterns, not on a pattern string taken as a name -------------


def covers(general: str, specific: str) -> bool:
    """Whether every name ``specific`` matches is matched by ``general`` too (both are valid
    patterns; a plain name is a pattern matching itself). ``chat.>`` covers ``chat.*`` and
    ``chat.a.b``; ``chat.*`` does not cover ``chat.>`` (``chat.a.b``)."""
    if general == specific or general == ">":
        return True
    gsegs = general.split(".")
    ssegs = specific.split(".")
    for i, g in enumerate(gsegs):
        if g == ">":
            return len(ssegs) > i  # the rest of any name of specific: one segment or more
        if i >= len(ssegs):
            return False  # specific's names are shorter
        s = ssegs[i]
        if s == ">":
            return False  # specific goes on where general stops or needs one exact segment
        if g != "*" and g != s:
            return False  # a literal covers only itself (not '*', not another literal)
    return len(gsegs) == len(ssegs)


def intersects(a: str, b: str) -> bool:
    """Whether some name is matched by both patterns ``a`` and ``b``."""
    if a == b or a == ">" or b == ">":
        return True
    asegs = a.split(".")
    bsegs = b.split(".")
    for i, x in enumerate(asegs):
        if x == ">":
            return len(bsegs) > i
        if i >= len(bsegs):
            return False
        y = bsegs[i]
        if y == ">":
            return True  # x is a segment at i: b's rest takes it and a's remaining segments
        if x != y and x != "*" and y != "*":
            return False
    return len(asegs) == len(bsegs)


class TooComplex(Exception):
    """:func:`find_name` gave up: the patterns need more steps than its budget."""


_ALIVE, _FULL, _DEAD = 0, 1, 2


def _step(segs: list[str], status: int, depth: int, seg: str) -> int:
    """The status of a pattern after the name's segment ``depth`` is ``seg``."""
    if status != _ALIVE:
        return status
    if depth >= len(segs):
        return _DEAD
    p = segs[depth]
    if p == ">":
        return _FULL
    return _ALIVE if p == "*" or p == seg else _DEAD


def find_name(
    pattern: str,
    patterns: list[str],
    bad: Callable[[frozenset[int]], bool],
    budget: int = 20_000,
) -> str | None:
    """A name matched by ``pattern`` for which ``bad(M)`` holds, where ``M`` is the set of
    indices of ``patterns`` that match the name; None when there is none.

    The search builds names segment by segment. At each position only the literals the
    patterns still alive there name make a difference, plus one "fresh" segment standing for
    every other value, and names longer than the longest pattern (+1) behave like it; so the
    search is exact and finite. It gives up with :class:`TooComplex` past ``budget`` states.
    """
    psegs = pattern.split(".")
    all_segs = [p.split(".") for p in patterns]
    literals = {s for segs in [psegs, *all_segs] for s in segs if s not in ("*", ">")}
    fresh = "x"
    while fresh in literals:
        fresh += "x"
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    steps = 0

    def matched(depth: int, statuses: tuple[int, ...]) -> frozenset[int]:
        return frozenset(
            k
            for k, st in enumerate(statuses)
            if st == _FULL or (st == _ALIVE and len(all_segs[k]) == depth)
        )

    def search(depth: int, pst: int, statuses: tuple[int, ...], prefix: list[str]) -> str | None:
        nonlocal steps
        if pst == _DEAD:
            return None
        key = (depth, pst, statuses)
        if key in seen:
            return None
        seen.add(key)
        steps += 1
        if steps > budget:
            raise TooComplex(pattern)
        ends = pst == _FULL or (pst == _ALIVE and len(psegs) == depth)
        if depth and ends and bad(matched(depth, statuses)):
            return ".".join(prefix)
        if pst == _ALIVE and depth >= len(psegs):
            return None  # pattern's names end here
        if pst == _FULL and _ALIVE not in statuses:
            return None  # every longer name is matched by the same patterns as this one
        if pst == _ALIVE and psegs[depth] not in ("*", ">"):
            candidates = [psegs[depth]]
        else:
            found = {
                all_segs[k][depth]
                for k, st in enumerate(statuses)
                if st == _ALIVE and depth < len(all_segs[k])
            }
            candidates = [*sorted(found - {"*", ">"}), fresh]
        for seg in candidates:
            nxt = tuple(_step(all_segs[k], st, depth, seg) for k, st in enumerate(statuses))
            prefix.append(seg)
            hit = search(depth + 1, _step(psegs, pst, depth, seg), nxt, prefix)
            prefix.pop()
            if hit is not None:
                return hit
        return None

    return search(0, _ALIVE, tuple(_ALIVE for _ in patterns), [])
