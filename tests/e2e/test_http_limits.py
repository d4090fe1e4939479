"""The http transport's connection limits over real sockets: header, body and idle timeouts,
the cap on open connections, and malformed requests that cannot flood the log."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.helpers import BrokerThread, wait_until
from tests.e2e.http_helpers import RawHttp, endpoint_of, http_toml

#: how long a test waits for the broker to close a connection (the limits are 0.5 s)
BUDGET = 15.0


@pytest.fixture
def http_broker(make_broker: Callable[..., BrokerThread]) -> Iterator[Callable[..., BrokerThread]]:
    def make(**keys: object) -> BrokerThread:
        extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
        return make_broker(http_toml(["127.0.0.1:0"], "switch = false\n" + extra))

    yield make


def _connect(broker: BrokerThread) -> socket.socket:
    host, _, port = endpoint_of(broker, "http://").removeprefix("http://").rpartition(":")
    return socket.create_connection((host, int(port)), 5.0)


def _closed_within(sock: socket.socket, budget: float) -> bytes:
    """Read until the server closes the connection; what it sent. AssertionError if it is
    still open after ``budget`` seconds."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"still open after {budget} s")


def test_a_silent_connection_is_closed_after_the_header_timeout(
    http_broker: Callable[..., BrokerThread],
) -> None:
    broker = http_broker(header_timeout=0.5, idle_timeout=120)
    sock = _connect(broker)
    try:
        assert _closed_within(sock, BUDGET) == b""
    finally:
        sock.close()
    assert broker.stats()["http.header_timeout"] == 1


def test_a_header_trickling_client_is_closed(http_broker: Callable[..., BrokerThread]) -> None:
    broker = http_broker(header_timeout=0.5, idle_timeout=120)
    sock = _connect(broker)
    sock.settimeout(0.1)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for i in range(int(BUDGET / 0.1)):  # one header line every 0.1 s, never the end
            try:
                sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "a client trickling headers kept its connection"
    finally:
        sock.close()
    assert broker.stats()["http.header_timeout"] == 1


def test_an_idle_keep_alive_connection_is_closed(
    http_broker: Callable[..., BrokerThread],
) -> None:
    broker = http_broker(header_timeout=120, idle_timeout=0.5)
    conn = RawHttp(endpoint_of(broker, "http://"))
    try:
        assert conn.do("GET", "/healthz")[0] == 200
        assert _closed_within(conn.sock, BUDGET) == b""
    finally:
        conn.close()


def test_a_slow_body_gets_408_and_is_closed(http_broker: Callable[..., BrokerThread]) -> None:
    broker = http_broker(body_timeout=0.5)
    sock = _connect(broker)
    try:
        sock.sendall(
            b"POST /v1/topics/t HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        data = _closed_within(sock, BUDGET)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b'"code":"timeout"' in data
    assert broker.stats()["http.body_timeout"] == 1


def test_a_chunked_body_over_the_limit_that_came_whole_gets_413(
    http_broker: Callable[..., BrokerThread],
) -> None:
    """A body without Content-Length, already complete when the handler runs (read from the
    buffer, without the timed read), is still held to ``max_body_size``."""
    broker = http_broker(max_body_size=1000)
    sock = _connect(broker)
    try:
        sock.sendall(
            b"POST /v1/services/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % 1001
            + b"x" * 1001
            + b"\r\n0\r\n\r\n"
        )
        data = _closed_within(sock, BUDGET)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 413 "), data
    assert b'"code":"too_large"' in data
    assert broker.stats()["http.too_large"] == 1


def test_connections_past_the_cap_are_refused_while_others_work(
    http_broker: Callable[..., BrokerThread],
) -> None:
    broker = http_broker(max_connections=2)
    ep = endpoint_of(broker, "http://")
    first, second = RawHttp(ep), RawHttp(ep)
    try:
        assert first.do("GET", "/healthz")[0] == 200
        assert second.do("GET", "/healthz")[0] == 200
        refused = [_connect(broker) for _ in range(3)]
        for sock in refused:
            data = _closed_within(sock, BUDGET)
            sock.close()
            assert data.startswith(b"HTTP/1.1 503 "), data
            assert b"too many connections" in data
        # the established clients go on
        assert first.do("GET", "/healthz")[0] == 200
        assert second.do("GET", "/v1/services")[0] == 200
    finally:
        first.close()
        second.close()
    assert broker.stats()["http.connections_refused"] == 3
    # a freed place is taken again
    wait_until(lambda: broker.call(lambda: len(_server(broker).connections)) == 0, BUDGET)
    third = RawHttp(ep)
    try:
        assert third.do("GET", "/healthz")[0] == 200
    finally:
        third.close()


def _server(broker: BrokerThread) -> Any:
    transport: Any = broker.broker.transport("http")
    return transport._runner.server


def test_malformed_requests_cannot_flood_the_log(
    http_broker: Callable[..., BrokerThread], caplog: pytest.LogCaptureFixture
) -> None:
    broker = http_broker()
    caplog.set_level(logging.DEBUG)
    ep = endpoint_of(broker, "http://")
    for _ in range(1000):
        sock = _connect(broker)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
            data = _closed_within(sock, BUDGET)
        finally:
            sock.close()
        assert data.split(b" ", 2)[1] == b"400", data
    good = RawHttp(ep)
    try:
        assert good.do("GET", "/healthz")[0] == 200
    finally:
        good.close()
    assert broker.stats()["http.malformed"] == 1000
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in loud if r.levelno >= logging.ERROR], loud[:3]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert len(loud) <= 3, [r.getMessage() for r in loud]
    broker.stop(drain_timeout=0)  # writes the pending summary
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(int(m.split()[0].replace(",", "")) for m in summaries) == 1000, summaries
    assert all("malformed HTTP requests from 127.0.0.1" in m for m in summaries), summaries


def test_zero_turns_the_limits_off_under_uvloop() -> None:
    import uvloop

    broker = BrokerThread(
        http_toml(
            ["127.0.0.1:0"],
            "switch = false\nheader_timeout = 0\nbody_timeout = 0\nidle_timeout = 0\n"
            "max_connections = 0\n",
        )
        + '[transports.mdp]\nendpoints = ["tcp://127.0.0.1:0"]\n',
        loop_factory=uvloop.new_event_loop,
    )
    try:
        conns = [RawHttp(endpoint_of(broker, "http://")) for _ in range(3)]
        try:
            for conn in conns * 2:  # each kept alive between its requests
                assert conn.do("GET", "/healthz")[0] == 200
        finally:
            for conn in conns:
                conn.close()
        stats = broker.stats()
        assert not stats.get("http.header_timeout") and not stats.get("http.connections_refused")
    finally:
        broker.stop(drain_timeout=0)
