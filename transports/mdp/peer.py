"""The sans-I/O core of maitred's Python MDP peers (:mod:`.client`): everything the sync and the
asyncio client (and worker) share, with no socket and no event loop in sight.

- :class:`Exchange` is one request on a client connection: the frames to send, then each reply
  read against it (``Client`` and ``AsyncClient`` differ only in how they wait for bytes);
- :class:`WorkerCore` is a worker's state: its heartbeat clocks and what to send in answer to a
  request, whatever the handler returns or raises (``Worker`` and ``AsyncWorker`` add the socket);
- the dialect names, :class:`FinalReply`, :class:`MdpTimeout` and :func:`default_error_reply`.

The wire layouts themselves are the codec's (:mod:`.codec`); this module decides what to send
when, not how it is laid out. It does no I/O (import-linter contract "codecs do no I/O").
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, TypeAlias, final

from maitred.core.errors import BrokerError, ErrorCode
from maitred.transports.mdp import codec
from maitred.transports.mdp.codec import MdpFormatError

__all__ = [
    "DIALECTS",
    "DialectName",
    "ErrorReply",
    "Exchange",
    "FinalReply",
    "MdpTimeout",
    "Reply",
    "WorkerCore",
    "default_error_reply",
    "dialect_flags",
]

#: the peers' logger (the name predates this module)
log = logging.getLogger("maitred.transports.mdp.client")

#: the dialect names (any ``str`` is accepted by the API, and checked at run time)
DialectName: TypeAlias = Literal["0.1", "0.2", "rfc", "rfc-envelope", "majortomo"]

#: dialect names → codec flags
DIALECTS: dict[str, int] = {
    "0.1": codec.ENVELOPE,
    "0.2": codec.V2,
    "rfc": codec.V2,
    "rfc-envelope": codec.V2 | codec.ENVELOPE,
    "majortomo": codec.V2 | codec.ENVELOPE | codec.SHORT,
}


def dialect_flags(dialect: str | int) -> int:
    """The codec flags for a dialect name (see the module docstring) or a flags ``int``."""
    if isinstance(dialect, bool):
        raise TypeError("dialect must be a name or an int of codec flags")
    if isinstance(dialect, int):
        if dialect not in codec.DIALECT_NAMES:
            raise ValueError(f"unknown MDP dialect flags {dialect!r}")
        return dialect
    try:
        return DIALECTS[dialect]
    except KeyError:
        names = ", ".join(repr(n) for n in DIALECTS)
        raise ValueError(f"unknown MDP dialect {dialect!r} (one of {names})") from None


class MdpTimeout(BrokerError, TimeoutError):
    """No reply arrived in time (the client then drops that connection: see :class:`Client`).

    Also a :class:`TimeoutError`, as it was before it joined the :class:`MaitredError` tree."""

    code = ErrorCode.TIMEOUT


@final
class FinalReply:
    """Yield ``FinalReply(body)`` from a streaming handler to send the FINAL reply."""

    __slots__ = ("body",)

    def __init__(self, body: Sequence[bytes]) -> None:
        self.body = body

    def __repr__(self) -> str:
        return f"FinalReply({self.body!r})"


def default_error_reply(exc: BaseException) -> list[bytes]:
    """The reply a worker sends when its handler raises: ``[b"500", b"Type: message"]``."""
    return codec.error_body(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


SyncHandler: TypeAlias = Callable[[list[bytes]], Any]
AsyncHandler: TypeAlias = Callable[[list[bytes]], Any]
ErrorReply: TypeAlias = Callable[[BaseException], Sequence[bytes]]
#: ``(final, body)``: one reply as a client sees it
Reply: TypeAlias = tuple[bool, list[bytes]]

# -- body frames -----------------------------------------------------------------------------------


def service_bytes(service: str | bytes) -> bytes:
    """A service name as the bytes of its frame (``str`` in UTF-8)."""
    if isinstance(service, str):
        return service.encode("utf-8")
    if isinstance(service, bytes):
        return service
    raise TypeError(f"service must be str or bytes, not {type(service).__name__}")


def body_frames(frames: Iterable[object], what: str) -> list[bytes]:
    """Validate a body before anything is sent (a bad frame mid-send would corrupt the stream)."""
    if isinstance(frames, (bytes, bytearray, memoryview, str)):
        kind = type(frames).__name__
        raise TypeError(f"{what} must be a list of bytes frames, not a single {kind}")
    out: list[bytes] = []
    for f in frames:
        if isinstance(f, bytes):
            out.append(f)
        elif isinstance(f, (bytearray, memoryview)):
            out.append(bytes(f))
        else:
            raise TypeError(f"{what}: every frame must be bytes, not {type(f).__name__}")
    return out


def _reply_body(value: object, what: str) -> list[bytes]:
    if not isinstance(value, (list, tuple)):
        kind = type(value).__name__
        raise TypeError(f"{what} must be a list or tuple of bytes frames, not {kind}")
    return body_frames(value, what)


def timeout_ms(timeout: float | None) -> int | None:
    """Seconds (``None``: forever) as the milliseconds a zmq poll takes."""
    return None if timeout is None else max(0, round(timeout * 1000))


# -- client ----------------------------------------------------------------------------------------


class Exchange:
    """One request on a client connection, sans I/O: :attr:`frames` to send, then each reply
    message read with :meth:`receive` until :attr:`done` (its FINAL arrived).

    The body is checked when the exchange is made, before anything is sent (a bad frame in
    the middle of a send would corrupt the stream)."""

    __slots__ = ("dialect", "done", "frames", "service")

    def __init__(self, dialect: int, service: str | bytes, body: Iterable[object]) -> None:
        self.dialect = dialect
        self.service = service_bytes(service)
        self.frames = codec.client_request(dialect, self.service, body_frames(body, "request body"))
        self.done = False

    def receive(self, frames: list[bytes]) -> Reply:
        """``(final, body)`` of a reply message; :class:`MdpFormatError` when it is not a reply
        in this dialect, or is for another service."""
        is_final, service, body = codec.parse_client_reply(self.dialect, frames)
        if service is not None and service != self.service:
            raise MdpFormatError(f"reply for service {service!r}, expected {self.service!r}")
        if is_final:
            self.done = True
        return is_final, body


# -- worker ----------------------------------------------------------------------------------------


class WorkerCore:
    """A worker's state without its socket: the service, the handler, the heartbeat clocks
    (``_sent``/``_heard`` move them; the owner reads ``_heartbeat_at``/``_dead_at``) and the
    frames to send in answer to a request, handler errors included."""

    def __init__(
        self,
        endpoint: str,
        service: str | bytes,
        handler: Callable[[list[bytes]], Any],
        *,
        dialect: str | int,
        heartbeat_interval: float,
        liveness: int,
        error_reply: ErrorReply | None,
    ) -> None:
        if heartbeat_interval <= 0 or liveness < 1:
            raise ValueError("heartbeat_interval must be > 0 and liveness >= 1")
        self.endpoint = endpoint
        self.service = service_bytes(service)
        if not self.service:
            raise ValueError("the service name must not be empty")
        if self.service.startswith(b"mmi."):
            raise ValueError("mmi.* services are answered by the broker itself")
        self.dialect = dialect_flags(dialect)
        if not self.dialect & codec.V2 and (
            inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler)
        ):
            raise ValueError(
                "MDP/0.1 workers cannot send partial replies: use a plain handler, or the "
                "'0.2' or 'majortomo' dialect for a streaming (generator) handler"
            )
        self.handler = handler
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.error_reply = error_reply
        #: requests served since construction
        self.served = 0
        self._connected_at = -float("inf")
        self._heartbeat_at = 0.0  # when to send the next HEARTBEAT
        self._dead_at = 0.0  # when the broker counts as dead
        self._closed = False

    def _sent(self, now: float) -> None:
        self._heartbeat_at = now + self.heartbeat_interval

    def _heard(self, now: float) -> None:
        self._dead_at = now + self.heartbeat_interval * self.liveness

    def _reconnect_delay(self, now: float) -> float:
        """How long to wait before connecting again: READY at most once per heartbeat interval."""
        return self._connected_at + self.heartbeat_interval - now

    def _connected(self, now: float) -> list[bytes]:
        """A new connection at ``now``: the clocks start again; the READY to send on it."""
        self._connected_at = now
        self._heard(now)
        return codec.worker_ready(self.dialect, self.service)

    def _inbound(self, frames: list[bytes], now: float) -> tuple[int, bytes, list[bytes]] | None:
        """``(command, token, body)`` of what the broker sent at ``now`` (so it is alive); a
        DISCONNECT is logged (the owner reconnects). None: malformed, logged and dropped."""
        self._heard(now)
        try:
            inbound = codec.parse_worker_inbound(self.dialect, frames)
        except MdpFormatError as exc:
            log.debug("MDP worker %r: dropped a malformed message: %s", self.service, exc)
            return None
        if inbound[0] == codec.DISCONNECT:
            log.info("MDP worker %r: DISCONNECT from the broker, reconnecting", self.service)
        return inbound

    def _silent(self, now: float) -> bool:
        """Whether the broker has said nothing for ``liveness`` intervals (logged: the owner
        reconnects)."""
        if now < self._dead_at:
            return False
        log.warning("MDP worker %r: broker silent, reconnecting", self.service)
        return True

    def _partial(self, token: bytes, item: object) -> list[bytes]:
        if not self.dialect & codec.V2:
            raise TypeError("MDP/0.1 cannot carry partial replies; yield FinalReply(...) only")
        return codec.worker_reply(self.dialect, token, _reply_body(item, "a partial reply"), False)

    def _final(self, token: bytes, value: object) -> list[bytes]:
        """The FINAL for ``value``: a body, a :class:`FinalReply` or None (an empty body)."""
        if isinstance(value, FinalReply):
            value = value.body
        body = [] if value is None else _reply_body(value, "the final reply")
        return codec.worker_reply(self.dialect, token, body, True)

    def _failed(self, token: bytes, exc: Exception) -> list[bytes]:
        if self.error_reply is None:
            raise exc
        log.exception("MDP worker %r: handler failed", self.service)
        return codec.worker_reply(
            self.dialect, token, body_frames(self.error_reply(exc), "error_reply"), True
        )

    def _stream(self, token: bytes, result: Iterator[object]) -> Iterator[list[bytes]]:
        """The frames to send for a sync generator's replies (its errors become an error reply)."""
        try:
            while True:
                try:
                    item = next(result)
                except StopIteration as stop:
                    frames = self._final(token, stop.value)
                    break
                if isinstance(item, FinalReply):
                    frames = self._final(token, item)
                    break
                yield self._partial(token, item)
        except Exception as exc:
            frames = self._failed(token, exc)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        yield frames

    def _sync_replies(self, token: bytes, body: list[bytes]) -> Iterator[list[bytes]]:
        """The frames to send in answer to one request, handler errors included."""
        try:
            result = self.handler(body)
        except Exception as exc:
            return iter((self._failed(token, exc),))
        return self._replies_of(token, result)

    def _replies_of(self, token: bytes, result: object) -> Iterator[list[bytes]]:
        """The frames for what a handler returned: each reply of a generator, else the one
        FINAL (for a value that is no body: the error reply)."""
        if isinstance(result, Iterator):
            return self._stream(token, result)
        try:
            frames = self._final(token, result)
        except Exception as exc:
            frames = self._failed(token, exc)
        return iter((frames,))
