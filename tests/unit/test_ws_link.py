"""WsLink's reading (transports/ws/link.py) without a socket: the stream cut anywhere, control
frames among data frames, and the frames websockets must refuse."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
from websockets.asyncio.messages import Assembler
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from maitred.transports.ws.link import WsLink, text_frames

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0, 1, 2, 8, 9


class FakeTransport:
    """What WsLink writes, and what it asks of its transport."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def resume_reading(self) -> None:
        pass


def frame(
    opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """One client frame (masked, as clients must)."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def open_protocol() -> ServerProtocol:
    """A server protocol past its opening handshake (its parser reads frames)."""
    proto = ServerProtocol(max_size=1 << 17)
    proto.receive_data(HANDSHAKE)
    (request,) = proto.events_received()
    proto.send_response(proto.accept(request))  # type: ignore[arg-type]
    proto.data_to_send()
    assert proto.state is OPEN
    return proto


def make_link() -> tuple[WsLink, FakeTransport, list[Any]]:
    link = WsLink(open_protocol(), server=None, ping_interval=None)
    transport = FakeTransport()
    link.transport = transport  # type: ignore[assignment]
    link.recv_messages = Assembler()
    link.request = object()  # type: ignore[assignment]  # past the opening handshake
    got: list[Any] = []
    link.take_over(got.append, lambda: got.append("lost"))
    return link, transport, got


def run(test: Any) -> None:
    async def main() -> None:
        test()

    asyncio.run(main())


def test_frames_cut_anywhere_are_read_whole_and_in_order() -> None:
    def test() -> None:
        link, transport, got = make_link()
        texts = ["a", "é" * 100, "x" * 70_000]
        stream = b"".join(frame(OP_TEXT, t.encode()) for t in texts)
        stream += frame(OP_PING, b"hi") + frame(OP_BINARY, b"\x00\x01")
        for i in range(0, len(stream), 7):  # the stream in pieces of 7 bytes
            link.data_received(stream[i : i + 7])
        assert got == [*texts, b"\x00\x01"]
        # the ping was websockets': its pong went out, unmasked
        assert transport.written == [b"\x8a\x02hi"]

    run(test)


def test_fragments_go_through_websockets_and_are_joined() -> None:
    def test() -> None:
        link, _, got = make_link()
        stream = frame(OP_TEXT, b"one ", fin=False) + frame(OP_PING, b"")
        stream += frame(OP_CONT, b"two") + frame(OP_TEXT, b"three")
        link.data_received(stream)
        assert got == ["one two", "three"]

    run(test)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(OP_TEXT, b"x", masked=False), 1002),  # a client must mask
        (frame(OP_TEXT, b"x", rsv=0x40), 1002),  # no extension was negotiated
        (frame(OP_TEXT, b"x" * ((1 << 17) + 1)), 1009),  # past max_size
        (frame(OP_TEXT, b"\xff\xfe"), 1007),  # not UTF-8
        (frame(OP_CONT, b"x"), 1002),  # a continuation of nothing
    ],
)
def test_a_bad_frame_fails_the_connection_as_websockets_would(bad: bytes, code: int) -> None:
    def test() -> None:
        link, transport, got = make_link()
        link.data_received(frame(OP_TEXT, b"before") + bad + frame(OP_TEXT, b"after"))
        assert got == ["before"]
        assert link.protocol.close_sent is not None and link.protocol.close_sent.code == code
        assert transport.written[0][0] == 0x80 | OP_CLOSE
        assert transport.closed

    run(test)


def test_text_frames_are_what_websockets_writes() -> None:
    for n in (0, 125, 126, 65535, 65536):
        proto = open_protocol()
        proto.send_text(b"y" * n)
        assert b"".join(text_frames([b"y" * n])) == b"".join(proto.data_to_send())
