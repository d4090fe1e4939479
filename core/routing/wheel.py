"""The deadline wheel: request deadlines in coarse buckets, so arming, disarming and finding
what is due cost O(1) per request whatever the number of requests waiting.

A request with a deadline is put in the bucket of ``ceil(deadline / resolution)`` (never expired
early, at most ``resolution`` late); a heap of bucket indices says which bucket is due next. A
request knows its bucket (``Request.bucket``), so a reply takes it out without a search.
"""

from __future__ import annotations

import heapq

from maitred.core.routing.model import Request


class DeadlineWheel:
    """Buckets of ``resolution`` seconds of armed requests. See the module docstring."""

    __slots__ = ("_buckets", "_heap", "resolution")

    def __init__(self, resolution: float) -> None:
        if not resolution > 0:
            raise ValueError("resolution must be > 0")
        self.resolution = resolution
        self._buckets: dict[int, dict[int, Request]] = {}
        self._heap: list[int] = []

    def arm(self, request: Request) -> None:
        """Put ``request`` in the bucket of its deadline."""
        index = -int(-request.deadline // self.resolution)  # ceil: never expire early
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = {}
            heapq.heappush(self._heap, index)
        bucket[request.id] = request
        request.bucket = bucket

    @staticmethod
    def disarm(request: Request) -> None:
        """Take ``request`` out of its bucket (it is answered or gone); no-op if not armed."""
        bucket = request.bucket
        if bucket is not None:
            bucket.pop(request.id, None)
            request.bucket = None

    def pop_due(self, now: float) -> dict[int, Request] | None:
        """The next non-empty bucket whose time has come at ``now``, taken out of the wheel
        (its requests still point at it: the caller clears ``request.bucket``), or None."""
        current = int(now // self.resolution)
        heap = self._heap
        while heap and heap[0] <= current:
            bucket = self._buckets.pop(heapq.heappop(heap), None)
            if bucket:
                return bucket
        return None

    def __len__(self) -> int:
        """Requests armed now."""
        return sum(map(len, self._buckets.values()))
