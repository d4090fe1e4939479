"""The middleman text protocol (docs/reference/wire.md), pure: one text frame ⇄ one message.

Parsing follows Go ``net/textproto`` as middleman uses it: the first line is split at its first
space into command and target; then MIME headers (canonical names like Go's
``CanonicalMIMEHeaderKey``, values trimmed, continuation lines folded with one space); a
mandatory blank line; then a dot-encoded body up to the ``.`` line. Lines end with LF or CRLF.
Bytes after the terminator are ignored. Anything else raises :class:`ParseError` with a reason.

The body of a parsed message is the dot-decoded block *without its last line break*, and
:func:`encode` writes it back with CRLF line ends, dot-stuffed, followed by CRLF ``.`` CRLF, so a
body survives any number of hops unchanged (middleman adds one ``\\n`` per hop; maitred does
not). Round trip is exact for every string (a peer's CR LF line ends read as LF, by the
protocol's rules; a CR that is part of a body is written so that it is read back).

No I/O here: no asyncio, sockets or websockets (import-linter contract "codecs do no I/O").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Final

from maitred.core.errors import ErrorCode, ProtocolError
from maitred.core.routing.headers import HeaderPairs

__all__ = [
    "COMMANDS",
    "ERROR_TEXTS",
    "MmHeaders",
    "MmMessage",
    "ParseError",
    "canonical_key",
    "encode",
    "error_frame",
    "error_text",
    "parse",
]

#: the commands a peer may send (case-sensitive)
COMMANDS = frozenset({"PUB", "SUB", "REQ", "RES", "EREQ", "EPUB", "ESUB", "INT", "UNS", "UNSUB"})

# RFC 7230 token characters: what Go accepts in a header key it canonicalises
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ParseError(ProtocolError, ValueError):
    """A frame that is not a middleman message; ``reason`` says why."""


class MmHeaders(HeaderPairs):
    """Headers in arrival order, repeats kept. As a Mapping (what the core's ``Headers`` is),
    a name maps to its *first* value, like Go's ``MIMEHeader.Get``; :attr:`pairs` keeps all."""

    __slots__ = ()


class MmMessage:
    """One middleman message. ``headers`` are (canonical name, value) pairs in order."""

    __slots__ = ("body", "command", "headers", "target")

    def __init__(
        self,
        command: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: str = "",
    ) -> None:
        self.command = command
        self.target = target
        self.headers = tuple(headers)
        self.body = body

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MmMessage):
            return NotImplemented
        return (self.command, self.target, self.headers, self.body) == (
            other.command,
            other.target,
            other.headers,
            other.body,
        )

    def __hash__(self) -> int:
        return hash((self.command, self.target, self.headers, self.body))

    def __repr__(self) -> str:
        return (
            f"MmMessage({self.command!r}, {self.target!r}, {list(self.headers)!r}, {self.body!r})"
        )


#: header names come back in every message (Reqid, Cid, Uid, ...): both name functions are
#: memoised, a cache lookup instead of a loop over characters; bounded (least recently used out)
_NAME_CACHE = 4096


@functools.lru_cache(maxsize=_NAME_CACHE)
def canonical_key(key: str) -> str:
    """Go's ``CanonicalMIMEHeaderKey``: upper-case the first letter and every letter after a
    ``-``, lower-case the rest; a key with a character outside the token set is unchanged."""
    if not key or any(c not in _TOKEN for c in key):
        return key
    out = []
    upper = True
    for c in key:
        out.append(c.upper() if upper else c.lower())
        upper = c == "-"
    return "".join(out)


def _trim(s: str) -> str:
    return s.strip(" \t")


class _Lines:
    """Reads lines (without their LF or CRLF) from a string, like Go's textproto.Reader."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def line(self) -> str | None:
        """The next complete line, or None at the end (a last line without LF is incomplete)."""
        text = self.text
        i = text.find("\n", self.pos)
        if i < 0:
            return None
        line = text[self.pos : i]
        self.pos = i + 1
        if line.endswith("\r"):
            line = line[:-1]
        return line

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]


def parse(text: str) -> MmMessage:
    """Parse one frame. Raises :class:`ParseError`."""
    # fast path, the usual frame: CRLF line ends only up to the first blank line, no folded
    # header line; the same result as the general reader below, without a call per line
    end = text.find("\r\n\r\n")
    if end > 0:
        head = text[:end]
        if head.count("\n") == head.count("\r\n") and "\n " not in head and "\n\t" not in head:
            command_line, *header_lines = head.split("\r\n")
            cmd, sep, target = command_line.partition(" ")
            if sep:
                out: list[tuple[str, str]] = []
                for line in header_lines:
                    _header(_trim(line), out)
                rest = _Lines(text)
                rest.pos = end + 4
                return MmMessage(cmd, target, out, _body(rest))
    lines = _Lines(text)
    first = lines.line()
    if first is None:
        raise ParseError("no line end after the command line")
    cmd, sep, target = first.partition(" ")
    if not sep:
        raise ParseError("no space between command and target")
    headers = _headers(lines)
    return MmMessage(cmd, target, headers, _body(lines))


def _headers(lines: _Lines) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if lines.peek() in (" ", "\t"):
        raise ParseError("malformed header: continuation line before any header")
    while True:
        line = lines.line()
        if line is None:
            raise ParseError("no blank line after the headers")
        if not line:
            return out
        # fold continuation lines (starting with a space or tab) into this one
        folded = _trim(line)
        while lines.peek() in (" ", "\t"):
            more = lines.line()
            if more is None:
                raise ParseError("no blank line after the headers")
            folded += " " + _trim(more)
        _header(folded, out)


def _header(folded: str, out: list[tuple[str, str]]) -> None:
    """Append the (name, value) of one header line, continuation lines folded in."""
    key, colon, value = folded.partition(":")
    if not colon:
        raise ParseError(f"malformed header line (no colon): {folded[:80]!r}")
    if " " in key or "\t" in key:
        raise ParseError(f"malformed header line (space in name): {folded[:80]!r}")
    if key:  # Go skips an empty key
        out.append((canonical_key(key), _trim(value)))


def _body(lines: _Lines) -> str:
    text = lines.text
    pos = lines.pos
    # fast path, the usual frame: one body line (no LF, no leading dot) and the "." line last
    if text.endswith("\r\n.\r\n") and len(text) - pos >= 5:
        one = text[pos:-5]
        if "\n" not in one and not one.startswith("."):
            return one
    parts: list[str] = []
    end = len(text)
    while True:
        if pos >= end:
            raise ParseError("no terminating '.' line")
        i = text.find("\n", pos)
        if i < 0:
            if text[pos:] == ".":
                break  # liberal: a final "." without its line end
            raise ParseError("no terminating '.' line")
        line = text[pos:i]
        pos = i + 1
        crlf = line.endswith("\r")
        content = line[:-1] if crlf else line
        if content == ".":
            break
        if content.startswith("."):
            content = content[1:]
        parts.append(content)
    # dot-decoded block: each line ends with LF; the last line break is not part of the body
    return "\n".join(parts)


def _stuff(body: str) -> str:
    # a CR before an LF of the body stays and gets its own CRLF ("\r\r\n"), which the
    # textproto rules read back as "\r\n": every body round-trips exactly
    if "\n" not in body and not body.startswith("."):
        return body  # one line, nothing to stuff
    return "\r\n".join("." + ln if ln.startswith(".") else ln for ln in body.split("\n"))


def _clean(s: str) -> str:
    """A command line or header value cannot hold a line break: each becomes a space."""
    if "\n" in s or "\r" in s:
        return s.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return s


@functools.lru_cache(maxsize=_NAME_CACHE)
def _name(name: str) -> str:
    """A header name that parses back: no line breaks, spaces, tabs or colons (each a ``-``)."""
    if any(c in " \t\r\n:" for c in name):
        return "".join("-" if c in " \t\r\n:" else c for c in name)
    return name


def encode(
    command: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: str = "",
) -> str:
    """One server message: ``CMD SP TARGET CRLF``, ``Name: Value CRLF`` per header in order,
    CRLF, the dot-stuffed body with CRLF line ends, CRLF ``.`` CRLF."""
    parts = [command, " ", _clean(target), "\r\n"]
    for name, value in headers:
        parts += [_name(name), ": ", _clean(value), "\r\n"]
    parts += ["\r\n", _stuff(body), "\r\n.\r\n"]
    return "".join(parts)


def encode_message(msg: MmMessage) -> str:
    return encode(msg.command, msg.target, msg.headers, msg.body)


# -- errors: the middleman transport's one table from error code to wire form -------------------
#
# The protocol has one error form: a ``PUB ERROR`` frame whose body is a text that names the
# command that failed and its target (docs/reference/ws.md). Every such text maitred sends is
# here, keyed by what failed and the error's code.

_C = ErrorCode
#: (what failed, code) → the ``PUB ERROR`` text; ``None`` as the code: any other code. What
#: failed is a command (``REQ``, ``PUB``, ...) or one of ``parse`` (a frame that is no message),
#: ``command`` (an unknown command), ``trust`` (a trusted command on an untrusted connection),
#: ``grant``/``serve`` (EREQ/EPUB/ESUB). Fields: ``{command} {target} {code} {reason}``.
ERROR_TEXTS: Final[dict[tuple[str, ErrorCode | None], str]] = {
    ("parse", None): "Parse error: {reason}",
    ("command", None): "Unknown command {command} {target}",
    ("trust", None): "Not trusted {command} {target}",
    ("PUB", _C.FORBIDDEN): "Not trusted PUB {target}",
    ("PUB", None): "Bad target PUB {target}: {reason}",
    ("SUB", _C.FORBIDDEN): "Not trusted: SUB {target}",
    ("SUB", _C.QUEUE_FULL): "Too many subscriptions SUB {target}: {reason}",
    ("SUB", None): "Bad target SUB {target}: {reason}",
    ("REQ", _C.FORBIDDEN): "Not trusted REQ {target}",
    ("REQ", _C.NO_WORKER): "No responder for REQ {target}",
    ("REQ", _C.WORKER_DIED): "No responder for REQ {target}",
    ("REQ", _C.TIMEOUT): "Timeout for REQ {target}",
    ("REQ", None): "Error {code} for REQ {target}: {reason}",
    ("RES", _C.FORBIDDEN): "Not trusted RES {target}",
    ("RES", None): "No client for request ID  RES {target}",  # (two spaces, as middleman)
    ("grant", _C.BAD_REQUEST): "Bad target {command} {target}: {reason}",
    ("grant", None): "Cannot grant {command} {target}: {reason}",
    ("serve", None): "Cannot serve {command} {target}: {reason}",
    ("INT", None): "No connection {reason} INT {target}",
}


def error_text(what: str, code: ErrorCode, target: str, reason: str = "", command: str = "") -> str:
    """The ``PUB ERROR`` text for ``code`` when ``what`` failed (see :data:`ERROR_TEXTS`);
    ``command`` defaults to ``what``."""
    template = ERROR_TEXTS.get((what, code)) or ERROR_TEXTS[(what, None)]
    return template.format(command=command or what, target=target, code=int(code), reason=reason)


def error_frame(text: str) -> str:
    """The frame that carries an error text to a middleman peer."""
    return encode("PUB", "ERROR", (), text)
