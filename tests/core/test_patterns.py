"""Subject names and patterns: validate_pattern, matches and the SubjectTree trie."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.core.routing.patterns import (
    SubjectTree,
    TooComplex,
    any_matches,
    covers,
    find_name,
    intersects,
    is_pattern,
    matches,
    validate_pattern,
)


@pytest.mark.parametrize(
    "name", ["a", "a.b.c", "*", ">", "a.*", "a.>", "*.*.>", "$sys.>", "a-b_c.d:e", "**", "a>"]
)
def test_valid_patterns(name: str) -> None:
    assert validate_pattern(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty name"),
        (".", "empty segment"),
        ("a..b", "empty segment"),
        (".a", "empty segment"),
        ("a.", "empty segment"),
        ("a.>.b", "must be the last"),
        (">.>", "must be the last"),
    ],
)
def test_invalid_patterns(name: str, why: str) -> None:
    problem = validate_pattern(name)
    assert problem is not None and why in problem


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.b", False), ("a.*", True), ("a.>", True), (">", True), ("*", True), ("a*.b>", False)],
)
def test_is_pattern(name: str, expected: bool) -> None:
    assert is_pattern(name) is expected


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a", False),
        ("a", "a.b", False),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*.b", "a.b", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c.d", True),
        ("a.>", "a", False),
        ("a.>", "b.c", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("*.>", "a", False),
        ("*.>", "a.b", True),
        ("a.*.>", "a.b", False),
        ("a.*.>", "a.b.c", True),
    ],
)
def test_matches(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected
    tree: SubjectTree[str] = SubjectTree()
    tree.add(pattern, "v")
    assert tree.match(name) == ({"v"} if expected else set())
    assert tree.has_match(name) is expected


def test_any_matches() -> None:
    assert any_matches(["x", "a.*"], "a.b")
    assert not any_matches(["x", "a.*"], "a.b.c")
    assert not any_matches([], "a")


def test_subject_tree_add_remove_counts() -> None:
    tree: SubjectTree[int] = SubjectTree()
    assert len(tree) == 0
    assert not tree.has_match("a")
    assert tree.add("a.*", 1) is True
    assert tree.add("a.*", 1) is False
    assert tree.add("a.*", 2) is True
    assert tree.add("a.>", 1) is True
    assert tree.add(">", 3) is True
    assert tree.add("a.b", 4) is True
    assert tree.patterns() == {"a.*": 2, "a.>": 1, ">": 1, "a.b": 1}
    assert len(tree) == 4
    assert tree.match("a.b") == {1, 2, 3, 4}
    assert tree.match("a.b.c") == {1, 3}
    assert tree.match("z") == {3}
    assert tree.remove("a.*", 1) is True
    assert tree.remove("a.*", 1) is False
    assert tree.remove("nope", 1) is False
    assert tree.remove("a.b.c", 4) is False
    assert tree.remove("x.>", 4) is False
    assert tree.match("a.b") == {1, 2, 3, 4}  # 1 still there through a.>
    for pattern, value in [("a.*", 2), ("a.>", 1), (">", 3), ("a.b", 4)]:
        assert tree.remove(pattern, value) is True
    assert tree.patterns() == {}
    assert len(tree) == 0
    assert tree.match("a.b") == set()
    assert tree._root.empty()  # every node pruned


def test_subject_tree_prunes_only_empty_nodes() -> None:
    tree: SubjectTree[str] = SubjectTree()
    tree.add("a.b.c", "x")
    tree.add("a.b", "y")
    tree.remove("a.b.c", "x")
    assert tree.match("a.b") == {"y"}
    assert tree.match("a.b.c") == set()
    tree.add("a.b.c", "x")
    assert tree.match("a.b.c") == {"x"}


# -- property: the trie agrees with the one-off matcher -------------------------------------------

_segment = st.sampled_from(["a", "b", "c"])
_names = st.lists(_segment, min_size=1, max_size=4).map(".".join)


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    segs = draw(st.lists(st.sampled_from(["a", "b", "c", "*"]), min_size=0, max_size=4))
    if not segs or draw(st.booleans()):
        segs.append(">")
    return ".".join(segs)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.one_of(_patterns(), _names), st.integers(0, 3)), max_size=30
    ),
    probes=st.lists(_names, min_size=1, max_size=10),
)
def test_property_tree_agrees_with_matches(
    ops: list[tuple[bool, str, int]], probes: list[str]
) -> None:
    tree: SubjectTree[int] = SubjectTree()
    model: set[tuple[str, int]] = set()
    for add, pattern, value in ops:
        assert validate_pattern(pattern) is None
        if add:
            assert tree.add(pattern, value) is ((pattern, value) not in model)
            model.add((pattern, value))
        else:
            assert tree.remove(pattern, value) is ((pattern, value) in model)
            model.discard((pattern, value))
        counts: dict[str, int] = {}
        for p, _ in model:
            counts[p] = counts.get(p, 0) + 1
        assert tree.patterns() == counts
    for name in probes:
        expected = {v for p, v in model if matches(p, name)}
        assert tree.match(name) == expected
        assert tree.has_match(name) is bool(expected)
    for p, v in list(model):
        tree.remove(p, v)
    assert tree._root.empty()


# -- pattern algebra: covers, intersects, find_name ---------------------------------------------


@pytest.mark.parametrize(
    ("general", "specific", "expected"),
    [
        ("chat.*", "chat.*", True),
        ("chat.*", "chat.room1", True),
        ("chat.*", "chat.>", False),  # chat.>: chat.room1.private too
        ("chat.>", "chat.*", True),
        ("chat.>", "chat.>", True),
        ("chat.>", "chat.*.>", True),
        ("chat.>", "chat", False),
        ("chat.*.>", "chat.>", False),  # chat.room1
        (">", "a.b.c", True),
        (">", "*.>", True),
        ("*.>", ">", False),  # a one-segment name
        ("*.*", "a.b", True),
        ("*.*", "*.>", False),
        ("a.b", "a.*", False),
        ("a.b", "a.b", True),
        ("news.*", "news.>", False),
        ("secret.>", "*.plans", False),
        ("*", "**", True),  # '**' is a literal segment
        ("**", "*", False),
    ],
)
def test_covers(general: str, specific: str, expected: bool) -> None:
    assert covers(general, specific) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("secret.>", ">", True),
        ("secret.>", "*.plans", True),  # secret.plans
        ("secret.>", "*.*", True),
        ("secret.>", "secret", False),
        ("secret.>", "public.>", False),
        ("secret.*", "*.plans.x", False),
        ("a.*.c", "*.b.>", True),
        ("a.b", "a.c", False),
        ("a.b", "a.b.c", False),
        ("a.*", "a.b.>", False),  # lengths 2 against >= 3
        ("*.>", "a", False),
        ("*", "a", True),
        ("a.>", "*.>", True),
    ],
)
def test_intersects(a: str, b: str, expected: bool) -> None:
    assert intersects(a, b) is expected
    assert intersects(b, a) is expected


# a bounded universe that is exact for patterns over {a, b, c}: 'z' stands for every other
# segment, and names longer than the longest pattern (4) + 1 behave like those of length 5
_UNIVERSE = [
    ".".join(segs)
    for n in range(1, 6)
    for segs in itertools.product(["a", "b", "c", "z"], repeat=n)
]


@st.composite
def _any_pattern(draw: st.DrawFn) -> str:
    segs = draw(st.lists(st.sampled_from(["a", "b", "c", "*"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        segs[-1] = ">"
    return ".".join(segs)


def _names_of(pattern: str) -> set[str]:
    return {n for n in _UNIVERSE if matches(pattern, n)}


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(general=_any_pattern(), specific=_any_pattern())
def test_property_covers_and_intersects_agree_with_matches(general: str, specific: str) -> None:
    g, s = _names_of(general), _names_of(specific)
    assert covers(general, specific) is (s <= g)
    assert intersects(general, specific) is bool(g & s)
    assert intersects(specific, general) is bool(g & s)


def test_find_name() -> None:
    def unmatched(first: int | None, other: bool) -> bool:
        return first is None and not other

    # a name of 'chat.>' that 'chat.*' does not match
    assert find_name("chat.>", ["chat.*"], unmatched) == "chat.x.x"
    assert find_name("chat.*", ["chat.*"], unmatched) is None
    # 'a.*' and 'a.*.>' together match every name of 'a.>'
    assert find_name("a.>", ["a.*", "a.*.>"], unmatched) is None
    assert find_name("a.>", [], unmatched, others=["a.*", "a.*.>"]) is None
    assert find_name("a.>", ["a.*"], unmatched, others=["a.*.>"]) is None
    assert find_name(">", ["secret.>"], lambda first, _: first == 0) == "secret.x"
    assert find_name("*.plans", ["secret.>"], lambda first, _: first == 0) == "secret.plans"
    # only the first ranked pattern counts: 'a.b' (index 0) hides 'a.*' (index 1) for a.b
    assert find_name("a.*", ["a.b", "a.*"], lambda first, _: first == 1) == "a.x"
    assert find_name("a.b", ["a.b", "a.*"], lambda first, _: first == 1) is None
    # the fresh segment never collides with a literal
    assert find_name("*", ["x", "xx"], unmatched) == "xxx"


def test_find_name_gives_up_past_its_budget() -> None:
    patterns = [f"{a}.{b}.{c}" for a in "abcd" for b in "abcd" for c in "abcd"]
    with pytest.raises(TooComplex):
        find_name(">", patterns, lambda first, other: False, budget=10)


def test_find_name_merges_patterns_with_the_same_rest() -> None:
    """Many patterns with wildcards at different places: states with the same rests merge,
    so the whole space is searched in bounded steps; past the budget it gives up."""

    def table(n: int) -> list[str]:
        ranked = [p for i in range(n) for p in (f"a{i}.*.*.*", f"*.b{i}.*.*", f"*.*.c{i}.*")]
        return [*ranked, "*.*.*.zz"]

    small = table(10)
    assert find_name(">", small, lambda first, _: first == len(small) - 1) == "x.x.x.zz"
    assert find_name(">", small, lambda first, _: first == -1) is None  # searched it all
    with pytest.raises(TooComplex):
        find_name(">", table(100), lambda first, _: first == -1)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    pattern=_any_pattern(),
    ranked=st.lists(_any_pattern(), max_size=4),
    others=st.lists(_any_pattern(), max_size=2),
    wanted=st.sampled_from([None, 0, 1, 2, 3]),
    wanted_other=st.booleans(),
)
def test_property_find_name_is_exact(
    pattern: str, ranked: list[str], others: list[str], wanted: int | None, wanted_other: bool
) -> None:
    """find_name finds a name exactly when the bounded universe holds one."""

    def first_of(name: str) -> int | None:
        return next((k for k, p in enumerate(ranked) if matches(p, name)), None)

    def other_of(name: str) -> bool:
        return any(matches(o, name) for o in others)

    def bad(first: int | None, other: bool) -> bool:
        return first == wanted and other is wanted_other

    expected = any(bad(first_of(n), other_of(n)) for n in _names_of(pattern))
    found = find_name(pattern, ranked, bad, others)
    assert (found is not None) is expected
    if found is not None:
        assert matches(pattern, found) and bad(first_of(found), other_of(found))
