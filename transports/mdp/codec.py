"""Majordomo (MDP/0.1, RFC 18 MDP/0.2 and the majortomo dialect) as pure bytes ⇄ tuples.

No I/O here: the adapter owns the socket and calls these functions. Layouts start *after* the
routing-id frame that a ROUTER socket prepends (see docs/reference/mdp.md).

A peer's **dialect** is a small int of flags, detected from its first valid message and used to
answer it in kind:

- ``ENVELOPE``: every message starts with an empty frame (MDP/0.1, majortomo, REQ sockets);
- ``V2``: MDP/0.2 headers (``MDPC02``/``MDPW02``) rather than 0.1;
- ``SHORT``: majortomo client style: REQUEST byte 0x02, replies 0x03/0x04 with no service frame.

The parser returns a plain tuple ``(command, dialect, name, body)`` for speed (this is on the hot
path); malformed input raises :class:`MdpFormatError` with a short reason, never anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from maitred.core.errors import ErrorCode, ProtocolError

# -- protocol constants ------------------------------------------------------------------------

C01: Final = b"MDPC01"
W01: Final = b"MDPW01"
C02: Final = b"MDPC02"
W02: Final = b"MDPW02"
EMPTY: Final = b""

# dialect flags
ENVELOPE: Final = 1
V2: Final = 2
SHORT: Final = 4

#: the dialects maitred speaks, by name (for logs, MMI and docs)
DIALECT_NAMES: Final[dict[int, str]] = {
    ENVELOPE: "MDP/0.1",
    V2: "MDP/0.2 (RFC 18)",
    V2 | ENVELOPE: "MDP/0.2 (RFC 18, enveloped)",
    V2 | ENVELOPE | SHORT: "MDP/0.2 (majortomo)",
    V2 | SHORT: "MDP/0.2 (majortomo, no envelope)",
}

# parsed commands (broker side)
CLIENT_REQUEST: Final = 1
READY: Final = 2
REPLY_PARTIAL: Final = 3
REPLY_FINAL: Final = 4
HEARTBEAT: Final = 5
DISCONNECT: Final = 6

COMMAND_NAMES: Final[dict[int, str]] = {
    CLIENT_REQUEST: "REQUEST",
    READY: "READY",
    REPLY_PARTIAL: "PARTIAL",
    REPLY_FINAL: "FINAL",
    HEARTBEAT: "HEARTBEAT",
    DISCONNECT: "DISCONNECT",
}

# worker command bytes
_W01_CMDS: Final[dict[bytes, int]] = {
    b"\x01": READY,
    b"\x03": REPLY_FINAL,
    b"\x04": HEARTBEAT,
    b"\x05": DISCONNECT,
}
_W02_CMDS: Final[dict[bytes, int]] = {
    b"\x01": READY,
    b"\x03": REPLY_PARTIAL,
    b"\x04": REPLY_FINAL,
    b"\x05": HEARTBEAT,
    b"\x06": DISCONNECT,
}

#: (command, dialect, name, body): name is the service for REQUEST/READY, the client-address
#: token for PARTIAL/FINAL, b"" otherwise.
Parsed = tuple[int, int, bytes, list[bytes]]

_NO_BODY: Final[list[bytes]] = []


class MdpFormatError(ProtocolError, ValueError):
    """A message that is not valid MDP; ``reason`` says why (for the debug log and counters).

    Still a :class:`ValueError`, as it was before it joined the :class:`MaitredError` tree."""


def parse(frames: list[bytes], start: int = 0) -> Parsed:
    """Parse one message received on the broker's ROUTER socket, from ``frames[start]`` on
    (``start=1`` skips the routing id without copying the list)."""
    n = len(frames)
    if n <= start:
        raise MdpFormatError("empty message")
    dialect = 0
    i = start
    if not frames[i]:
        dialect = ENVELOPE
        i += 1
        if n <= i:
            raise MdpFormatError("only an empty frame")
    header = frames[i]
    if header == C02:
        if n < i + 3:
            raise MdpFormatError("MDPC02 message too short")
        cmd = frames[i + 1]
        if cmd == b"\x01":
            return (CLIENT_REQUEST, dialect | V2, frames[i + 2], frames[i + 3 :])
        if cmd == b"\x02":
            return (CLIENT_REQUEST, dialect | V2 | SHORT, frames[i + 2], frames[i + 3 :])
        raise MdpFormatError("unknown MDPC02 command")
    if header == W02:
        return _parse_worker(frames, n, i + 1, dialect | V2, _W02_CMDS)
    if header == C01:
        if not dialect:
            raise MdpFormatError("MDPC01 without the leading empty frame")
        if n < i + 2:
            raise MdpFormatError("MDPC01 message without a service frame")
        return (CLIENT_REQUEST, ENVELOPE, frames[i + 1], frames[i + 2 :])
    if header == W01:
        if not dialect:
            raise MdpFormatError("MDPW01 without the leading empty frame")
        return _parse_worker(frames, n, i + 1, ENVELOPE, _W01_CMDS)
    raise MdpFormatError("unknown protocol header")


def _parse_worker(
    frames: list[bytes], n: int, i: int, dialect: int, table: dict[bytes, int]
) -> Parsed:
    if n <= i:
        raise MdpFormatError("worker message without a command")
    command = table.get(frames[i])
    if command is None:
        raise MdpFormatError("unknown worker command")
    if command in (REPLY_FINAL, REPLY_PARTIAL):
        # client-address, "", body...
        if n < i + 3:
            raise MdpFormatError("reply without client address and empty frame")
        if frames[i + 2]:
            raise MdpFormatError("reply: client address not followed by an empty frame")
        return (command, dialect, frames[i + 1], frames[i + 3 :])
    if command == READY:
        if n != i + 2:
            raise MdpFormatError("READY must carry exactly one service frame")
        if not frames[i + 1]:
            raise MdpFormatError("READY with an empty service name")
        return (READY, dialect, frames[i + 1], _NO_BODY)
    if n != i + 1:
        raise MdpFormatError("HEARTBEAT/DISCONNECT with extra frames")
    return (command, dialect, EMPTY, _NO_BODY)


# -- broker → peer -----------------------------------------------------------------------------
#
# One encoder per wire layout, for the broker and the Python peers alike. The layouts are the
# tables below (precomputed per dialect, so the broker's hot path is one lookup and one list);
# every encoder takes an optional ``route`` frame (the ROUTER routing id) to put first, so the
# broker sends exactly what the tested encoder returns.

#: every dialect :func:`parse` reports for a client
CLIENT_DIALECTS: Final = (ENVELOPE, V2, V2 | ENVELOPE, V2 | SHORT, V2 | ENVELOPE | SHORT)


def _client_reply_head(dialect: int, final: bool) -> tuple[bytes, ...] | None:
    if not dialect & V2:
        return (EMPTY, C01) if final else None  # MDP/0.1: exactly one (final) reply
    if dialect & SHORT:
        head: tuple[bytes, ...] = (C02, b"\x04" if final else b"\x03")
    else:
        head = (C02, b"\x03" if final else b"\x02")
    return (EMPTY, *head) if dialect & ENVELOPE else head


#: client dialect → (partial head, final head): the frames before the service frame (if any)
#: of a reply; ``None`` where the dialect cannot carry that reply (a partial to MDP/0.1)
CLIENT_REPLY_HEADS: Final[dict[int, tuple[tuple[bytes, ...] | None, tuple[bytes, ...] | None]]] = {
    d: (_client_reply_head(d, False), _client_reply_head(d, True)) for d in CLIENT_DIALECTS
}
#: the client dialects whose replies carry the service frame (all but majortomo's)
REPLY_HAS_SERVICE: Final = frozenset(d for d in CLIENT_DIALECTS if not (d & V2 and d & SHORT))
#: worker dialect → the frames before the client address of a REQUEST to it (``SHORT``, a
#: client-only notion, changes nothing here)
WORKER_REQUEST_HEADS: Final[dict[int, tuple[bytes, ...]]] = {
    d: ((EMPTY,) if d & ENVELOPE else ()) + (W02 if d & V2 else W01, b"\x02")
    for d in CLIENT_DIALECTS
}


def client_reply(
    dialect: int,
    final: bool,
    service: bytes,
    body: Sequence[bytes],
    route: bytes | None = None,
) -> list[bytes] | None:
    """Frames for a reply to a client in its dialect (after ``route`` when given); ``None``
    when the dialect cannot carry it.

    MDP/0.1 has exactly one reply per request, so its clients get only the final reply.
    """
    head = CLIENT_REPLY_HEADS[dialect][final]
    if head is None:
        return None
    if dialect in REPLY_HAS_SERVICE:
        if route is None:
            return [*head, service, *body]
        return [route, *head, service, *body]
    if route is None:
        return [*head, *body]
    return [route, *head, *body]


def worker_request(
    dialect: int, token: bytes, body: Sequence[bytes], route: bytes | None = None
) -> list[bytes]:
    """Frames for a REQUEST to a worker (after ``route`` when given); ``token`` is echoed back
    by the worker in its reply."""
    if route is None:
        return [*WORKER_REQUEST_HEADS[dialect], token, EMPTY, *body]
    return [route, *WORKER_REQUEST_HEADS[dialect], token, EMPTY, *body]


# -- errors: the MDP transport's one table from error code to wire form -------------------------
#
# Majordomo has no error message: an error goes to the client as an ordinary FINAL whose body is
# two frames, the code in ASCII digits and the reason in UTF-8 (docs/reference/errors.md).

#: error code → the first frame of its error reply
ERROR_FRAMES: Final[dict[ErrorCode, bytes]] = {code: b"%d" % code for code in ErrorCode}


def error_body(code: ErrorCode, reason: str) -> list[bytes]:
    """The body of the FINAL that carries an error: ``[b"503", b"no worker for echo"]``."""
    return [ERROR_FRAMES[code], reason.encode("utf-8", "replace")]


def parse_error_body(body: Sequence[bytes]) -> tuple[ErrorCode, str] | None:
    """``(code, reason)`` when ``body`` has the shape of :func:`error_body` (two frames, the first
    three ASCII digits starting with 4 or 5; a code not in :class:`ErrorCode` reads as
    ``INTERNAL``), else ``None``. A worker's own reply of that shape reads as an error too."""
    if len(body) != 2:
        return None
    first = body[0]
    if len(first) != 3 or not first.isdigit() or first[:1] not in (b"4", b"5"):
        return None
    return ErrorCode.of(int(first)), body[1].decode("utf-8", "replace")


def worker_heartbeat(dialect: int) -> list[bytes]:
    """Frames for a HEARTBEAT to a worker."""
    if dialect & V2:
        return [EMPTY, W02, b"\x05"] if dialect & ENVELOPE else [W02, b"\x05"]
    return [EMPTY, W01, b"\x04"]


def worker_disconnect(dialect: int) -> list[bytes]:
    """Frames for a DISCONNECT to a worker."""
    if dialect & V2:
        return [EMPTY, W02, b"\x06"] if dialect & ENVELOPE else [W02, b"\x06"]
    return [EMPTY, W01, b"\x05"]


# -- peer side (used by the Python client and worker) -------------------------------------------


def client_request(dialect: int, service: bytes, body: list[bytes]) -> list[bytes]:
    """Frames a DEALER client sends for a REQUEST.

    MDP/0.1 always starts with the empty frame; a REQ socket adds that frame itself, so a REQ
    client sends ``frames[1:]``.
    """
    if not dialect & V2:
        return [EMPTY, C01, service, *body]
    head = [C02, b"\x02" if dialect & SHORT else b"\x01", service]
    if dialect & ENVELOPE:
        return [EMPTY, *head, *body]
    return [*head, *body]


def parse_client_reply(dialect: int, frames: list[bytes]) -> tuple[bool, bytes | None, list[bytes]]:
    """Parse a reply received by a client: ``(final, service or None, body)``.

    Raises :class:`MdpFormatError` when the frames are not a reply in that dialect.
    """
    i = 0
    if dialect & ENVELOPE:
        if not frames or frames[0]:
            raise MdpFormatError("reply without the leading empty frame")
        i = 1
    if not dialect & V2:
        if len(frames) < i + 2 or frames[i] != C01:
            raise MdpFormatError("not an MDPC01 reply")
        return (True, frames[i + 1], frames[i + 2 :])
    if len(frames) < i + 2 or frames[i] != C02:
        raise MdpFormatError("not an MDPC02 reply")
    cmd = frames[i + 1]
    if dialect & SHORT:
        if cmd not in (b"\x03", b"\x04"):
            raise MdpFormatError("unknown majortomo reply command")
        return (cmd == b"\x04", None, frames[i + 2 :])
    if cmd not in (b"\x02", b"\x03") or len(frames) < i + 3:
        raise MdpFormatError("unknown RFC 18 reply command")
    return (cmd == b"\x03", frames[i + 2], frames[i + 3 :])


def worker_ready(dialect: int, service: bytes) -> list[bytes]:
    """Frames a worker sends to announce itself for ``service``."""
    if dialect & V2:
        return [EMPTY, W02, b"\x01", service] if dialect & ENVELOPE else [W02, b"\x01", service]
    return [EMPTY, W01, b"\x01", service]


def worker_reply(dialect: int, token: bytes, body: list[bytes], final: bool = True) -> list[bytes]:
    """Frames a worker sends for a reply (MDP/0.1 REPLY, or 0.2 PARTIAL/FINAL)."""
    if dialect & V2:
        cmd = b"\x04" if final else b"\x03"
        head = [W02, cmd, token, EMPTY]
        return [EMPTY, *head, *body] if dialect & ENVELOPE else [*head, *body]
    if not final:
        raise ValueError("MDP/0.1 workers cannot send partial replies")
    return [EMPTY, W01, b"\x03", token, EMPTY, *body]


def worker_heartbeat_from_worker(dialect: int) -> list[bytes]:
    """Frames a worker sends for HEARTBEAT (the same bytes the broker sends)."""
    return worker_heartbeat(dialect)


def parse_worker_inbound(dialect: int, frames: list[bytes]) -> tuple[int, bytes, list[bytes]]:
    """Parse what a worker receives from the broker: ``(command, token, body)``.

    ``command`` is :data:`CLIENT_REQUEST` for a REQUEST (token = client address), or
    :data:`HEARTBEAT` / :data:`DISCONNECT`. The frames must be in the worker's own ``dialect``:
    its header version, and the leading empty frame exactly when ``ENVELOPE`` is set (always for
    MDP/0.1), as the broker answers each worker in kind.
    """
    if dialect & V2:
        header = W02
        table = _W02_INBOUND
        i = 1 if dialect & ENVELOPE else 0
    else:
        header = W01
        table = _W01_INBOUND
        i = 1
    if len(frames) < i + 2:
        raise MdpFormatError("worker message too short")
    if i and frames[0]:
        raise MdpFormatError("worker message without the leading empty frame")
    if frames[i] != header:
        raise MdpFormatError("unknown worker header")
    command = table.get(frames[i + 1])
    if command is None:
        raise MdpFormatError("unknown command to worker")
    if command == CLIENT_REQUEST:
        if len(frames) < i + 4 or frames[i + 3]:
            raise MdpFormatError("REQUEST without client address and empty frame")
        return (CLIENT_REQUEST, frames[i + 2], frames[i + 4 :])
    if len(frames) != i + 2:
        raise MdpFormatError("HEARTBEAT/DISCONNECT with extra frames")
    return (command, EMPTY, _NO_BODY)


_W01_INBOUND: Final[dict[bytes, int]] = {
    b"\x02": CLIENT_REQUEST,
    b"\x04": HEARTBEAT,
    b"\x05": DISCONNECT,
}
_W02_INBOUND: Final[dict[bytes, int]] = {
    b"\x02": CLIENT_REQUEST,
    b"\x05": HEARTBEAT,
    b"\x06": DISCONNECT,
}
