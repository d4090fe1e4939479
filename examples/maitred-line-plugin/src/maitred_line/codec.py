"""The line protocol as bytes: parse one request line, format answer lines. No I/O here.

One command per line (``\\n``, an optional ``\\r`` before it is ignored; blank lines are
ignored). Commands are case-insensitive::

    CALL <service> <text>    -> OK <reply frames joined by one space> | ERR <code> <reason>
    PUB <topic> <text>       -> OK <number of subscribers reached>    | ERR <code> <reason>
    SUB <pattern>            -> OK                                     | ERR <code> <reason>
    UNSUB <pattern>          -> OK                                     | ERR <code> <reason>
    SERVICES                 -> OK <mmi.services JSON>
    HELP                     -> OK <the command list>
    QUIT                     -> OK bye, then the broker closes the connection

Deliveries for a subscription arrive at any time as ``EVENT <topic> <text>``. ``<text>`` is
everything after the single space that follows the name, byte for byte (it becomes a one-frame
body; it may be empty). In the answers, a CR or LF inside a frame is written as the two
characters ``\\r`` / ``\\n`` so that every answer stays on one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

#: every command the protocol knows
COMMANDS = frozenset({"CALL", "PUB", "SUB", "UNSUB", "SERVICES", "HELP", "QUIT"})
_NAMED = frozenset({"CALL", "PUB", "SUB", "UNSUB"})
_WITH_TEXT = frozenset({"CALL", "PUB"})

HELP = (
    b"OK commands: CALL <service> <text> | PUB <topic> <text> | SUB <pattern> | "
    b"UNSUB <pattern> | SERVICES | HELP | QUIT\n"
)
BYE = b"OK bye\n"


class Command(NamedTuple):
    """One parsed request line."""

    verb: str
    #: the service, topic or pattern ("" for commands without one)
    name: str = ""
    #: the rest of the line after the name (CALL and PUB), byte for byte
    text: bytes = b""


class LineError(Exception):
    """A line that is not a valid command; answered with ``ERR <code> <reason>``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse(line: bytes) -> Command | None:
    """Parse one line (without its ``\\n``). None for a blank line; raises :class:`LineError`."""
    if line.endswith(b"\r"):
        line = line[:-1]
    line = line.lstrip(b" \t")
    if not line.strip(b" \t"):
        return None
    verb_raw, _, rest = line.partition(b" ")
    verb = verb_raw.rstrip(b"\t").decode("ascii", "replace").upper()
    if verb not in COMMANDS:
        shown = verb[:32] + ("..." if len(verb) > 32 else "")
        raise LineError(400, f"unknown command {shown!r} (try HELP)")
    if verb not in _NAMED:
        return Command(verb)
    rest = rest.lstrip(b" ")
    if verb in _WITH_TEXT:
        name_raw, _, text = rest.partition(b" ")
    else:
        name_raw, text = rest.rstrip(b" \t"), b""
        if b" " in name_raw:
            raise LineError(400, f"usage: {verb} <pattern> (one pattern, no spaces)")
    if not name_raw:
        usage = (
            f"{verb} <service> <text>"
            if verb == "CALL"
            else (f"{verb} <topic> <text>" if verb == "PUB" else f"{verb} <pattern>")
        )
        raise LineError(400, f"usage: {usage}")
    try:
        name = name_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LineError(400, "names must be UTF-8 text") from None
    return Command(verb, name, text)


def _escape(text: bytes) -> bytes:
    if b"\n" in text or b"\r" in text:
        return text.replace(b"\r", b"\\r").replace(b"\n", b"\\n")
    return text


def ok(frames: Sequence[bytes] = ()) -> bytes:
    """``OK <frames joined by one space>`` (just ``OK`` when that is empty)."""
    text = _escape(b" ".join(frames))
    return b"OK " + text + b"\n" if text else b"OK\n"


def err(code: int, reason: str) -> bytes:
    """``ERR <code> <reason>``."""
    text = _escape(reason.encode("utf-8", "replace"))
    return b"ERR %d %s\n" % (code, text)


def event(topic: str, frames: Sequence[bytes]) -> bytes:
    """``EVENT <topic> <frames joined by one space>``."""
    text = _escape(b" ".join(frames))
    head = b"EVENT " + topic.encode("utf-8", "replace")
    return head + b" " + text + b"\n" if text else head + b"\n"


def call(service: str, frames: Sequence[bytes]) -> bytes:
    """The ``CALL`` line a client sends (raises ValueError if it cannot be one line)."""
    if not service or any(c in service for c in " \t\r\n"):
        raise ValueError(f"not a service name for the line protocol: {service!r}")
    text = b" ".join(frames)
    if b"\n" in text or b"\r" in text:
        raise ValueError("the line protocol cannot carry CR or LF in a request")
    return b"CALL " + service.encode("utf-8") + b" " + text + b"\n"


class Answer(NamedTuple):
    """An answer line as a client reads it."""

    kind: str  # "OK", "ERR" or "EVENT"
    code: int  # ERR: the code; otherwise 0
    name: str  # EVENT: the topic; otherwise ""
    text: bytes  # OK: the text; ERR: the reason; EVENT: the text


def parse_answer(line: bytes) -> Answer:
    """Parse a line the broker sent (raises ValueError for anything else)."""
    line = line.rstrip(b"\r\n")
    head, _, rest = line.partition(b" ")
    if head == b"OK":
        return Answer("OK", 0, "", rest)
    if head == b"ERR":
        code_raw, _, reason = rest.partition(b" ")
        if code_raw.isdigit():
            return Answer("ERR", int(code_raw), "", reason)
    elif head == b"EVENT":
        topic, _, text = rest.partition(b" ")
        return Answer("EVENT", 0, topic.decode("utf-8", "replace"), text)
    raise ValueError(f"not a line-protocol answer: {line[:80]!r}")
