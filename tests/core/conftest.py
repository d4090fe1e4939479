"""Fixtures for the routing-core tests: a router on a fake clock with recording sinks.

Every harness made through these fixtures is checked at teardown: the router must never have
delivered anything to a session after it was closed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.core.harness import Harness


@pytest.fixture
def make_harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kw: Any) -> Harness:
        harness = Harness(**kw)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        assert harness.violations() == [], "deliveries to closed sessions"


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    """A harness with the default policy and liveness."""
    return make_harness()
