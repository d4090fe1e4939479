"""The ws transport as a whole: registration and ``--ws``, config checks, wss://, shutdown,
handshake timeout."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from maitred.core.app import build_broker, transport_specs
from maitred.core.config import parse_config
from maitred.core.errors import ConfigError, ErrorCode, MaitredError
from maitred.plugins.manager import make_plugin_manager
from maitred.transports.ws.adapter import WsConfig, WsTransport, split_address
from maitred.transports.ws.client import JsonClient, MmClient, payload_of

NO_MDP = "[transports.mdp]\nenabled = false\n"


def test_plugin_registers_ws_with_cli_flag() -> None:
    specs = transport_specs(make_plugin_manager())
    spec = specs["ws"]
    assert spec.config_type is WsConfig
    assert spec.cli_addresses is not None
    assert spec.cli_addresses(["127.0.0.1:9"]) == {"listen": ["127.0.0.1:9"]}


def test_serve_with_ws_flag_and_stop_says_going_away() -> None:
    async def main() -> None:
        broker = build_broker(parse_config(NO_MDP), addresses={"ws": ["127.0.0.1:0"]})
        await broker.start()
        try:
            (endpoint,) = broker.endpoints()["ws"]
            assert endpoint.startswith("ws://127.0.0.1:") and not endpoint.endswith(":0")
            mm = await MmClient.connect(endpoint, "xyzzy")
            await mm.send("SUB", "x")
        finally:
            await broker.stop(0)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(mm.recv(), 5)
        assert mm.ws.close_code == 1001

    asyncio.run(main())


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('listen = "nope"', "listen"),
        ('tls_cert = "a.pem"', "tls_cert and tls_key"),
        ('tls_cert = "/nonexistent/a.pem"\ntls_key = "/nonexistent/a.key"', "no such file"),
        ("keys = []", "keys"),
        ('keys = [{key = "a"}, {key = "a"}]', "twice"),
        ("outbox = 0", "outbox"),
        ("ping_interval = -1", "ping_interval"),
        ('slow_consumer = "block"', "slow_consumer"),
    ],
)
def test_config_problems(toml: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_broker(parse_config(NO_MDP + "[transports.ws]\n" + toml + "\n"))
    assert problem in str(info.value)


def test_split_address() -> None:
    assert split_address("127.0.0.1:8764") == ("127.0.0.1", 8764)
    assert split_address("ws://[::1]:0/") == ("::1", 0)
    assert split_address(":80") == ("127.0.0.1", 80)
    with pytest.raises(ValueError):
        split_address("host")


def test_wss_with_configured_keys(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    toml = (
        NO_MDP
        + '[transports.ws]\nlisten = "127.0.0.1:0"\nping_interval = 0\n'
        + f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        + '[[transports.ws.keys]]\nkey = "s3cret"\ntrusted = true\nidentity = "ops"\n'
    )

    async def main() -> None:
        broker = build_broker(parse_config(toml))
        await broker.start()
        try:
            (endpoint,) = broker.endpoints()["ws"]
            assert endpoint.startswith("wss://")
            context = ssl.create_default_context(cafile=str(cert))
            async with connect(endpoint, ssl=context) as ws:
                await ws.send("s3cret")
                assert await asyncio.wait_for(ws.recv(), 5) == "MM OK"
            # the dev keys are gone once keys are configured
            async with connect(endpoint, ssl=context) as ws:
                await ws.send("xyzzy")
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 1008
        finally:
            await broker.stop(0)

    asyncio.run(main())


def test_handshake_timeout_closes_1008() -> None:
    toml = NO_MDP + '[transports.ws]\nlisten = "127.0.0.1:0"\nhandshake_timeout = 0.2\n'

    async def main() -> None:
        broker = build_broker(parse_config(toml))
        await broker.start()
        try:
            (endpoint,) = broker.endpoints()["ws"]
            async with connect(endpoint) as ws:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 1008 and ws.close_reason == "no key in time"
        finally:
            await broker.stop(0)

    asyncio.run(main())


def test_embedded_json_roundtrip_through_mmi() -> None:
    async def main() -> None:
        broker = build_broker(parse_config(NO_MDP), addresses={"ws": ["127.0.0.1:0"]})
        await broker.start()
        try:
            (endpoint,) = broker.endpoints()["ws"]
            async with await JsonClient.connect(endpoint, "xyzzy") as client:
                reply = await client.request("mmi.info", data=b"")
                info = payload_of(reply)
                assert "ws" in info["transports"]
            # an untrusted client may not (restricted: nothing was granted)
            async with await JsonClient.connect(endpoint, "plugh") as client:
                with pytest.raises(MaitredError) as exc:
                    await client.request("mmi.info", data=b"")
                assert exc.value.code == ErrorCode.FORBIDDEN
        finally:
            await broker.stop(0)

    asyncio.run(main())


def test_reload_turning_tls_on_waits_for_a_restart(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    toml = NO_MDP + '[transports.ws]\nlisten = "127.0.0.1:0"\nping_interval = 0\n'

    async def main() -> None:
        broker = build_broker(parse_config(toml, "a.toml"))
        await broker.start()
        try:
            new = toml + f'tls_cert = "{cert}"\ntls_key = "{key}"\ngrant_role = "g"\n'
            result = broker.reload(parse_config(new, "a.toml"))
            # ws:// to wss:// needs new listeners; grant_role applies at once
            assert result["applied"] == ["transports.ws.grant_role"]
            assert "transports.ws.tls_cert" in result["unchanged"]
            assert "transports.ws.tls_key" in result["unchanged"]
            ws = broker.transport("ws")
            assert isinstance(ws, WsTransport)
            assert ws.config.grant_role == "g" and ws.config.tls_cert == ""
            (endpoint,) = broker.endpoints()["ws"]
            assert endpoint.startswith("ws://")
            async with connect(endpoint) as conn:
                await conn.send("xyzzy")
                assert await asyncio.wait_for(conn.recv(), 5) == "MM OK"
        finally:
            await broker.stop()

    asyncio.run(main())
