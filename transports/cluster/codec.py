"""The cluster's wire: NATS subjects and the msgpack messages nodes send each other (pure: no
I/O, unit-tested on bytes).

Subjects, under ``PREFIX`` (``[cluster] subject_prefix``)::

    PREFIX.state.NODE     a node's announcement (its services, epoch, address), every second
    PREFIX.hello.NODE     answered by the node called NODE: "this name is taken"
    PREFIX.req.NODE       requests forwarded to NODE
    PREFIX.rep.NODE       replies (partial, final, error) to requests NODE forwarded
    PREFIX.cancel.NODE    the callers of requests forwarded to NODE gave up on them
    PREFIX.pub.TOPIC      publications, TOPIC encoded segment by segment (:func:`topic_subject`)

Every message body is a msgpack array (msgspec ``array_like`` Structs): service names travel as
bytes, so MDP names that are not UTF-8 cross nodes intact; topics travel in the message too, so
the subject only routes.
"""

from __future__ import annotations

import base64
import re
from enum import IntEnum

import msgspec

#: a subject segment that needs no encoding (NATS tokens may not hold whitespace, ``.``, and
#: ``*``/``>`` are wildcards); ``~`` starts an encoded segment, so it is not in the set
_SAFE = re.compile(r"[A-Za-z0-9_\-$:@+=!#/%&]+")
#: a node name: one subject segment of safe characters
NODE_NAME = re.compile(r"[A-Za-z0-9_\-:@+=]{1,64}")


def encode_segment(segment: str) -> str:
    """One topic segment as a NATS token: itself when it is plain, else ``~`` + base32 of its
    UTF-8 bytes (lower case, no padding). Injective, so a pattern's subject matches exactly
    the subjects of the topics the pattern matches."""
    if _SAFE.fullmatch(segment):
        return segment
    raw = segment.encode("utf-8", "surrogateescape")
    return "~" + base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def topic_subject(prefix: str, topic: str) -> str:
    """The NATS subject of a topic or a pattern (``*`` and a final ``>`` stay wildcards)."""
    segments = topic.split(".")
    last = len(segments) - 1
    out = [
        s if s == "*" or (s == ">" and i == last) else encode_segment(s)
        for i, s in enumerate(segments)
    ]
    return f"{prefix}.pub." + ".".join(out)


def service_bytes(name: str) -> bytes:
    """A service name as bytes (MDP names that were not UTF-8 come back as they were)."""
    return name.encode("utf-8", "surrogateescape")


def service_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class ServiceState(msgspec.Struct, array_like=True, frozen=True):
    """One service as a node announces it: its local workers only."""

    name: bytes
    #: live local workers
    workers: int
    #: their credit, summed
    credit: int
    #: credit not in use now
    free: int
    #: requests waiting for a worker on that node
    queued: int


class Announcement(msgspec.Struct, array_like=True, frozen=True):
    """``PREFIX.state.NODE``: who a node is and what it serves."""

    node: str
    epoch: int
    seq: int
    #: where its transports listen (for people: ``mmi.nodes``, error messages)
    address: str
    services: list[ServiceState]
    #: requests in flight on its local workers plus those waiting
    load: int = 0
    #: it is stopping: drop it now rather than after three missed announcements
    leaving: bool = False


class Hello(msgspec.Struct, array_like=True, frozen=True):
    """The answer on ``PREFIX.hello.NODE``: the node that holds the name."""

    node: str
    epoch: int
    address: str


class Forward(msgspec.Struct, array_like=True, frozen=True):
    """A request forwarded to another node (``PREFIX.req.NODE``)."""

    #: the request's id on the caller's node (the reply token)
    token: int
    service: bytes
    #: seconds left until the caller's deadline; 0: none (the serving node's policy applies)
    timeout: float
    node: str
    epoch: int
    body: list[bytes]
    headers: dict[str, str] | None = None


class Kind(IntEnum):
    PARTIAL = 1
    FINAL = 2
    ERROR = 3


class Reply(msgspec.Struct, array_like=True, frozen=True):
    """A reply to a forwarded request (``PREFIX.rep.CALLER``): partial, final or error (``code``
    and the reason in ``body[0]``)."""

    token: int
    kind: int
    node: str
    epoch: int
    body: list[bytes]
    code: int = 0
    headers: dict[str, str] | None = None


class Cancel(msgspec.Struct, array_like=True, frozen=True):
    """``PREFIX.cancel.NODE``: the caller of the forwarded request ``token`` gave up on it
    (sent by the caller's node ``node``, ``epoch``)."""

    token: int
    node: str
    epoch: int


class Publication(msgspec.Struct, array_like=True, frozen=True):
    """A publication crossing nodes (``PREFIX.pub.TOPIC``); ``seq`` counts the node's
    publications, so a node subscribed with two patterns that both match takes it once."""

    node: str
    epoch: int
    seq: int
    topic: str
    body: list[bytes]
    headers: dict[str, str] | None = None


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode

decode_announcement = msgspec.msgpack.Decoder(Announcement).decode
decode_hello = msgspec.msgpack.Decoder(Hello).decode
decode_forward = msgspec.msgpack.Decoder(Forward).decode
decode_reply = msgspec.msgpack.Decoder(Reply).decode
decode_cancel = msgspec.msgpack.Decoder(Cancel).decode
decode_publication = msgspec.msgpack.Decoder(Publication).decode

#: what a malformed message raises (the fabric drops and counts it)
DecodeError = (msgspec.DecodeError, msgspec.ValidationError)
