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
from websockets.protocol import Event

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

    def process_event(self, event: Event) -> None:
        if self.on_message is None or not isinstance(event, Frame) or event.opcode > BINARY:
            super().process_event(event)  # the opening handshake, control frames, or no handler
        else:
            self._data_frame(event)

    def _data_frame(self, frame: Frame) -> None:
        handler = self.on_message
        assert handler is not None
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
        if opcode is TEXT:
            try:
                text = data.decode()
            except UnicodeDecodeError as exc:
                self.set_connection_exc(exc)
                self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
            handler(text)
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
