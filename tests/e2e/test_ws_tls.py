"""Failed TLS handshakes on a wss:// listener over real sockets: asyncio closes such a
connection before websockets sees it, so the broker counts and logs them itself
(``ws.tls_plaintext``, ``ws.tls_failed``; docs/reference/ws.md): a plain ws:// client, bytes that
are not TLS at all, a TLS handshake record full of garbage."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage

from maitred.core.app import Broker, build_broker
from maitred.core.config import parse_config

NO_MDP = "[transports.mdp]\nenabled = false\n"
LOGGER = "maitred.transports.ws"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _uvloop() -> asyncio.AbstractEventLoop:
    uvloop = pytest.importorskip("uvloop")
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


#: asyncio's own TLS layer, and uvloop's (``[broker] uvloop``)
LOOPS = pytest.mark.parametrize("loop_factory", [None, _uvloop], ids=["asyncio", "uvloop"])
LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None


def with_wss_broker(
    cert: tuple[Path, Path],
    loop_factory: LoopFactory,
    body: Callable[[Broker, str], Awaitable[None]],
) -> None:
    """Run ``body(broker, "HOST:PORT")`` against a broker with one wss:// listener on the
    loop ``loop_factory`` makes, then stop it (which writes the pending WARNING summaries)."""
    toml = (
        NO_MDP
        + '[transports.ws]\nlisten = "127.0.0.1:0"\nping_interval = 0\n'
        + f'tls_cert = "{cert[0]}"\ntls_key = "{cert[1]}"\n'
    )

    async def main() -> None:
        broker = build_broker(parse_config(toml))
        await broker.start()
        try:
            (endpoint,) = broker.endpoints()["ws"]
            await asyncio.wait_for(body(broker, endpoint.removeprefix("wss://")), 20)
        finally:
            await broker.stop(0)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


async def counted(broker: Broker, name: str, n: int) -> None:
    """Wait until the shared counter ``name`` reaches ``n`` (bounded by the caller's timeout)."""
    stats = broker.transports["ws"].stats
    while stats[name] < n:
        await asyncio.sleep(0.01)
    assert stats[name] == n


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


async def refused(coro: Awaitable[object]) -> None:
    """The plain client's opening handshake fails: the broker closed the connection."""
    with pytest.raises((InvalidMessage, ConnectionError, EOFError)):
        await coro


@LOOPS
def test_plain_ws_clients_on_a_wss_port_are_counted_and_logged(
    loop_factory: LoopFactory, cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    seen: list[str] = []

    async def body(broker: Broker, listener: str) -> None:
        seen.append(listener)
        for n in range(1, 4):
            await refused(connect(f"ws://{listener}", open_timeout=5))
            await counted(broker, "ws.tls_plaintext", n)
        # a good client still gets in, and counts as nothing
        context = ssl.create_default_context(cafile=str(cert[0]))
        async with connect(f"wss://{listener}", ssl=context) as ws:
            await ws.send("xyzzy")
            assert await asyncio.wait_for(ws.recv(), 5) == "MM OK"
        stats = broker.transports["ws"].stats
        assert stats["ws.tls_plaintext"] == 3 and stats["ws.tls_failed"] == 0

    with_wss_broker(cert, loop_factory, body)
    (listener,) = seen
    (summary,) = warnings(caplog)
    assert re.fullmatch(
        rf"3 plain-text \(not TLS\) connections on the TLS listener {re.escape(listener)}"
        r" in the last \d+ s: a ws:// client on a wss:// port\?",
        summary,
    ), summary
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum("plain-text (not TLS)" in m and "HTTP_REQUEST" in m for m in debug) == 3


@LOOPS
def test_garbage_handshakes_are_counted_and_logged(
    loop_factory: LoopFactory, cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    seen: list[str] = []

    async def body(broker: Broker, listener: str) -> None:
        seen.append(listener)
        host, port = listener.rsplit(":", 1)
        # bytes that are no TLS record: the broker closes the connection
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"\x00\x01garbage that is not a TLS ClientHello\r\n" * 8)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await counted(broker, "ws.tls_failed", 1)
        # a TLS handshake record whose content is garbage
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"\x16\x03\x01\x00\x20" + b"\xff" * 32)
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)  # an alert, then the broker closes
        writer.close()
        await counted(broker, "ws.tls_failed", 2)
        assert broker.transports["ws"].stats["ws.tls_plaintext"] == 0

    with_wss_broker(cert, loop_factory, body)
    (listener,) = seen
    (summary,) = warnings(caplog)
    assert re.fullmatch(
        rf"2 failed TLS handshakes on the TLS listener {re.escape(listener)} in the last \d+ s:"
        r" not TLS, or no TLS version or cipher in common\? \(each reason is logged at DEBUG\)",
        summary,
    ), summary


def test_the_cli_trusts_a_private_ca_with_cacert(
    cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from maitred.core import cli

    monkeypatch.delenv("MAITRED_CACERT", raising=False)

    async def body(broker: Broker, hostport: str) -> None:
        url = f"wss://{hostport}"
        # not trusted by the system's CAs: the CLI cannot connect
        assert await asyncio.to_thread(cli.main, ["services", "-b", url, "-t", "5"]) != 0
        ok = await asyncio.to_thread(
            cli.main, ["services", "-b", url, "-t", "5", "--cacert", str(cert[0])]
        )
        assert ok == cli.EXIT_OK

    with_wss_broker(cert, None, body)
