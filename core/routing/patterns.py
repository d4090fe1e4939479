"""Subject names and wildcard patterns, shared by topics and access rules.

A name is a dot-separated list of segments (``orders.eu.created``). In a pattern, ``*`` stands for
exactly one segment and ``>`` (last segment only) for one or more remaining segments: ``orders.*``
matches ``orders.eu`` but not ``orders.eu.created``; ``orders.>`` matches both; ``>`` matches
every name. Any other segment matches itself literally.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

from maitred.core.errors import BrokerError

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


def _walk(a: str, b: str, rest: bool | None, star: bool) -> bool:
    """The segment walk of :func:`matches`, :func:`covers` and :func:`intersects`: whether
    pattern ``a`` takes every segment of ``b``. They differ only in what a wildcard segment of
    ``b`` means: ``rest`` is the answer where ``b`` has ``>`` (None: ``b`` is a name, its ``>``
    a plain segment); ``star``: a ``*`` of ``b`` stands for any segment of ``a`` (else it is
    taken only by a ``*`` of ``a``)."""
    if a == b or a == ">":
        return True
    asegs = a.split(".")
    bsegs = b.split(".")
    for i, x in enumerate(asegs):
        if x == ">":
            return len(bsegs) > i  # the rest of b: one segment or more
        if i >= len(bsegs):
            return False  # b's names are shorter
        y = bsegs[i]
        if rest is not None and y == ">":
            return rest
        if x != y and x != "*" and not (star and y == "*"):
            return False
    return len(asegs) == len(bsegs)


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern`` (no trie; for rule tables and one-off checks)."""
    return _walk(pattern, name, None, False)


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
                held = node.rest  # "<prefix>.>": the values of the node it ends at
                break
            if seg == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(seg)
                if child is None:
                    child = node.children[seg] = _Node()
                node = child
        else:
            held = node.values
        if value in held:
            return False
        held[value] = 1
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


# -- pattern algebra: decisions on patterns, not on a pattern string taken as a name -------------


def covers(general: str, specific: str) -> bool:
    """Whether every name ``specific`` matches is matched by ``general`` too (both are valid
    patterns; a plain name is a pattern matching itself). ``chat.>`` covers ``chat.*`` and
    ``chat.a.b``; ``chat.*`` does not cover ``chat.>`` (``chat.a.b``): where ``specific`` goes
    on with ``>`` and ``general`` needs one segment more, it does not; a ``*`` of ``specific``
    is covered only by a ``*``."""
    return _walk(general, specific, False, False)


def intersects(a: str, b: str) -> bool:
    """Whether some name is matched by both patterns ``a`` and ``b``: where ``b`` goes on
    with ``>``, its rest takes ``a``'s remaining segments; a ``*`` meets any segment."""
    return _walk(a, b, True, True)


class TooComplex(BrokerError):
    """:func:`find_name` gave up: the patterns need more steps than its budget."""


#: the rest of a pattern that matches every longer name (no pattern's rest equals it: a
#: segment is never empty)
_FULL: tuple[str, ...] = ("",)


def find_name(
    pattern: str,
    ranked: Sequence[str],
    bad: Callable[[int | None, bool], bool],
    others: Sequence[str] = (),
    budget: int = 200_000,
) -> str | None:
    """A name matched by ``pattern`` for which ``bad(first, other)`` holds, or None when there
    is none. ``first`` is the lowest index of the ``ranked`` patterns that match the name (None
    when none does), ``other`` whether any of ``others`` matches it: what "the first matching
    rule decides, else a grant" needs to know of a name.

    The search builds names segment by segment, tracking what is left of each pattern. At each
    position only the literals the remaining patterns name make a difference, plus one "fresh"
    segment standing for every other value; patterns with the same rest behave alike from there
    on (of ranked ones only the first counts), and a ranked pattern that matches every longer
    name hides all ranked after it. So the search is exact and finite. It gives up with
    :class:`TooComplex` past ``budget`` steps (a step to the next segment costs one per
    pattern it tracks), which bounds its time (tens of milliseconds) whatever the patterns.
    """
    literals = {
        seg for p in [pattern, *ranked, *others] for seg in p.split(".") if seg not in ("*", ">")
    }
    fresh = "x"
    while fresh in literals:
        fresh += "x"
    seen: set[tuple[object, ...]] = set()
    steps = 0

    def rest(segs: tuple[str, ...], seg: str) -> tuple[str, ...] | None:
        """What is left of a pattern after the name's next segment ``seg`` (None: no match)."""
        if not segs:
            return None
        head = segs[0]
        if head == ">":
            return _FULL
        return segs[1:] if head == "*" or head == seg else None

    # a state: what is left of ``pattern`` (or _FULL); the lowest ranked index that matches
    # every longer name (or None); the rest of each other ranked pattern -> its lowest index;
    # whether some other pattern matches every longer name; the rests of the other others
    def search(
        prest: tuple[str, ...],
        full_first: int | None,
        alive: dict[tuple[str, ...], int],
        other_full: bool,
        other_alive: frozenset[tuple[str, ...]],
        prefix: list[str],
    ) -> str | None:
        nonlocal steps
        key = (prest, full_first, frozenset(alive.items()), other_full, other_alive)
        if key in seen:
            return None
        seen.add(key)
        if prefix and (prest is _FULL or not prest):
            ends = [i for r, i in alive.items() if not r]
            if full_first is not None:
                ends.append(full_first)
            if bad(min(ends) if ends else None, other_full or () in other_alive):
                return ".".join(prefix)
        if not prest:
            return None  # the pattern's names end here
        if prest is _FULL and not alive and not other_alive:
            return None  # every longer name is matched by the same patterns as this one
        head = prest[0] if prest is not _FULL else ">"
        if head not in ("*", ">"):
            candidates = [head]
        else:
            heads = {r[0] for r in alive if r} | {r[0] for r in other_alive if r}
            candidates = [*sorted(heads - {"*", ">"}), fresh]
        for seg in candidates:
            steps += 1 + len(alive) + len(other_alive)
            if steps > budget:
                raise TooComplex(pattern)
            nprest = _FULL if prest is _FULL else rest(prest, seg)
            if nprest is None:
                continue
            nfull = full_first
            nalive: dict[tuple[str, ...], int] = {}
            for r, i in alive.items():
                nr = rest(r, seg)
                if nr is None:
                    continue
                if nr is _FULL:
                    nfull = i if nfull is None else min(nfull, i)
                elif nalive.get(nr, i) >= i:
                    nalive[nr] = i
            if nfull is not None:  # ranked patterns after it can never be the first
                nalive = {r: i for r, i in nalive.items() if i < nfull}
            nother_full = other_full
            nother: set[tuple[str, ...]] = set()
            if not nother_full:
                for r in other_alive:
                    nr = rest(r, seg)
                    if nr is _FULL:
                        nother_full = True
                        break
                    if nr is not None:
                        nother.add(nr)
            if nother_full:
                nother.clear()
            prefix.append(seg)
            hit = search(nprest, nfull, nalive, nother_full, frozenset(nother), prefix)
            prefix.pop()
            if hit is not None:
                return hit
        return None

    start: dict[tuple[str, ...], int] = {}
    for i, p in enumerate(ranked):
        start.setdefault(tuple(p.split(".")), i)
    other_start = frozenset(tuple(o.split(".")) for o in others)
    return search(tuple(pattern.split(".")), None, start, False, other_start, [])
