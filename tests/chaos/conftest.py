"""The chaos run's time bound follows its length (--chaos-seconds, --chaos-long)."""

from __future__ import annotations

import pytest

from tests.chaos.harness import SETTLE, WAIT
from tests.chaos.test_chaos import chaos_seconds


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bound = chaos_seconds(config) + WAIT + SETTLE + 120
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(pytest.mark.timeout(bound))
