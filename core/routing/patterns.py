"""Subject names and wildcard patterns, shared by topics and access rules.

A name is a dot-separated list of segments (``orders.eu.created``). In a pattern, ``*`` stands for
exactly one segment and ``>`` (last segment only) for one or more remaining segments: ``orders.*``
matches ``orders.eu`` but not ``orders.eu.created``; ``orders.>`` matches both; ``>`` matches
every name. Any other segment matches itself literally.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
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
        #: (pattern, value) entries held: every subscription, not just distinct patterns
        self.size = 0

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
                self.size += 1
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
        self.size += 1
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
        self.size -= 1
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
