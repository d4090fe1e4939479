"""The layout of the JetStream store on its stream (pure: no I/O, no ``nats``): the subject
token of a queue name, the stream settings the store needs and how an existing stream differs,
the size limit of a message, and the msgpack form of a stored message. See
:mod:`maitred.core.store_jetstream` for the subjects.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from maitred.core.errors import BrokerError, ErrorCode, MaitredError
from maitred.core.store import StoredMessage

#: the default stream name (``[store] jetstream_stream``)
DEFAULT_STREAM = "MAITRED_DURABLE"
#: the NATS servers when ``[store] jetstream_nats`` is empty
DEFAULT_SERVERS = ("nats://127.0.0.1:4222",)
#: bytes a stored message carries beyond its payload (subject, headers), kept free below the
#: stream's or the server's message size limit
OVERHEAD = 512


class StreamMismatch(BrokerError, RuntimeError):
    """The stream exists with settings other than the configured ones."""


class JetStreamUnavailable(MaitredError):
    """JetStream did not acknowledge a write (down, no quorum, stream gone): 503."""

    code = ErrorCode.NO_WORKER


# -- pure parts --------------------------------------------------------------------------------


def subject_token(name: str) -> str:
    """``name`` as one subject token: base32 (RFC 4648, upper case, no padding) of its UTF-8
    bytes, behind ``Q`` so that the empty name is a token too. Reversible
    (:func:`token_name`) and free of ``.``, ``*``, ``>`` and white space."""
    return "Q" + base64.b32encode(name.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def token_name(token: str) -> str:
    """The queue name of a :func:`subject_token`."""
    if not token.startswith("Q"):
        raise ValueError(f"not a queue token: {token!r}")
    raw = token[1:]
    return base64.b32decode(raw + "=" * (-len(raw) % 8)).decode("utf-8", "surrogatepass")


def wanted_config(stream: str, replicas: int) -> dict[str, Any]:
    """The stream settings this store needs (as JetStream names them)."""
    return {
        "subjects": [f"{stream}.>"],
        "retention": "workqueue",
        "storage": "file",
        "num_replicas": replicas,
        "max_msgs_per_subject": 1,
        "discard": "old",
    }


def settings_diff(wanted: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """Each setting of ``found`` (an existing stream's config) that differs from ``wanted``,
    as ``"name: the stream has X, the config needs Y"``."""
    out = []
    for key, value in wanted.items():
        have = found.get(key)
        if isinstance(have, (list, tuple)):
            have = list(have)
        if have != value:
            out.append(f"{key}: the stream has {have!r}, maitred needs {value!r}")
    return out


def message_limit(stream_max: int | None, server_max: int | None) -> int:
    """The largest payload a stored message may have: the smaller of the stream's
    ``max_msg_size`` and the server's ``max_payload`` (unset or <= 0: no limit), less
    :data:`OVERHEAD`; 0 when neither limits."""
    limits = [x for x in (stream_max, server_max) if x is not None and x > 0]
    return max(min(limits) - OVERHEAD, 1) if limits else 0


@dataclass(frozen=True, slots=True)
class JetStreamSettings:
    servers: tuple[str, ...] = DEFAULT_SERVERS
    stream: str = DEFAULT_STREAM
    replicas: int = 1
    #: seconds to connect, and to wait for JetStream's acknowledgement of a batch
    timeout: float = 5.0


class _Envelope(msgspec.Struct, array_like=True):
    """A stored message on the stream (msgpack): its metadata and payload in one body, so that
    the only header is the dedup id (headers cost the client more per message)."""

    kind: bytes
    origin: str
    time: int
    deliveries: int
    payload: bytes
    reason: str = ""


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(_Envelope).decode


def packed(m: StoredMessage, reason: str = "") -> bytes:
    return _pack(_Envelope(m.kind, m.origin, m.time, m.deliveries, m.payload, reason))


def message(queue: str, n: int, data: bytes) -> tuple[StoredMessage, str]:
    e = _unpack(data)
    return StoredMessage(queue, n, e.payload, e.kind, e.origin, e.time, e.deliveries), e.reason


def settings_from(
    servers: Sequence[str], stream: str, replicas: int, timeout: float
) -> JetStreamSettings:
    """Settings from the config keys (no servers: the local default). A stream name JetStream
    cannot take is a :class:`BrokerError`."""
    stream = stream or DEFAULT_STREAM
    if set(stream) & set(".*>/\\ \t\r\n"):
        raise BrokerError(f"{stream!r}: a JetStream stream name has no . * > / \\ or spaces")
    return JetStreamSettings(tuple(servers) or DEFAULT_SERVERS, stream, replicas, timeout)
