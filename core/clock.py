"""Time for the runtime. The routing core never reads a clock: it is handed ``now``.

``now`` is monotonic seconds (``time.monotonic``). Tests drive the core with :class:`FakeClock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

monotonic: Clock = time.monotonic


class FakeClock:
    """A clock that only moves when told to (for tests of expiry and liveness)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
