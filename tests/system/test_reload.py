"""Reload: SIGHUP (or ``maitred reload``) re-reads the config file; service policies and access
rules change at once without dropping a connection; listen addresses stay and are reported.
A real ``maitred serve`` subprocess, real sockets, the CLI as a subprocess."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from maitred.core import cli
from maitred.plugins.testing import ServeProcess

MAITRED = [sys.executable, "-m", "maitred.core"]

BASE = """
[broker]
store = "memory"
[transports.mdp]
endpoints = ["{mdp}"]
[transports.http]
listen = ["127.0.0.1:0"]
switch = false
"""


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAITRED, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.02)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ServeProcess, Path, str]]:
    conf = tmp_path / "maitred.toml"
    conf.write_text(BASE.format(mdp="tcp://127.0.0.1:0"))
    ready = tmp_path / "ready.json"
    serve = ServeProcess("-c", str(conf), "--ready-file", str(ready))
    yield serve, conf, str(ready)
    serve.close()


@pytest.mark.slow
def test_sighup_applies_policies_and_access_without_dropping_a_connection(
    setup: tuple[ServeProcess, Path, str],
) -> None:
    serve, conf, ready = setup
    mdp = serve.endpoints["mdp"][0]
    http = serve.endpoints["http"][0]
    proc = subprocess.Popen(
        [*MAITRED, "worker", "echo", "--program", "cat", "-b", mdp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert run("call", "echo", "before", "-b", mdp, "-t", "20").stdout == "before\n"
        # before: a service without a worker waits (the default policy), so the call times out
        assert run("call", "nowork", "x", "-b", http, "-t", "0.5").returncode == cli.EXIT_TIMEOUT
        conf.write_text(
            BASE.format(mdp="tcp://127.0.0.1:1")  # a new address: cannot change while running
            + '[services.nowork]\non_no_worker = "fail"\n'
            + '[[access.rules]]\nallow = false\nnames = ["secret.>"]\n'
        )
        result = run("reload", "--ready-file", ready)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: "reloaded " in serve.log(), "the reload is logged")
        assert "applied [services], [access]" in serve.log()
        assert (
            "reload: [transports.mdp.endpoints] changed in " in serve.log()
            and "cannot change while running" in serve.log()
        )
        # the policy: no worker now fails at once with 503
        failed = run("call", "nowork", "x", "-b", http, "-t", "20")
        assert failed.returncode == cli.EXIT_ERROR_REPLY
        assert "503 NO_WORKER" in failed.stderr
        # the access rule: refused
        denied = run("call", "secret.x", "y", "-b", http, "-t", "20")
        assert denied.returncode == cli.EXIT_REFUSED, denied.stderr
        # the old address still listens and the worker's connection was kept: it still answers
        assert run("call", "echo", "after", "-b", mdp, "-t", "20").stdout == "after\n"
        workers = run("workers", "--json", "-b", http)
        assert '"served": 2' in workers.stdout, workers.stdout
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_a_bad_file_on_reload_changes_nothing(setup: tuple[ServeProcess, Path, str]) -> None:
    serve, conf, _ = setup
    http = serve.endpoints["http"][0]
    conf.write_text(BASE.format(mdp="tcp://127.0.0.1:0") + "[services.x]\nbogus = 1\n")
    assert run("reload", "--pid", str(serve.pid)).returncode == 0
    wait_for(lambda: "reload refused" in serve.log(), "the refusal is logged")
    assert "the running config stays" in serve.log()
    assert "Object contains unknown field `bogus`" in serve.log()
    info = run("info", "-b", http)
    assert info.returncode == 0 and "running" in info.stdout


def test_reload_of_a_process_that_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ready = tmp_path / "ready.json"
    ready.write_text('{"pid": 999999999, "endpoints": {}}')
    assert cli.main(["reload", "--ready-file", str(ready)]) == cli.EXIT_UNREACHABLE
    assert "pid 999999999: no such process" in capsys.readouterr().err
    assert cli.main(["reload", "--ready-file", str(tmp_path / "none")]) == cli.EXIT_UNREACHABLE
    ready.write_text("garbage")
    assert cli.main(["reload", "--ready-file", str(ready)]) == cli.EXIT_USAGE


# -- keys and certificates of the WebSocket transport -----------------------------------------

WS = """
[broker]
store = "memory"
[transports.ws]
listen = "{listen}"
ping_interval = 0
{tls}
[[transports.ws.keys]]
key = "{key}"
trusted = true
"""


def make_cert(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def fingerprint(ws: ClientConnection) -> str:
    sock = ws.socket
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def login(
    stack: ExitStack, url: str, key: str, context: ssl.SSLContext | None = None
) -> ClientConnection:
    ws = stack.enter_context(connect(url, ssl=context, open_timeout=10))
    ws.send(key)
    assert ws.recv(timeout=10) == "MM OK"
    ws.recv(timeout=10)  # the connection id
    return ws


def still_works(ws: ClientConnection, topic: str) -> None:
    """The connection is open and served: it hears what it publishes itself."""
    ws.send(f"SUB {topic}\r\n\r\n.\r\n")
    ws.send(f"PUB {topic}\r\n\r\nping\r\n.\r\n")
    got = ws.recv(timeout=10)
    assert isinstance(got, str) and got.startswith(f"PUB {topic}\r\n") and "ping" in got


def ws_serve(tmp_path: Path, text: str) -> tuple[ServeProcess, Path, str]:
    conf = tmp_path / "maitred.toml"
    conf.write_text(text)
    ready = tmp_path / "ready.json"
    return ServeProcess("-c", str(conf), "--ready-file", str(ready)), conf, str(ready)


def reload_and_wait(serve: ServeProcess, ready: str, count: int = 1) -> None:
    result = run("reload", "--ready-file", ready)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: serve.log().count("reloaded ") >= count, "the reload is logged")


@pytest.mark.slow
def test_reload_loads_a_new_certificate_for_new_wss_connections(
    tmp_path: Path, stack: ExitStack
) -> None:
    cert_a, key_a = make_cert(tmp_path, "a")
    cert_b, key_b = make_cert(tmp_path, "b")
    cafile = tmp_path / "ca.pem"
    cafile.write_text(cert_a.read_text() + cert_b.read_text())
    context = ssl.create_default_context(cafile=str(cafile))
    tls = 'tls_cert = "{}"\ntls_key = "{}"'
    serve, conf, ready = ws_serve(
        tmp_path, WS.format(listen="127.0.0.1:0", tls=tls.format(cert_a, key_a), key="k1")
    )
    try:
        url = serve.endpoints["ws"][0]
        assert url.startswith("wss://")
        old = login(stack, url, "k1", context)
        assert fingerprint(old) == file_fingerprint(cert_a)
        conf.write_text(WS.format(listen=url, tls=tls.format(cert_b, key_b), key="k1"))
        reload_and_wait(serve, ready)
        assert "applied [transports.ws.tls_cert], [transports.ws.tls_key]" in serve.log()
        new = login(stack, url, "k1", context)
        assert fingerprint(new) == file_fingerprint(cert_b)
        still_works(old, "old")
        still_works(new, "new")
        assert fingerprint(old) == file_fingerprint(cert_a)
    finally:
        serve.close()


@pytest.mark.slow
def test_a_certificate_that_does_not_load_changes_nothing(tmp_path: Path, stack: ExitStack) -> None:
    cert_a, key_a = make_cert(tmp_path, "a")
    cert_b, _ = make_cert(tmp_path, "b")
    tls = 'tls_cert = "{}"\ntls_key = "{}"'
    serve, conf, ready = ws_serve(
        tmp_path, WS.format(listen="127.0.0.1:0", tls=tls.format(cert_a, key_a), key="k1")
    )
    try:
        url = serve.endpoints["ws"][0]
        # a certificate with the key of another: the file is refused whole (the key too)
        conf.write_text(WS.format(listen=url, tls=tls.format(cert_b, key_a), key="k2"))
        assert run("reload", "--ready-file", ready).returncode == 0
        wait_for(lambda: "reload refused" in serve.log(), "the refusal is logged")
        assert "transports.ws: ws: cannot load TLS cert/key" in serve.log()
        context = ssl.create_default_context(cafile=str(cert_a))
        ws = login(stack, url, "k1", context)
        assert fingerprint(ws) == file_fingerprint(cert_a)
    finally:
        serve.close()


@pytest.mark.slow
def test_reload_applies_new_keys_to_new_connections_and_keeps_open_ones(
    tmp_path: Path, stack: ExitStack
) -> None:
    serve, conf, ready = ws_serve(tmp_path, WS.format(listen="127.0.0.1:0", tls="", key="k1"))
    try:
        url = serve.endpoints["ws"][0]
        old = login(stack, url, "k1")
        conf.write_text(WS.format(listen=url, tls="", key="k2"))
        reload_and_wait(serve, ready)
        assert "applied [transports.ws.keys]" in serve.log()
        new = login(stack, url, "k2")
        still_works(new, "new")
        # the key the old connection used is gone for new connections; it keeps its identity
        with connect(url, open_timeout=10) as refused:
            refused.send("k1")
            with pytest.raises(ConnectionClosed) as closed:
                refused.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        still_works(old, "old")
    finally:
        serve.close()


@pytest.mark.slow
def test_a_new_listen_address_is_reported_and_the_old_one_still_serves(
    tmp_path: Path, stack: ExitStack
) -> None:
    serve, conf, ready = ws_serve(tmp_path, WS.format(listen="127.0.0.1:0", tls="", key="k1"))
    try:
        url = serve.endpoints["ws"][0]
        old = login(stack, url, "k1")
        conf.write_text(WS.format(listen="127.0.0.1:1", tls="", key="k1"))
        reload_and_wait(serve, ready)
        assert "applied nothing (no change)" in serve.log()
        assert "reload: [transports.ws.listen] changed in " in serve.log()
        assert "cannot change while running" in serve.log()
        new = login(stack, url, "k1")
        still_works(old, "old")
        still_works(new, "new")
    finally:
        serve.close()
