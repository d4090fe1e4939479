"""The preflight helpers and the broker-address probe, without a broker."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from maitred.core import cli
from maitred.core.preflight import (
    Problem,
    check_each,
    check_file,
    check_host_port,
    check_readable,
    check_tls,
    check_unix_path,
    check_writable_file,
)
from maitred.core.reach import Unreachable, address_of, probe


def test_check_each_names_every_value_that_fails() -> None:
    assert check_each("listen", ["127.0.0.1:1", "nowhere", "[::1:2"], check_host_port) == [
        Problem("listen", "'nowhere': not HOST:PORT (no port); write e.g. nowhere:8080", "nowhere"),
        Problem(
            "listen", "'[::1:2': unbalanced brackets; write an IPv6 host as [::1]:PORT", "[::1:2"
        ),
    ]
    assert check_each("listen", [], check_host_port) == []


def test_check_file_only_when_set(tmp_path: Path) -> None:
    missing = str(tmp_path / "ca.pem")
    [problem] = check_file("tls_client_ca", missing, check_readable)
    assert problem.key == "tls_client_ca" and missing in problem.text and problem.value is None
    assert check_file("tls_client_ca", "", check_readable) == []
    (tmp_path / "ca.pem").write_text("x")
    assert check_file("tls_client_ca", missing, check_readable) == []


@pytest.mark.parametrize(
    ("addr", "problem"),
    [
        ("127.0.0.1:0", None),
        ("*:8080", None),
        ("0.0.0.0:1", None),
        ("[::1]:0", None),
        ("localhost:65535", None),
        ("127.0.0.1", "not HOST:PORT (no port); write e.g. 127.0.0.1:8080"),
        ("127.0.0.1:", "not HOST:PORT (no port)"),
        ("[::1:80", "unbalanced brackets"),
        ("127.0.0.1:65536", "port 65536 is out of range"),
        ("127.0.0.1:-1", "the port '-1' is not a number"),
        ("tcp://127.0.0.1:80", "no tcp:// here; write HOST:PORT, e.g. 127.0.0.1:80"),
    ],
)
def test_host_port(addr: str, problem: str | None) -> None:
    found = check_host_port(addr)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


def test_host_port_with_allowed_schemes() -> None:
    assert check_host_port("wss://127.0.0.1:0/", schemes=("ws://", "wss://")) is None


def test_unix_path(tmp_path: Path) -> None:
    assert "empty socket path" in (check_unix_path("", "unix:") or "")
    assert check_unix_path(str(tmp_path / "s.sock"), "unix:x") is None


def test_readable(tmp_path: Path) -> None:
    assert check_readable(str(tmp_path)) == f"{str(tmp_path)!r}: is a directory, not a PEM file"
    assert check_readable(str(tmp_path / "none")) == f"{str(tmp_path / 'none')!r}: no such file"


def test_tls_key_that_is_no_key(tmp_path: Path) -> None:
    import subprocess

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=x", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    [problem] = check_tls(str(cert), str(junk))
    assert problem.key == "tls_key" and "holds no usable PEM private key" in problem.text
    assert check_tls("", "") == []


def test_writable_file(tmp_path: Path) -> None:
    assert check_writable_file(tmp_path / "a" / "b.sqlite3") is None
    existing = tmp_path / "e.sqlite3"
    existing.write_text("")
    assert check_writable_file(existing) is None
    assert "is a directory; give a file name" in (check_writable_file(tmp_path) or "")


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("tcp://127.0.0.1:5555", ("tcp", ("127.0.0.1", 5555))),
        ("tcp://*:5555", ("tcp", ("127.0.0.1", 5555))),
        ("ipc:///run/m.ipc", ("unix", "/run/m.ipc")),
        ("unix:/run/h.sock", ("unix", "/run/h.sock")),
        ("http://example.com", ("tcp", ("example.com", 80))),
        ("wss://h:9", ("tcp", ("h", 9))),
        ("line://127.0.0.1:7", None),
    ],
)
def test_address_of(url: str, where: object) -> None:
    assert address_of(url) == where


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("tcp://127.0.0.1:99999", "bad port"),
        ("tcp://", "no host:port"),
        ("tcp://no-such-host.invalid:1", "unknown host"),
    ],
)
def test_probe_refuses_bad_addresses(url: str, text: str) -> None:
    with pytest.raises(Unreachable, match=text):
        probe(url)


def test_probe_finds_a_listener_and_plugin_schemes_pass() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        probe(f"tcp://127.0.0.1:{srv.getsockname()[1]}")
    probe("line://127.0.0.1:1")  # a plugin's scheme: not probed


def test_show_escapes_and_cuts() -> None:
    assert cli.show(b"a\x01b\xff") == "a\\x01b\\xff"
    assert cli.show(b"x" * 300, limit=5) == "xxxxx… (300 bytes)"


def test_unknown_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["services", "-b", "nope://x"]) == cli.EXIT_USAGE
    assert "no installed transport plugin speaks 'nope://x'" in capsys.readouterr().err
