"""CURVE keys and the ZAP protocol (ZeroMQ RFC 27), sans I/O: Z85, the ``[[transports.mdp.keys]]``
table, a ZAP request parsed from its frames, the decision for it and the reply's frames.

The handler that owns the socket is :mod:`.curve`; everything it decides is decided here, so a
property test can feed any frames to :func:`parse_request` and :func:`answer` without a socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec

from maitred.core.access import Identity
from maitred.core.errors import ProtocolError

__all__ = [
    "CurveKey",
    "KeyTable",
    "ZapError",
    "ZapRequest",
    "answer",
    "key_problems",
    "parse_request",
    "reply_frames",
    "respond",
    "z85_decode",
    "z85_encode",
]

#: the only ZAP version there is
VERSION = b"1.0"

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE = {c: i for i, c in enumerate(_Z85)}


def z85_encode(raw: bytes) -> str:
    """Z85 of ``raw`` (its length a multiple of 4)."""
    if len(raw) % 4:
        raise ValueError("Z85 encodes a multiple of 4 bytes")
    out: list[str] = []
    for i in range(0, len(raw), 4):
        value = int.from_bytes(raw[i : i + 4], "big")
        chunk = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            chunk.append(_Z85[digit])
        out.extend(reversed(chunk))
    return "".join(out)


def z85_decode(text: str) -> bytes:
    """The bytes of Z85 ``text``; ValueError when it is not Z85 (length a multiple of 5, every
    character of the alphabet, every group below 2**32)."""
    if len(text) % 5:
        raise ValueError(f"{len(text)} characters: Z85 comes in groups of 5")
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for c in text[i : i + 5]:
            digit = _Z85_VALUE.get(c)
            if digit is None:
                raise ValueError(f"{c!r} is not a Z85 character")
            value = value * 85 + digit
        if value >= 1 << 32:
            raise ValueError(f"{text[i : i + 5]!r} is not a Z85 group (too large)")
        out += value.to_bytes(4, "big")
    return bytes(out)


def public_key_problem(text: str) -> str | None:
    """Why ``text`` is not a CURVE public key in Z85 (40 characters), or None."""
    if len(text) != 40:
        return f"expected 40 Z85 characters (maitred keygen prints one), got {len(text)}"
    try:
        z85_decode(text)
    except ValueError as exc:
        return f"not Z85: {exc}"
    return None


class CurveKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One accepted CURVE client key: its public key (Z85, 40 characters, as ``maitred keygen``
    prints it), who it is, and the roles the ``[access]`` rules see."""

    #: the peer's CURVE public key in Z85 (40 characters)
    public_key: str
    #: the identity name the ``[access]`` rules see for this key
    identity: str
    #: its roles, for ``role:NAME`` in ``[access]`` rules
    roles: list[str] = msgspec.field(default_factory=list)


def key_problems(keys: Iterable[CurveKey], where: str = "keys") -> list[str]:
    """What is wrong with a key table, one sentence each (empty when it is usable)."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        problem = public_key_problem(key.public_key)
        if problem:
            out.append(f"{where}[{i}].public_key: {problem}")
        elif key.public_key in seen:
            out.append(f"{where}[{i}].public_key: the same key as {where}[{seen[key.public_key]}]")
        else:
            seen[key.public_key] = i
        if not key.identity:
            out.append(f"{where}[{i}].identity: empty")
    return out


class KeyTable:
    """Public keys (32 raw bytes) to identities, and identity names back to identities (the
    ZAP reply's User-Id names the identity; each message carries it)."""

    def __init__(self, keys: Iterable[CurveKey] = ()) -> None:
        self.by_key: dict[bytes, Identity] = {}
        self.by_name: dict[str, Identity] = {}
        for k in keys:
            identity = Identity(k.identity, frozenset(k.roles))
            self.by_key[z85_decode(k.public_key)] = identity
            # two keys of one identity name: the roles of the first are the ones a message
            # names (their User-Id is the same); key_problems does not forbid sharing a name
            self.by_name.setdefault(k.identity, identity)

    def __len__(self) -> int:
        return len(self.by_key)


class ZapRequest(NamedTuple):
    """A ZAP request (RFC 27) as the handler reads it."""

    request_id: bytes
    domain: bytes
    address: bytes
    routing_id: bytes
    mechanism: bytes
    credentials: tuple[bytes, ...]


class ZapError(ProtocolError, ValueError):
    """A ZAP request that is not one. ``request_id`` is set when the request got far enough to
    be answered (then with status 500); None: drop it (nothing to answer with)."""

    def __init__(self, reason: str, request_id: bytes | None = None) -> None:
        super().__init__(reason)
        self.request_id = request_id


#: frames before the credentials: version, request id, domain, address, routing id, mechanism
_HEAD = 6
#: the credentials of each mechanism: NULL none, PLAIN user and password, CURVE the public key
_CREDENTIALS = {b"NULL": 0, b"PLAIN": 2, b"CURVE": 1}


def parse_request(frames: Sequence[bytes]) -> ZapRequest:
    """The ZAP request in ``frames`` (after the envelope: the version first); ZapError when
    it is not one (wrong version, wrong frame count, an unknown mechanism, a CURVE key that is
    not 32 bytes)."""
    if len(frames) < _HEAD:
        rid = frames[1] if len(frames) > 1 and frames[0] == VERSION else None
        raise ZapError(f"{len(frames)} frames, a ZAP request has at least {_HEAD}", rid)
    version, request_id, domain, address, routing_id, mechanism = frames[:_HEAD]
    if version != VERSION:
        raise ZapError(f"ZAP version {version[:16]!r}, expected {VERSION!r}", request_id)
    want = _CREDENTIALS.get(mechanism)
    if want is None:
        raise ZapError(f"unknown mechanism {mechanism[:16]!r}", request_id)
    credentials = tuple(frames[_HEAD:])
    if len(credentials) != want:
        raise ZapError(
            f"{mechanism.decode()} with {len(credentials)} credential frames, expected {want}",
            request_id,
        )
    if mechanism == b"CURVE" and len(credentials[0]) != 32:
        raise ZapError(f"CURVE key of {len(credentials[0])} bytes, expected 32", request_id)
    return ZapRequest(request_id, domain, address, routing_id, mechanism, credentials)


class Verdict(NamedTuple):
    """What to answer: the status code (200 or 400), its text and the User-Id (the identity's
    name; empty when refused)."""

    status: bytes
    text: bytes
    user_id: bytes


def answer(request: ZapRequest, keys: Mapping[bytes, Identity]) -> Verdict:
    """The verdict for a well-formed request: a CURVE key in ``keys`` is its identity's; any
    other key is refused (400). A NULL connection (an endpoint without CURVE on a socket with
    CURVE elsewhere) is accepted with an empty User-Id: the transport's own identity. PLAIN is
    never enabled here: refused."""
    if request.mechanism == b"CURVE":
        identity = keys.get(request.credentials[0])
        if identity is None:
            return Verdict(b"400", b"unknown CURVE key", b"")
        return Verdict(b"200", b"OK", identity.name.encode())
    if request.mechanism == b"NULL":
        return Verdict(b"200", b"OK", b"")
    return Verdict(b"400", b"mechanism not accepted", b"")


def reply_frames(request_id: bytes, verdict: Verdict) -> list[bytes]:
    """The ZAP reply (after the envelope): version, request id, status, text, User-Id, and empty
    metadata."""
    return [VERSION, request_id, verdict.status, verdict.text, verdict.user_id, b""]


class Outcome(NamedTuple):
    """What the handler does with one message read from its ROUTER socket: ``reply`` to send
    (envelope included; None: drop it), the request and verdict when it was well formed, else
    ``malformed`` says why."""

    reply: list[bytes] | None
    request: ZapRequest | None = None
    verdict: Verdict | None = None
    malformed: str = ""


def respond(frames: Sequence[bytes], keys: Mapping[bytes, Identity]) -> Outcome:
    """The handler's answer to one message as a ROUTER socket reads it: the requester's routing
    id and an empty delimiter (libzmq's ZAP client is a REQ socket), then the request. Any
    frames at all give an Outcome, never an exception: a malformed request that carries a
    request id is answered 500 (libzmq then fails that handshake), one without is dropped."""
    if len(frames) < 2 or frames[1] != b"":
        return Outcome(None, malformed="no REQ envelope")
    envelope, body = list(frames[:2]), frames[2:]
    try:
        request = parse_request(body)
    except ZapError as exc:
        if exc.request_id is None:
            return Outcome(None, malformed=exc.reason)
        verdict = Verdict(b"500", exc.reason.encode(), b"")
        return Outcome(envelope + reply_frames(exc.request_id, verdict), None, verdict, exc.reason)
    verdict = answer(request, keys)
    return Outcome(envelope + reply_frames(request.request_id, verdict), request, verdict)
