"""The config range checks the transports' ``problems()`` share (:mod:`maitred.core.checks`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from maitred.core.checks import at_least, finite


@dataclass
class _Table:
    credit: int = 1
    limit: int = 0
    wait: float = 0.0
    beat: float = 1.0


def test_at_least_names_each_key_below_its_minimum() -> None:
    assert at_least(_Table(), 1, "credit") == []
    assert at_least(_Table(credit=0, limit=0), 1, "credit", "limit") == [
        "credit must be >= 1",
        "limit must be >= 1",
    ]
    assert at_least(_Table(limit=-2), -1, "limit", note="-1: wait forever") == [
        "limit must be >= -1 (-1: wait forever)"
    ]


def test_finite_refuses_negative_infinite_and_nan() -> None:
    assert finite(_Table(), "wait", "beat") == []
    for bad in (-0.5, math.inf, math.nan):
        assert finite(_Table(wait=bad), "wait", "beat") == ["wait must be a finite number >= 0"]


def test_finite_positive_refuses_zero_and_keeps_the_note() -> None:
    assert finite(_Table(), "beat", positive=True) == []
    assert finite(_Table(beat=0.0), "beat", positive=True, note="seconds") == [
        "beat must be a finite number > 0 (seconds)"
    ]
