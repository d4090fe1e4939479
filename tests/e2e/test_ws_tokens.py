"""WebSocket bearer tokens and secrets over real sockets (docs/reference/ws.md, "Tokens"):
bad input on the opening handshake (tokens of every length, non-ASCII, CR and LF in headers, two
tokens), tokens never in the logs, keys read from files and the environment, files that others
can read refused, and reload applying a new token table to new connections only."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from maitred.core.app import build_broker
from maitred.core.config import parse_config
from maitred.core.credentials import new_token
from maitred.core.errors import MaitredError
from tests.e2e.helpers import BrokerThread

TOKEN, SHA = new_token()
OTHER, OTHER_SHA = new_token()
NO_MDP = "[transports.mdp]\nenabled = false\n"

WS = f"""
[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
handshake_timeout = 5

[[transports.ws.keys]]
key = "app-key"
trusted = true

[[transports.ws.tokens]]
sha256 = "{SHA}"
identity = "tok"
roles = ["r"]
"""


@pytest.fixture
def ws_broker(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    return make_broker(WS)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def host_port(broker: BrokerThread) -> tuple[str, int]:
    host, _, port = broker.endpoints["ws"][0].removeprefix("ws://").rpartition(":")
    return host, int(port)


def login(broker: BrokerThread, stack: ExitStack) -> ClientConnection:
    """A middleman client with the key: the bystander that must not notice anything."""
    ws = stack.enter_context(connect(broker.endpoints["ws"][0], open_timeout=5))
    ws.send("app-key")
    assert ws.recv(5) == "MM OK"
    ws.recv(5)
    return ws


def still_works(ws: ClientConnection) -> None:
    ws.send("SUB t\r\n\r\n.\r\n")
    ws.send("PUB t\r\n\r\nping\r\n.\r\n")
    assert "\r\n\r\nping\r\n.\r\n" in str(ws.recv(5))


def raw_upgrade(broker: BrokerThread, lines: bytes, path: bytes = b"/") -> tuple[bytes, bytes]:
    """Send an opening handshake with the extra header ``lines`` (raw bytes, each ending with
    CRLF); (the response's status line and headers, the frames that came after, up to EOF)."""
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + lines + b"\r\n"
    )
    with socket.create_connection(host_port(broker), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep and not head.startswith(b"HTTP/1.1 101"):
                continue  # a refusal: read to EOF
            if sep and len(rest) >= 2 and len(rest) >= 2 + rest[1]:
                sock.sendall(b"\x88\x80" + os.urandom(4))  # close back (masked, empty)
    head, _, frames = data.partition(b"\r\n\r\n")
    return head, frames


def close_frame(frames: bytes) -> tuple[int, str]:
    """The code and reason of the close frame the broker sent first."""
    assert frames[:1] == b"\x88", frames[:40]
    size = frames[1]
    payload = frames[2 : 2 + size]
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


@pytest.mark.parametrize("length", [0, 1, 4096, 4097])
def test_tokens_of_every_length_are_refused_1008(
    ws_broker: BrokerThread, stack: ExitStack, length: int
) -> None:
    bystander = login(ws_broker, stack)
    head, frames = raw_upgrade(ws_broker, b"Authorization: Bearer " + b"t" * length + b"\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert close_frame(frames) == (1008, "bad token")
    stats = ws_broker.stats()
    assert stats["ws.bad_token"] == 1 and stats["denied.authenticate.ws"] == 1
    still_works(bystander)


def test_a_64_kib_token_is_refused_by_the_http_parser(
    ws_broker: BrokerThread, stack: ExitStack
) -> None:
    """A header line longer than 8 KiB never reaches maitred: websockets answers 431 after
    reading at most that much (bounded), and nothing is opened."""
    bystander = login(ws_broker, stack)
    head, _ = raw_upgrade(ws_broker, b"Authorization: Bearer " + b"t" * 65536 + b"\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head[:80]
    assert ws_broker.stats().get("ws.connections", 0) == 1  # the bystander only
    still_works(bystander)


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param("Authorization: Bearer café\r\n".encode(), id="non-ascii"),
        pytest.param(b"Authorization: Bearer \xff\xfe\r\n", id="not-utf8"),
        pytest.param(b"Authorization: Bearer a b\r\n", id="space"),
        # CR LF inside the value: it ends the header, the rest is a second token
        pytest.param(
            f"Authorization: Bearer {TOKEN}\r\nAuthorization: Bearer x\r\n".encode(), id="crlf"
        ),
    ],
)
def test_malformed_tokens_are_refused_1008(
    ws_broker: BrokerThread, stack: ExitStack, lines: bytes
) -> None:
    bystander = login(ws_broker, stack)
    head, frames = raw_upgrade(ws_broker, lines)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert close_frame(frames) == (1008, "bad token")
    assert ws_broker.stats()["denied.authenticate.ws"] == 1
    still_works(bystander)


@pytest.mark.parametrize(
    "lines",
    [
        b"Authorization: Bearer a\rb\r\n",
        b"Authorization: Bearer a\nb\r\n",
        b"Authorization: a\x01b\r\n",
    ],
    ids=["cr", "lf", "control"],
)
def test_bare_cr_or_lf_in_a_header_is_no_http(
    ws_broker: BrokerThread, stack: ExitStack, lines: bytes
) -> None:
    """A lone CR or LF, or a control character, inside a header is not HTTP: refused by the
    HTTP parser (no answer), nothing opened."""
    bystander = login(ws_broker, stack)
    head, _ = raw_upgrade(ws_broker, lines)
    assert not head.startswith(b"HTTP/1.1 101"), head
    assert ws_broker.stats().get("ws.connections", 0) == 1
    still_works(bystander)


def test_a_header_and_a_query_token_are_one_too_many(ws_broker: BrokerThread) -> None:
    path = f"/?access_token={TOKEN}".encode()
    _, frames = raw_upgrade(ws_broker, f"Authorization: Bearer {TOKEN}\r\n".encode(), path)
    assert close_frame(frames) == (1008, "bad token")
    _, frames = raw_upgrade(ws_broker, b"", f"/?access_token={TOKEN}&access_token=x".encode())
    assert close_frame(frames) == (1008, "bad token")


def test_another_authorization_scheme_is_not_ours(ws_broker: BrokerThread) -> None:
    """``Authorization: Basic`` (e.g. added by a proxy) is ignored: the key decides."""
    url = ws_broker.endpoints["ws"][0]
    with connect(url, additional_headers={"Authorization": "Basic dTpw"}, open_timeout=5) as ws:
        ws.send("app-key")
        assert ws.recv(5) == "MM OK"


def test_a_token_and_a_key_in_the_hello_are_refused(ws_broker: BrokerThread) -> None:
    url = ws_broker.endpoints["ws"][0]
    with connect(
        url,
        additional_headers={"Authorization": f"Bearer {TOKEN}"},
        subprotocols=[Subprotocol("maitred.json")],
        open_timeout=5,
    ) as ws:
        ws.send(json.dumps({"type": "hello", "key": "app-key"}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        1008,
        "a token and a key: send one",
    )


def test_tokens_are_never_logged(ws_broker: BrokerThread, caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, websockets prints each handshake line: the token is not among them."""
    url = ws_broker.endpoints["ws"][0]
    with caplog.at_level(logging.DEBUG):
        with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            assert ws.recv(5) == "MM OK"
        with connect(f"{url}/?a=1&access_token={TOKEN}") as ws:
            assert ws.recv(5) == "MM OK"
        bearer = {"Authorization": f"Bearer {OTHER}"}
        with connect(url, additional_headers=bearer) as ws, pytest.raises(ConnectionClosed):
            ws.recv(5)
        ws_broker.call(lambda: None)  # the broker's log lines are written
    # the broker's records (the client's own websockets logger prints what it sends)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name != "websockets.client")
    assert "< Authorization: ***" in text and "access_token=***" in text, text[:2000]
    assert TOKEN not in text and OTHER not in text


# -- keys from files and the environment ---------------------------------------------------------


def _refused_at_start(toml: str) -> str:
    """What starting a broker with ``toml`` is refused with."""

    async def main() -> str:
        broker = build_broker(parse_config(NO_MDP + toml, "t.toml"))
        try:
            with pytest.raises(MaitredError) as refused:
                await broker.start()
            return refused.value.reason
        finally:
            await broker.stop(0)

    return asyncio.run(main())


def _start(toml: str) -> None:
    async def main() -> None:
        broker = build_broker(parse_config(NO_MDP + toml, "t.toml"))
        await broker.start()
        try:
            (url,) = broker.endpoints()["ws"]
            async with aconnect(url) as ws:
                await ws.send("from-a-file")
                assert await asyncio.wait_for(ws.recv(), 5) == "MM OK"
        finally:
            await broker.stop(0)

    asyncio.run(main())


def test_a_key_from_a_file_and_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key"
    path.write_text("from-a-file\n")
    path.chmod(0o600)
    base = '[transports.ws]\nlisten = "127.0.0.1:0"\nping_interval = 0\n'
    _start(base + f'[[transports.ws.keys]]\nkey_file = "{path}"\ntrusted = true\n')
    monkeypatch.setenv("MAITRED_TEST_WS_KEY", "from-a-file")
    _start(base + '[[transports.ws.keys]]\nkey_env = "MAITRED_TEST_WS_KEY"\n')


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("k\n")
    path.chmod(0o644)
    toml = f'[transports.ws]\nlisten = "127.0.0.1:0"\n[[transports.ws.keys]]\nkey_file = "{path}"\n'
    reason = _refused_at_start(toml)
    assert f"transports.ws.keys[0].key_file: {path}: a secret readable by others" in reason
    assert f"chmod 600 {path}" in reason


def test_an_unset_key_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAITRED_TEST_NO_SUCH", raising=False)
    toml = '[transports.ws]\nlisten = "127.0.0.1:0"\n[[transports.ws.keys]]\n'
    toml += 'key_env = "MAITRED_TEST_NO_SUCH"\n'
    reason = _refused_at_start(toml)
    assert "keys[0].key_env: environment variable MAITRED_TEST_NO_SUCH is not set" in reason


def test_a_tls_key_others_can_read_is_refused_at_start(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o644)
    toml = f'[transports.ws]\nlisten = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'

    assert f"tls_key: {key}: a secret readable by others (mode 0644); run 'chmod 600 {key}'" in (
        _refused_at_start(toml)
    )


# -- reload ------------------------------------------------------------------------------------


def test_reload_applies_the_token_table_to_new_connections(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("one\n")
    keyfile.chmod(0o600)
    base = NO_MDP + '[transports.ws]\nlisten = "127.0.0.1:0"\nping_interval = 0\n'
    base += f'[[transports.ws.keys]]\nkey_file = "{keyfile}"\ntrusted = true\n'
    table = '[[transports.ws.tokens]]\nsha256 = "{}"\nidentity = "{}"\n'

    async def main() -> None:
        broker = build_broker(parse_config(base + table.format(SHA, "first"), "a.toml"))
        await broker.start()
        try:
            (url,) = broker.endpoints()["ws"]
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            async with aconnect(url, additional_headers=bearer) as old:
                assert await asyncio.wait_for(old.recv(), 5) == "MM OK"
                await old.recv()
                keyfile.write_text("two\n")  # read again by the reload
                result = broker.reload(
                    parse_config(base + table.format(OTHER_SHA, "second"), "a.toml")
                )
                assert {"transports.ws.tokens", "transports.ws.keys"} <= set(result["applied"])
                async with aconnect(url, additional_headers=bearer) as refused:
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(refused.recv(), 5)
                    assert refused.close_code == 1008
                other = {"Authorization": f"Bearer {OTHER}"}
                async with aconnect(url, additional_headers=other) as new:
                    assert await asyncio.wait_for(new.recv(), 5) == "MM OK"
                async with aconnect(url) as keyed:
                    await keyed.send("two")
                    assert await asyncio.wait_for(keyed.recv(), 5) == "MM OK"
                # the connection made with the old token stays, with its identity
                await old.send("SUB t\r\n\r\n.\r\n")
                await old.send("PUB t\r\n\r\nstill\r\n.\r\n")
                assert "still" in await asyncio.wait_for(old.recv(), 5)
        finally:
            await broker.stop(0)

    asyncio.run(main())


def test_the_python_clients_log_in_with_a_token(ws_broker: BrokerThread) -> None:
    from maitred.transports.ws.client import JsonClient, MmClient

    url = ws_broker.endpoints["ws"][0]

    async def main() -> None:
        mm = await MmClient.connect(url, token=TOKEN, timeout=5)
        try:
            assert len(mm.cid) == 20
        finally:
            await mm.ws.close()
        async with await JsonClient.connect(url, token=TOKEN, name="n", timeout=5) as client:
            assert client.welcome.trusted
        with pytest.raises(MaitredError, match="refused: bad token"):
            await MmClient.connect(url, token=OTHER, timeout=5)
        with pytest.raises(MaitredError, match="refused: bad token"):
            await JsonClient.connect(url, token=OTHER, timeout=5)

    asyncio.run(main())


def test_the_same_key_twice_from_two_places_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAITRED_TEST_WS_KEY", "same")
    toml = '[transports.ws]\nlisten = "127.0.0.1:0"\n[[transports.ws.keys]]\nkey = "same"\n'
    toml += '[[transports.ws.keys]]\nkey_env = "MAITRED_TEST_WS_KEY"\n'
    assert "transports.ws.keys[1]: the same key as another entry" in _refused_at_start(toml)


def test_a_reload_with_a_key_file_others_can_read_changes_nothing(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("one\n")
    keyfile.chmod(0o600)
    toml = NO_MDP + '[transports.ws]\nlisten = "127.0.0.1:0"\nping_interval = 0\n'
    toml += f'[[transports.ws.keys]]\nkey_file = "{keyfile}"\n'

    async def main() -> None:
        broker = build_broker(parse_config(toml, "a.toml"))
        await broker.start()
        try:
            keyfile.write_text("two\n")
            keyfile.chmod(0o644)
            with pytest.raises(MaitredError, match=f"chmod 600 {keyfile}"):
                broker.reload(parse_config(toml, "a.toml"))  # the file is read again
            (url,) = broker.endpoints()["ws"]
            async with aconnect(url) as ws:  # the key read at start still works
                await ws.send("one")
                assert await asyncio.wait_for(ws.recv(), 5) == "MM OK"
        finally:
            await broker.stop(0)

    asyncio.run(main())


def test_the_cli_logs_in_with_the_token_flag(
    ws_broker: BrokerThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from maitred.core import cli

    monkeypatch.delenv("MAITRED_TOKEN", raising=False)
    monkeypatch.delenv("MAITRED_WS_KEY", raising=False)
    url = ws_broker.endpoints["ws"][0]
    assert cli.main(["services", "--json", "-b", url, "--token", TOKEN]) == cli.EXIT_OK
    assert isinstance(json.loads(capsys.readouterr().out), list)
    # the token from the environment, as --token leaves it for the clients
    monkeypatch.setenv("MAITRED_TOKEN", TOKEN)
    assert cli.main(["info", "--json", "-b", url]) == cli.EXIT_OK
    capsys.readouterr()
    monkeypatch.delenv("MAITRED_TOKEN")
    # a wrong token, and no token (the development key is not configured here): refused
    assert cli.main(["services", "-b", url, "--token", OTHER]) == cli.EXIT_REFUSED
    assert "bad token" in capsys.readouterr().err
    assert cli.main(["services", "-b", url]) == cli.EXIT_REFUSED
