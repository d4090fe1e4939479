"""docs/howto/operators.md, "Securing maitred": the WebSocket steps and the secrets check, run as
written. The shell lines that make a token, the TOML of step 2 (paths and the digest put in,
127.0.0.1 port 0), ``maitred check`` on it (quiet when the files are right, the documented lines
when they are not), then a wss:// broker: the token's identity may subscribe to ``public.>`` and
not call, the key file's middleman service works, a wrong token is refused 1008. Rotation by
reload: tests/e2e/test_ws_tokens.py::test_reload_applies_the_token_table_to_new_connections."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import textwrap
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from maitred.core import cli
from maitred.core.app import build_broker
from maitred.core.config import parse_config
from maitred.core.credentials import new_token, token_digest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "howto" / "operators.md").read_text()
SECTION = DOC.split("### WebSocket (keys and tokens)", 1)[1].split("\n## ", 1)[0]


def blocks(kind: str, text: str = SECTION) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(rf"```{kind}\n(.*?)```", text, re.S)]


def test_step_1_the_token_and_its_digest() -> None:
    (shell,) = blocks("sh")
    got = subprocess.run(
        ["bash", "-c", shell + 'printf "%s\\n" "$TOKEN"'],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    digest_line, token = got.stdout.splitlines()
    assert len(token) == 43
    assert digest_line.split()[0] == token_digest(token)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict[str, Path], str]:
    """The config of step 2 with its files made (as the doc says: mode 0600) and a token."""
    cert, key = tmp_path / "ws.crt", tmp_path / "ws.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    keyfile = tmp_path / "ws-backend.key"
    keyfile.write_text("backend-secret\n")
    keyfile.chmod(0o600)
    token, digest = new_token()
    (toml,) = blocks("toml")
    toml = (
        toml.replace("/etc/maitred/tls/ws.crt", str(cert))
        .replace("/etc/maitred/tls/ws.key", str(key))
        .replace("/etc/maitred/keys/ws-backend.key", str(keyfile))
        .replace("<the sha256 of its token>", digest)
        .replace("0.0.0.0:8764", "127.0.0.1:0")
    )
    conf = tmp_path / "maitred.toml"
    conf.write_text("[transports.mdp]\nenabled = false\n" + toml)
    return conf, {"cert": cert, "key": key, "keyfile": keyfile}, token


def test_step_3_check_is_quiet_then_says_what_the_doc_says(
    setup: tuple[Path, dict[str, Path], str], capsys: pytest.CaptureFixture[str]
) -> None:
    conf, files, _ = setup
    assert cli.main(["check", "-c", str(conf)]) == 0
    files["key"].chmod(0o644)
    files["keyfile"].chmod(0o640)
    capsys.readouterr()
    assert cli.main(["check", "-c", str(conf)]) == 2
    err = capsys.readouterr().err
    (console,) = blocks("console", DOC.split("### Secrets and `maitred check`", 1)[1])
    for line in console.splitlines()[1:]:
        expected = (
            line.replace("/etc/maitred/maitred.toml", str(conf))
            .replace("/etc/maitred/tls/ws.key", str(files["key"]))
            .replace("/etc/maitred/keys/ws-backend.key", str(files["keyfile"]))
        )
        assert expected in err, (expected, err)


def test_steps_4_and_5_connect_with_the_token_and_the_key(
    setup: tuple[Path, dict[str, Path], str],
) -> None:
    conf, files, token = setup
    context = ssl.create_default_context(cafile=str(files["cert"]))

    async def main() -> None:
        broker = build_broker(parse_config(conf.read_text(), str(conf)))
        await broker.start()
        try:
            (url,) = broker.endpoints()["ws"]
            assert url.startswith("wss://")
            # the middleman service, with its key from the key file
            async with connect(url, ssl=context) as service:
                await service.send("backend-secret")
                assert await asyncio.wait_for(service.recv(), 5) == "MM OK"
                await service.recv()
                await service.send("EREQ work\r\n\r\n.\r\n")
                # the dashboard, with its token in the query (as a browser page would)
                page = f"{url}/?access_token={token}"
                json_dialect = [Subprotocol("maitred.json")]
                async with connect(page, ssl=context, subprotocols=json_dialect) as ws:
                    await ws.send(json.dumps({"type": "hello"}))
                    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    assert welcome["type"] == "welcome"
                    await ws.send(json.dumps({"type": "subscribe", "id": 1, "topic": "public.>"}))
                    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ack"
                    await service.send("PUB public.news\r\n\r\nhello\r\n.\r\n")
                    event = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    assert event["type"] == "event" and event["topic"] == "public.news"
                    await ws.send(json.dumps({"type": "request", "id": 2, "destination": "work"}))
                    denied = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    assert (denied["type"], denied["code"]) == ("error", 403)
                # step 5: a wrong token
                async with connect(f"{url}/?access_token=nope", ssl=context) as wrong:
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(wrong.recv(), 5)
                    assert (wrong.close_code, wrong.close_reason) == (1008, "bad token")
            assert broker.router.stats["denied.authenticate.ws"] == 1
        finally:
            await broker.stop(0)

    asyncio.run(main())
