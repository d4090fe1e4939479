"""Subject names and patterns: validate_pattern, matches and the SubjectTree trie."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.core.routing.patterns import (
    SubjectTree,
    any_matches,
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
