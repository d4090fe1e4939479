"""The frames of maitred's ZeroMQ publish/subscribe endpoints (pure: bytes in, values out).

Subscriptions arrive on the broker's XPUB socket as libzmq subscription messages: one frame,
``\\x01`` (subscribe) or ``\\x00`` (unsubscribe) followed by the subscription string a SUB peer
gave. :func:`parse_subscription` turns that string into what the broker subscribes to:

- a string with a maitred wildcard segment (``*``, or ``>`` last: ``news.*``, ``news.>``,
  ``$sys.>``) is a *pattern*: each matching message is sent as ``[pattern, topic, body…]`` (the
  first frame is the subscription itself, so ZeroMQ's prefix filter lets it through);
- any other string is a ZeroMQ *prefix*, and matching messages are sent as ``[topic, body…]``.
  Prefixes are followed whole segments at a time: ``news.`` (ending in a dot) is every topic
  under ``news.`` (the core pattern ``news.>``), exactly ZeroMQ's meaning; ``news`` (no dot at
  the end) is the topic ``news`` itself, since the broker cannot follow a prefix into the middle
  of a name; the empty string is every topic (``>``).

Publications arrive on the XSUB socket as ``[topic, body…]`` (:func:`parse_publication`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from maitred.core.errors import ProtocolError
from maitred.core.routing.patterns import is_pattern, validate_pattern

SUBSCRIBE = 1
UNSUBSCRIBE = 0
#: what the broker's XSUB socket sends its publishers: "everything" (a subscription to b"")
SUBSCRIBE_ALL = b"\x01"


class PubSubFormatError(ProtocolError, ValueError):
    """Input a ZeroMQ peer sent that the broker drops (``reason`` is counted and logged)."""


@dataclass(frozen=True)
class Subscription:
    """A SUB peer's subscription string and what the broker makes of it."""

    #: the string as the peer gave it (the XPUB filter the broker applies for the peer)
    wire: bytes
    #: the pattern the broker subscribes to in the core
    pattern: str
    #: True: a maitred pattern (messages carry it first, then the topic); False: a prefix
    wildcard: bool


def parse_subscription_message(message: bytes) -> tuple[bool, bytes]:
    """An XPUB subscription message: (subscribe?, subscription string)."""
    if not message or message[0] not in (SUBSCRIBE, UNSUBSCRIBE):
        raise PubSubFormatError("not a subscription message")
    return message[0] == SUBSCRIBE, message[1:]


def parse_subscription(wire: bytes, max_name_length: int) -> Subscription:
    """What the broker subscribes to for the subscription string ``wire`` (see the module
    docstring); raises :class:`PubSubFormatError` for one it cannot follow."""
    if len(wire) > max_name_length:
        raise PubSubFormatError(f"subscription longer than {max_name_length} bytes")
    try:
        text = wire.decode("utf-8")
    except UnicodeDecodeError:
        raise PubSubFormatError("subscription not UTF-8") from None
    if not text:
        return Subscription(wire, ">", False)
    if is_pattern(text):
        problem = validate_pattern(text)
        if problem:
            raise PubSubFormatError(f"bad pattern: {problem}")
        return Subscription(wire, text, True)
    pattern = text + ">" if text.endswith(".") else text
    problem = validate_pattern(pattern)
    if problem:
        raise PubSubFormatError(f"bad prefix: {problem}")
    return Subscription(wire, pattern, False)


def parse_publication(
    frames: list[bytes], max_frames: int, max_size: int, max_name_length: int
) -> tuple[str, list[bytes]]:
    """``[topic, body…]`` from a ZeroMQ publisher: (topic, body). ``max_frames`` and
    ``max_size`` bound the body (frames, total bytes) as for MDP requests."""
    if not frames:
        raise PubSubFormatError("no frames")
    raw, body = frames[0], frames[1:]
    if not raw:
        raise PubSubFormatError("empty topic")
    if len(raw) > max_name_length:
        raise PubSubFormatError(f"topic longer than {max_name_length} bytes")
    if len(body) > max_frames:
        raise PubSubFormatError("too many frames")
    if sum(map(len, body)) > max_size:
        raise PubSubFormatError("oversized")
    try:
        topic = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PubSubFormatError("topic not UTF-8") from None
    return topic, body


def event_frames(wire: bytes | None, topic: bytes, body: Sequence[bytes]) -> list[bytes]:
    """The frames of one delivery: ``[topic, body…]`` for prefix subscribers (``wire`` None),
    ``[pattern, topic, body…]`` for the subscribers of the pattern ``wire``."""
    if wire is None:
        return [topic, *body]
    return [wire, topic, *body]


def decode_event(frames: list[bytes]) -> tuple[str | None, str, list[bytes]]:
    """What a subscriber received: (pattern or None, topic, body). A first frame with a
    wildcard segment is a pattern (a topic never has one: publishing to a pattern is refused),
    followed by the topic."""
    if not frames:
        raise PubSubFormatError("no frames")
    try:
        first = frames[0].decode("utf-8")
    except UnicodeDecodeError:
        raise PubSubFormatError("topic not UTF-8") from None
    if is_pattern(first):
        if len(frames) < 2:
            raise PubSubFormatError("pattern without a topic")
        try:
            topic = frames[1].decode("utf-8")
        except UnicodeDecodeError:
            raise PubSubFormatError("topic not UTF-8") from None
        return first, topic, frames[2:]
    return None, first, frames[1:]
