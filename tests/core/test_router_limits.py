"""Memory bounds of the routing core: queue bytes per service, the broker's ``max_memory``,
the number of services, the length of names and the number of subscriptions overall."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import ServicePolicy
from tests.core.harness import Harness, sink_of

KIB = 1024
MIB = 1024 * 1024


def test_max_queue_bytes_refuses_the_request_past_it(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(policy=ServicePolicy(max_queue_bytes=MIB))
    c = h.session("c")
    body = (b"x" * (64 * KIB),)
    accepted = [h.call(c, "svc", body) for _ in range(32)]
    # 15 requests of 64 KiB + the name fit in 1 MiB; the 16th would pass it
    assert all(r is not None for r in accepted[:15])
    assert all(r is None for r in accepted[15:])
    assert set(sink_of(c).error_codes()) == {ErrorCode.QUEUE_FULL}
    service = h.router.services["svc"]
    assert service.queued == 15
    assert service.queued_bytes == 15 * (64 * KIB + 3) <= MIB
    assert h.router.held == service.queued_bytes
    assert "max_queue_bytes" in sink_of(c).errors[0][1].reason


def test_a_request_larger_than_max_queue_bytes_alone_is_refused(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(policy=ServicePolicy(max_queue_bytes=MIB, overflow="drop_oldest"))
    c = h.session("c")
    small = h.req(c, "svc", (b"a",))
    assert h.call(c, "svc", (b"x" * (2 * MIB),)) is None
    assert sink_of(c).code_for(small) is None  # nothing was dropped for a request that cannot fit


def test_drop_oldest_drops_until_the_new_request_fits(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(policy=ServicePolicy(max_queue_bytes=MIB, overflow="drop_oldest"))
    c = h.session("c")
    first = [h.req(c, "svc", (b"x" * (256 * KIB - 3),)) for _ in range(4)]  # exactly 1 MiB
    big = h.req(c, "svc", (b"y" * (512 * KIB - 3),))
    sink = sink_of(c)
    assert [sink.code_for(r) for r in first] == [ErrorCode.QUEUE_FULL] * 2 + [None] * 2
    assert sink.code_for(big) is None
    assert h.router.services["svc"].queued_bytes == MIB
    assert h.router.stats["requests.dropped_oldest"] == 2


def test_queue_bytes_follow_every_way_out_of_the_queue(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(policy=ServicePolicy(request_timeout=5.0))
    c = h.session("c")
    a = h.req(c, "svc", (b"a" * 100,))
    b = h.req(c, "svc", (b"b" * 200,))
    h.req(c, "svc", (b"c" * 300,))
    service = h.router.services["svc"]
    assert service.queued_bytes == 600 + 9
    h.router.cancel(b, h.now)
    assert service.queued_bytes == 303 + 103
    w = h.worker("svc")
    assert service.queued_bytes == 303  # a went to the worker
    h.close(w.session)  # a fails (no redeliver); c stays queued
    assert sink_of(c).code_for(a) == ErrorCode.WORKER_DIED
    h.advance(6.0)  # c expires
    assert "svc" not in h.router.services
    assert h.router.held == 0


def test_redelivered_requests_count_again(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(policy=ServicePolicy(redeliver=True))
    c = h.session("c")
    w = h.worker("svc")
    h.req(c, "svc", (b"z" * 1000,))
    assert h.router.held == 0
    h.close(w.session)
    assert h.router.services["svc"].queued_bytes == 1003 == h.router.held


def test_max_memory_refuses_new_requests_with_503_and_one_event_per_episode(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(max_memory=MIB)
    c = h.session("c")
    body = (b"x" * (100 * KIB),)
    for i in range(10):
        h.req(c, f"s{i % 2}", body)  # 10 x 100 KiB waiting in two services
    refused = [h.call(c, "s2", body) for _ in range(5)]
    assert refused == [None] * 5
    assert sink_of(c).error_codes() == [ErrorCode.NO_WORKER] * 5
    assert "overloaded" in sink_of(c).errors[0][1].reason
    assert h.event_topics().count("$sys.broker.overload") == 1
    assert h.router.overloaded
    # a worker takes requests: held falls under 90 % of the limit, the episode ends
    h.worker("s0", credit=5)
    assert not h.router.overloaded
    assert h.event_topics().count("$sys.broker.recovered") == 1
    assert h.call(c, "s2", body) is not None
    assert h.router.stats["requests.overload"] == 5


def test_transport_outboxes_count_toward_max_memory(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_memory=MIB)
    c = h.session("c")
    h.router.hold(MIB + 1)
    assert h.router.overloaded
    assert h.payloads("$sys.broker.overload") == [{"held": str(MIB + 1), "max_memory": str(MIB)}]
    assert h.call(c, "svc") is None
    h.router.release(MIB // 2)
    assert h.payloads("$sys.broker.recovered") == [
        {"held": str(MIB // 2 + 1), "max_memory": str(MIB)}
    ]
    assert h.call(c, "svc") is not None


def test_max_services_caps_requests_and_workers(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_services=3)
    c = h.session("c")
    for i in range(3):
        h.req(c, f"s{i}")
    assert h.call(c, "s3") is None
    assert sink_of(c).error_codes() == [ErrorCode.QUEUE_FULL]
    assert "s3" not in h.router.services
    with pytest.raises(MaitredError) as caught:
        h.worker("s4")
    assert caught.value.code == ErrorCode.QUEUE_FULL
    h.worker("s0")  # an existing service is still served
    assert h.call(c, "s1") is not None  # and still called
    assert len(h.router.services) == 3


def test_a_name_longer_than_max_name_length_is_refused(h: Harness) -> None:
    c = h.session("c")
    assert h.call(c, "n" * 255) is not None
    assert h.call(c, "n" * 256) is None
    assert h.call(c, "é" * 128) is None  # 256 bytes in UTF-8
    assert sink_of(c).error_codes() == [ErrorCode.BAD_REQUEST] * 2
    assert len(h.router.services) == 1
    assert h.router.stats["requests.name_too_long"] == 2
    with pytest.raises(MaitredError) as caught:
        h.router.subscribe(c, "t" * 300)
    assert caught.value.code == ErrorCode.BAD_REQUEST


def test_max_subscriptions_total(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_subscriptions_total=5)
    a, b = h.session("a"), h.session("b")
    for i in range(3):
        h.router.subscribe(a, f"t.{i}")
    h.router.subscribe(b, "t.0")
    h.router.subscribe(b, "t.1")
    with pytest.raises(MaitredError) as caught:
        h.router.subscribe(b, "t.2")
    assert caught.value.code == ErrorCode.QUEUE_FULL
    h.close(a)  # its three subscriptions end: room again
    for i in range(2, 5):
        h.router.subscribe(b, f"t.{i}")
    assert h.router.topics.size == 5
