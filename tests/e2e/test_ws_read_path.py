"""How the ws transport reads messages (transports/ws/link.py), over real sockets: frames a
client sends before its key is answered, fragmented messages, text that is not UTF-8, too many
fragments, and a handler that fails. The same as websockets' own reading would do."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from maitred.transports.ws.middleman import MmConn
from tests.e2e.helpers import BrokerThread, wait_until

WS = """
[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
"""


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


@pytest.fixture
def broker(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    return make_broker(WS)


def open_ws(broker: BrokerThread, stack: ExitStack) -> ClientConnection:
    return stack.enter_context(connect(broker.endpoints["ws"][0], open_timeout=5))


def login(broker: BrokerThread, stack: ExitStack) -> ClientConnection:
    ws = open_ws(broker, stack)
    ws.send("xyzzy")
    assert ws.recv(timeout=5) == "MM OK"
    ws.recv(timeout=5)  # the connection id
    return ws


def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        for _ in range(10):  # bounded: an error frame may come before the close
            ws.recv(timeout=5)
    return ws.close_code


def test_frames_sent_with_the_key_are_read_after_it_in_order(
    broker: BrokerThread, stack: ExitStack
) -> None:
    ws = open_ws(broker, stack)
    # no wait for "MM OK": these arrive while the key is being checked
    ws.send("xyzzy")
    ws.send("SUB early\r\n\r\n.\r\n")
    for i in range(3):
        ws.send(f"PUB early\r\n\r\nbody {i}\r\n.\r\n")
    assert ws.recv(timeout=5) == "MM OK"
    ws.recv(timeout=5)
    for i in range(3):
        frame = ws.recv(timeout=5)
        assert isinstance(frame, str) and frame.startswith("PUB early\r\n")
        assert frame.endswith(f"\r\n\r\nbody {i}\r\n.\r\n")


def test_a_fragmented_message_is_read_whole(broker: BrokerThread, stack: ExitStack) -> None:
    ws = login(broker, stack)
    ws.send("SUB frag\r\n\r\n.\r\n")
    ws.send(["PUB fr", "ag\r\n\r\nin three ", "parts\r\n.\r\n"])
    ws.send("PUB frag\r\n\r\nwhole\r\n.\r\n")
    first, second = ws.recv(timeout=5), ws.recv(timeout=5)
    assert isinstance(first, str) and first.endswith("\r\n\r\nin three parts\r\n.\r\n")
    assert isinstance(second, str) and second.endswith("\r\n\r\nwhole\r\n.\r\n")
    # a fragmented binary message is a binary message: middleman closes with 1003
    ws.send([b"\x00", b"\x01"])
    assert closed_with(ws) == 1003


def test_text_that_is_not_utf8_closes_1007(broker: BrokerThread, stack: ExitStack) -> None:
    ws = login(broker, stack)
    with ws.send_context():  # websockets' client checks what it sends: write the frame raw
        ws.protocol.send_text(b"PUB t\r\n\r\n\xff\xfe\r\n.\r\n")
    assert closed_with(ws) == 1007
    login(broker, stack)  # the broker still serves others


def test_too_many_fragments_close_1009_and_are_counted(
    broker: BrokerThread, stack: ExitStack
) -> None:
    ws = login(broker, stack)
    ws.send(["x"] * 4097)  # websockets' limit is 4,096 fragments a message
    assert closed_with(ws) == 1009
    wait_until(lambda: broker.stats().get("ws.oversized", 0) == 1, what="counted")


@pytest.mark.allow_error_logs("ws: connection .* failed")
def test_a_handler_that_fails_closes_its_connection_1011(
    broker: BrokerThread, stack: ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = login(broker, stack)

    def broken(self: MmConn, text: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(MmConn, "on_text", broken)
    ws.send("SUB t\r\n\r\n.\r\n")
    assert closed_with(ws) == 1011
    assert broker.stats().get("ws.internal_errors", 0) == 1


def test_with_websockets_debug_log_its_own_framing_and_parser_serve(
    broker: BrokerThread, stack: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    # websockets logs each frame at DEBUG: then maitred leaves framing and parsing to it
    caplog.set_level(logging.DEBUG, logger="websockets.server")
    ws = login(broker, stack)
    ws.send("SUB dbg\r\n\r\n.\r\n")
    ws.send(["PUB d", "bg\r\n\r\nlogged\r\n.\r\n"])
    frame = ws.recv(timeout=5)
    assert isinstance(frame, str) and frame.endswith("\r\n\r\nlogged\r\n.\r\n")
    assert any("> TEXT" in r.getMessage() for r in caplog.records)
    assert any("< TEXT" in r.getMessage() for r in caplog.records)
