"""One root error with a numeric code; each transport maps codes to its own wire form.

Code ranges (documented in docs/reference/errors.md):

- 400–499: the caller's fault (bad request, not allowed, unknown name, too large, queue full);
- 500–599: the broker's or the service's situation (no worker, timeout, worker died, shutdown).

The numbers follow HTTP where an HTTP status means the same thing, so the HTTP front end maps
most of them one to one.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    TOO_LARGE = 413
    QUEUE_FULL = 429
    INTERNAL = 500
    NOT_IMPLEMENTED = 501
    WORKER_DIED = 502
    NO_WORKER = 503
    TIMEOUT = 504
    SHUTTING_DOWN = 530
    CANCELLED = 531

    @classmethod
    def of(cls, number: int) -> ErrorCode:
        """The code with this number; ``INTERNAL`` for a number that is no code (a peer's
        status that maitred does not know)."""
        try:
            return cls(number)
        except ValueError:
            return cls.INTERNAL


class MaitredError(Exception):
    """The root of every error maitred raises on purpose: a code and a short reason."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, reason: str, code: ErrorCode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{int(self.code)} {self.code.name}: {self.reason}"


class PeerError(MaitredError):
    """Caused by the other end of a connection: input that breaks the protocol, a request that
    is refused, a reply that says the other side failed (h11's ``RemoteProtocolError`` kind).

    A peer's input never crashes the broker: a transport answers these in its own wire form (or
    drops and counts the input) and logs them below ERROR."""

    code = ErrorCode.BAD_REQUEST


class ProtocolError(PeerError):
    """Input that is not valid in a transport's protocol, raised by a (pure) codec.

    ``str()`` is the bare reason: a codec's reason is embedded in the transport's own error
    text (and these classes printed that way before they joined this tree)."""

    def __str__(self) -> str:
        return self.reason


class BrokerError(MaitredError):
    """maitred's own situation, not a peer's doing: its configuration, its store, its limits,
    its deadlines, its shutdown (h11's ``LocalProtocolError`` side: the fix is on this side)."""

    code = ErrorCode.INTERNAL


class ConfigError(BrokerError):
    """A configuration file or value that cannot be used; the reason names the key and file."""

    code = ErrorCode.BAD_REQUEST


class Denied(PeerError):
    """The access policy refused an action."""

    code = ErrorCode.FORBIDDEN
