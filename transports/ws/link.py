"""The WebSocket connection under a :class:`~maitred.transports.ws.conn.Conn`: websockets'
asyncio server connection with a shorter data path.

websockets does the opening handshake (with the transport's ``process_request`` admission),
TLS, the frame parser and its ``max_size`` limit, pings, pongs and keepalive, and the closing
handshake. What :class:`WsLink` changes, once a connection has said who it is
(:meth:`WsLink.take_over`), is where complete messages go: straight to the connection's
handler, in the turn of the event loop that read them, every message of a read one after the
other, instead of through websockets' message queue and a wake-up of a reader task per
message. Outgoing text frames are written by :func:`text_frames` (RFC 6455 §5.2, server side:
no mask, no extension), so a turn's replies go out in one socket write.

The semantics are those of ``async for message in connection``: messages in order, a text
frame as ``str`` (UTF-8; invalid data fails the connection with 1007), a binary one as
``bytes``, fragmented messages joined (more than websockets' ``MAX_FRAGMENTS`` fragments fail
it with 1009, like ``max_size``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.asyncio.server import ServerConnection
from websockets.frames import BINARY, TEXT, CloseCode, Frame
from websockets.protocol import OPEN, Event

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

#: a handler of one complete message (``str`` for text frames, ``bytes`` for binary ones)
MessageHandler = Callable[[str | bytes], None]

_TEXT_FIN = 0x80 | TEXT.value
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frames(messages: list[bytes]) -> list[bytes]:
    """Each UTF-8 encoded message as a final, unmasked text frame (header, payload, ...):
    what websockets' server protocol writes for ``send_text`` without extensions."""
    out: list[bytes] = []
    for data in messages:
        n = len(data)
        if n < 126:
            out.append(_SHORT.pack(_TEXT_FIN, n))
        elif n < 65536:
            out.append(_MEDIUM.pack(_TEXT_FIN, 126, n))
        else:
            out.append(_LONG.pack(_TEXT_FIN, 127, n))
        out.append(data)
    return out


class WsLink(ServerConnection):
    """websockets' server connection; after :meth:`take_over`, data messages go to a handler
    as they are read (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: where complete messages go (None: websockets' own queue, read with ``recv``)
        self.on_message: MessageHandler | None = None
        #: called once when the TCP connection is lost (the WebSocket state is then CLOSED)
        self.on_lost: Callable[[], None] | None = None
        self._fragments: list[Frame] = []
        #: whether :meth:`data_received` splits the stream into frames itself (None: not
        #: decided yet, until the first read after the opening handshake)
        self._split: bool | None = None
        #: the start of a frame not yet whole, in pieces, their size, and the size of the
        #: frame (0: its header is not whole yet)
        self._rest: list[bytes] = []
        self._have = 0
        self._need = 0

    @property
    def plain(self) -> bool:
        """True when :func:`text_frames` frames exactly what the protocol would: no extension
        negotiated, and its DEBUG log of each frame is off."""
        return not self.protocol.extensions and not self.protocol.debug

    @property
    def taken(self) -> bool:
        """Whether data messages go to a handler (else to websockets' queue)."""
        return self.on_message is not None

    def take_over(self, handler: MessageHandler, on_lost: Callable[[], None]) -> None:
        """Hand every data message to ``handler`` from now on: first those websockets has
        queued (in order), then each as it is read. ``on_lost``: the connection is gone."""
        self.on_lost = on_lost
        self.on_message = handler
        assembler = self.recv_messages
        queued = list(assembler.frames.queue)
        assembler.frames.queue.clear()
        if assembler.paused:  # its queue was full: the socket's reading is paused
            assembler.paused = False
            self.transport.resume_reading()
        for frame in queued:
            if self.taken:
                self._data_frame(frame)
            else:  # the handler gave the connection back (closing)
                assembler.frames.queue.append(frame)
        if self.connection_lost_waiter.done():
            on_lost()

    # -- reading ---------------------------------------------------------------------------------
    #
    # After the opening handshake, data_received cuts the stream into frames itself. A final,
    # masked text or binary frame without reserved bits, within max_size, outside a fragmented
    # message, goes straight to the handler (unmasked here, as websockets would). Any other
    # whole frame (control frames, fragments, or every frame while no handler has taken over)
    # is handed to websockets' parser alone, which so always starts at a frame boundary. A
    # frame websockets must refuse (unmasked, too big, reserved bits), or a connection no
    # longer open, hands the rest of the stream to websockets for good.

    def data_received(self, data: bytes) -> None:
        if not self._split:
            if self._split is None and self.protocol.state is OPEN:
                # the first read after the handshake: split from here when websockets holds
                # no partial frame and nothing but plain frames can come
                self._split = self.plain and not self.protocol.reader.buffer
            if not self._split:
                super().data_received(data)
                return
        if self._rest:
            self._rest.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            data = b"".join(self._rest)
            self._rest.clear()
        self._frames(data)

    def _frames(self, buf: bytes) -> None:
        proto = self.protocol
        limit = proto.max_message_size
        n = len(buf)
        pos = 0
        view = memoryview(buf)
        while n - pos >= 2:
            head1 = buf[pos]
            head2 = buf[pos + 1]
            length = head2 & 0x7F
            start = pos + 2
            if length == 126:
                start = pos + 4
                length = int.from_bytes(buf[pos + 2 : start]) if n >= start else -1
            elif length == 127:
                start = pos + 10
                length = int.from_bytes(buf[pos + 2 : start]) if n >= start else -1
            if length < 0:
                break  # the length is not all here yet
            if head1 & 0x70 or not head2 & 0x80 or (limit is not None and length > limit):
                self._give_up(buf[pos:])  # websockets fails the connection, with its code
                return
            end = start + 4 + length
            if end > n:
                self._rest.append(buf[pos:])
                self._have = n - pos
                self._need = end - pos
                return
            opcode = head1 & 0x0F
            if (
                head1 & 0x80
                and (opcode == 1 or opcode == 2)
                and self.on_message is not None
                and proto.current_size is None
            ):
                payload = apply_mask(view[start + 4 : end], buf[start : start + 4])
                self._message(opcode == 1, payload)
                pos = end
                if self.on_message is not None:  # else it may have failed the connection
                    continue
            else:
                super().data_received(buf[pos:end])
                pos = end
            if proto.state is not OPEN:  # closing or failed: websockets has the rest
                self._give_up(buf[pos:])
                return
        if pos < n:  # a header not yet whole: look again at the next read
            self._rest.append(buf[pos:])
            self._have = n - pos
            self._need = 0

    def _give_up(self, rest: bytes) -> None:
        """websockets' parser reads everything from here on (it is at a frame boundary)."""
        self._split = False
        if rest:
            super().data_received(rest)

    def eof_received(self) -> None:
        if self._rest:  # a partial frame: websockets sees it, and fails as it would
            rest = b"".join(self._rest)
            self._rest.clear()
            self._give_up(rest)
        super().eof_received()

    def process_event(self, event: Event) -> None:
        if self.on_message is None or not isinstance(event, Frame) or event.opcode > BINARY:
            super().process_event(event)  # the opening handshake, control frames, or no handler
        else:
            self._data_frame(event)

    def _data_frame(self, frame: Frame) -> None:
        fragments = self._fragments
        if frame.fin and not fragments:
            data: bytes = bytes(frame.data)
            opcode = frame.opcode
        else:
            # the parser has checked the sequence (a CONT only after a non-final frame) and
            # the size of the whole message against max_size
            fragments.append(frame)
            if len(fragments) > MAX_FRAGMENTS:
                self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                return
            if not frame.fin:
                return
            opcode = fragments[0].opcode
            data = b"".join(f.data for f in fragments)
            fragments.clear()
        self._message(opcode is TEXT, data)

    def _message(self, text: bool, data: bytes) -> None:
        handler = self.on_message
        assert handler is not None
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                self.set_connection_exc(exc)
                self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
            handler(message)
        else:
            handler(data)

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Fail the connection as websockets' ``recv`` does for such a message: the close
        frame, then the TCP connection is closed, by the peer or after ``close_timeout``."""
        self.on_message = None
        self.protocol.fail(code, reason)
        self.send_data()
        if self.close_timeout is not None and self.close_deadline is None:
            self.close_deadline = self.loop.time() + self.close_timeout
        if self.close_deadline is not None:
            self.loop.call_at(self.close_deadline, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        on_lost, self.on_lost = self.on_lost, None
        self.on_message = None
        if on_lost is not None:
            on_lost()
