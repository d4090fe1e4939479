"""The codec of the ZeroMQ publish/subscribe endpoints on bytes (docs/reference/mdp.md,
"Publish and subscribe"): subscription messages and strings, publications, the two frame layouts
of a delivery, and a hypothesis property (the parsers raise nothing but PubSubFormatError)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.core.errors import ProtocolError
from maitred.core.routing.patterns import is_pattern
from maitred.transports.mdp.config import MdpConfig
from maitred.transports.mdp.pubsub_codec import (
    PubSubFormatError,
    Subscription,
    decode_event,
    event_frames,
    parse_publication,
    parse_subscription,
    parse_subscription_message,
)

MAX = 256


def test_subscription_messages() -> None:
    assert parse_subscription_message(b"\x01news.") == (True, b"news.")
    assert parse_subscription_message(b"\x00news.") == (False, b"news.")
    assert parse_subscription_message(b"\x01") == (True, b"")
    for bad in (b"", b"\x02news", b"news."):
        with pytest.raises(PubSubFormatError):
            parse_subscription_message(bad)


@pytest.mark.parametrize(
    ("wire", "pattern", "wildcard"),
    [
        (b"", ">", False),  # ZeroMQ's "everything"
        (b"news.", "news.>", False),  # every topic under news.: ZeroMQ's prefix exactly
        (b"$sys.service.", "$sys.service.>", False),
        (b"news", "news", False),  # no dot at the end: the topic itself
        (b"news.today", "news.today", False),
        (b"news.*", "news.*", True),
        (b"news.>", "news.>", True),
        (b"$sys.>", "$sys.>", True),
        (b">", ">", True),
        (b"a.*.c", "a.*.c", True),
        (b"caf\xc3\xa9.", "caf\u00e9.>", False),
    ],
)
def test_subscription_strings(wire: bytes, pattern: str, wildcard: bool) -> None:
    assert parse_subscription(wire, MAX) == Subscription(wire, pattern, wildcard)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"news..", "bad prefix"),
        (b".news", "bad prefix"),
        (b"news.>.x", "bad pattern"),
        (b"news.*.", "bad pattern"),
        (b"\xff.", "not UTF-8"),
        (b"x" * (MAX + 1), "longer than"),
    ],
)
def test_bad_subscription_strings(wire: bytes, reason: str) -> None:
    with pytest.raises(PubSubFormatError, match=reason) as info:
        parse_subscription(wire, MAX)
    assert isinstance(info.value, ProtocolError)


def test_publications() -> None:
    assert parse_publication([b"news.today", b"a", b"b"], 4, 10, MAX) == (
        "news.today",
        [b"a", b"b"],
    )
    assert parse_publication([b"news"], 4, 10, MAX) == ("news", [])


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([], "no frames"),
        ([b"", b"x"], "empty topic"),
        ([b"t", b"1", b"2", b"3"], "too many frames"),
        ([b"t", b"x" * 11], "oversized"),
        ([b"\xfftopic", b"x"], "topic not UTF-8"),
        ([b"t" * (MAX + 1)], "longer than"),
    ],
)
def test_bad_publications(frames: list[bytes], reason: str) -> None:
    with pytest.raises(PubSubFormatError, match=reason):
        parse_publication(frames, 2, 10, MAX)


def test_event_layouts() -> None:
    # a prefix subscriber: [topic, body...]; a pattern's: [pattern, topic, body...]
    assert event_frames(None, b"news.today", (b"x", b"y")) == [b"news.today", b"x", b"y"]
    assert event_frames(b"news.*", b"news.today", [b"x"]) == [b"news.*", b"news.today", b"x"]
    assert decode_event([b"news.today", b"x"]) == (None, "news.today", [b"x"])
    assert decode_event([b"news.*", b"news.today", b"x"]) == ("news.*", "news.today", [b"x"])
    assert decode_event([b"$sys.>", b"$sys.worker.ready", b"{}"]) == (
        "$sys.>",
        "$sys.worker.ready",
        [b"{}"],
    )
    for bad in ([], [b"news.*"], [b"\xff"], [b"news.*", b"\xff"]):
        with pytest.raises(PubSubFormatError):
            decode_event(bad)


@given(st.binary(max_size=40))
def test_subscriptions_never_raise_anything_else(wire: bytes) -> None:
    try:
        sub = parse_subscription(wire, 32)
    except PubSubFormatError:
        return
    assert sub.wire == wire
    text = wire.decode()
    if sub.wildcard:  # delivered with itself first: a string no topic can be
        assert sub.pattern == text and is_pattern(text)
    else:  # a prefix: whole segments, or the topic itself
        assert sub.pattern in (text + ">", text) or (text == "" and sub.pattern == ">")
        assert not is_pattern(text)


@given(st.lists(st.binary(max_size=8), max_size=5))
def test_publications_never_raise_anything_else(frames: list[bytes]) -> None:
    try:
        topic, body = parse_publication(frames, 3, 16, 32)
    except PubSubFormatError:
        return
    assert topic.encode() == frames[0] and body == frames[1:]


def test_config_problems() -> None:
    assert MdpConfig().problems() == []
    assert MdpConfig(pub_endpoints=["tcp://127.0.0.1:5556"], publish_endpoints=[]).problems() == []
    problems = MdpConfig(
        pub_endpoints=["127.0.0.1:5556"], publish_endpoints=["localhost"], pub_sndhwm=0
    ).problems()
    assert problems == [
        "pub_endpoints: '127.0.0.1:5556' is not a ZeroMQ endpoint (tcp://, ipc://, inproc://)",
        "publish_endpoints: 'localhost' is not a ZeroMQ endpoint (tcp://, ipc://, inproc://)",
        "pub_sndhwm must be >= 1",
    ]
