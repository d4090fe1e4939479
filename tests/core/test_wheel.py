"""The deadline wheel on its own: buckets of ``resolution`` seconds, never early."""

from __future__ import annotations

import pytest

from maitred.core.access import ANONYMOUS
from maitred.core.routing.model import BaseSink, Request, Session
from maitred.core.routing.wheel import DeadlineWheel

SESSION = Session(1, "test", BaseSink(), ANONYMOUS, "s1", 0.0)


def _request(rid: int, deadline: float) -> Request:
    return Request(
        id=rid, service="svc", body=(), caller=SESSION, correlation=None,
        deadline=deadline, accepted=0.0,
    )  # fmt: skip


def _due(wheel: DeadlineWheel, now: float) -> list[int]:
    out: list[int] = []
    while (bucket := wheel.pop_due(now)) is not None:
        out.extend(sorted(bucket))
    return out


def test_a_request_is_due_at_its_deadline_rounded_up_never_before() -> None:
    wheel = DeadlineWheel(0.05)
    wheel.arm(_request(1, 10.01))
    assert len(wheel) == 1
    assert _due(wheel, 10.0) == []
    assert _due(wheel, 10.049) == []
    assert _due(wheel, 10.05) == [1]
    assert _due(wheel, 11.0) == []  # taken out once


def test_buckets_come_out_in_deadline_order() -> None:
    wheel = DeadlineWheel(1.0)
    for rid, deadline in [(1, 5.5), (2, 2.5), (3, 2.2), (4, 9.0)]:
        wheel.arm(_request(rid, deadline))
    buckets = []
    while (bucket := wheel.pop_due(6.0)) is not None:
        buckets.append(sorted(bucket))
    assert buckets == [[2, 3], [1]]
    assert len(wheel) == 1


def test_a_disarmed_request_never_comes_out_and_disarm_twice_is_harmless() -> None:
    wheel = DeadlineWheel(0.1)
    request = _request(7, 1.0)
    wheel.arm(request)
    assert request.bucket is not None
    DeadlineWheel.disarm(request)
    DeadlineWheel.disarm(request)
    assert request.bucket is None
    assert _due(wheel, 5.0) == []
    assert len(wheel) == 0


def test_the_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DeadlineWheel(0)
