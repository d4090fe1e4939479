"""``maitred check`` finds what ``serve`` would fail on, and says where and how to fix it.

One test per message. Where the command line itself matters (flags, exit status, no traceback,
``serve`` running the same checks) the command runs as a subprocess; the others call
``cli.main`` in-process (the same code, faster). Permission cases run with the effective user
switched to ``nobody`` when the suite runs as root (root may read and write anything).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from maitred.core import cli

MAITRED = [sys.executable, "-m", "maitred.core"]
NOBODY = 65534


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAITRED, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def check(path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = cli.main(["check", "-c", str(path), *flags])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture
def conf(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "maitred.toml"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


NO_MDP = "[transports.mdp]\nenabled = false\n"


# -- addresses ------------------------------------------------------------------------------


@pytest.mark.slow
def test_mdp_port_out_of_range_is_found_by_check_and_serve(conf: Path) -> None:
    write(conf, '[transports.mdp]\nendpoints = ["tcp://127.0.0.1:99999"]\n')
    for verb in ("check", "serve"):
        result = run(verb, "-c", str(conf))
        assert result.returncode == 2, result
        assert result.stderr == (
            f"maitred: {conf}: transports.mdp.endpoints: 'tcp://127.0.0.1:99999': port 99999 "
            "is out of range; use a port from 0 to 65535 (0: any free port)\n"
        )


@pytest.mark.slow
def test_http_port_out_of_range_is_no_traceback(conf: Path) -> None:
    write(conf, NO_MDP + '[transports.http]\nlisten = ["127.0.0.1:70000"]\n')
    result = run("serve", "-c", str(conf))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "OverflowError" not in result.stderr
    assert f"{conf}: transports.http.listen: '127.0.0.1:70000': port 70000" in result.stderr


def test_http_listen_with_a_scheme(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, NO_MDP + '[transports.http]\nlisten = ["http://127.0.0.1:8080"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert (
        f"{conf}: transports.http.listen: 'http://127.0.0.1:8080': no http:// here; "
        "write HOST:PORT, e.g. 127.0.0.1:8080" in err
    )


def test_port_that_is_not_a_number(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, NO_MDP + '[transports.ws]\nlisten = "127.0.0.1:http"\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert "transports.ws.listen: '127.0.0.1:http': the port 'http' is not a number" in err


def test_ws_listen_takes_ws_and_wss_but_no_other_scheme(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(conf, NO_MDP + '[transports.ws]\nlisten = ["ws://127.0.0.1:0", "tcp://127.0.0.1:0"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert "'tcp://127.0.0.1:0': no tcp:// here (allowed: ws://, wss://)" in err
    assert "'ws://127.0.0.1:0'" not in err


def test_host_that_does_not_resolve(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, NO_MDP + '[transports.http]\nlisten = ["no-such-host.invalid:8080"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert "transports.http.listen: 'no-such-host.invalid:8080': the host " in err
    assert "does not resolve" in err and "use an IP address" in err


def test_mdp_scheme_it_does_not_bind(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, '[transports.mdp]\nendpoints = ["udp://127.0.0.1:5555"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert "scheme udp:// is not one MDP binds; use tcp://, ipc:// or inproc://" in err


def test_mdp_tcp_without_port(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, '[transports.mdp]\nendpoints = ["tcp://127.0.0.1"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert "'tcp://127.0.0.1': no port; write tcp://HOST:PORT" in err


def test_pubsub_endpoints_are_checked(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        conf,
        '[transports.mdp]\nendpoints = ["tcp://127.0.0.1:0"]\n'
        'pub_endpoints = ["tcp://127.0.0.1"]\npublish_endpoints = ["tcp://127.0.0.1:99999"]\n',
    )
    code, err = check(conf, capsys)
    assert code == 2
    assert "transports.mdp.pub_endpoints: 'tcp://127.0.0.1': no port" in err
    assert "transports.mdp.publish_endpoints: 'tcp://127.0.0.1:99999': port 99999" in err


def test_every_problem_at_once(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        conf,
        '[transports.mdp]\nendpoints = ["tcp://127.0.0.1:99999", "tcp://*:0", "inproc://x"]\n'
        '[transports.ws]\nlisten = ["127.0.0.1:70000"]\n',
    )
    code, err = check(conf, capsys)
    assert code == 2
    assert err.count("\n") == 2  # one line each, nothing for the good endpoints
    assert "transports.mdp.endpoints" in err and "transports.ws.listen" in err


@pytest.mark.slow
def test_a_flag_is_named_instead_of_embedded_defaults() -> None:
    result = run("serve", "--mdp", "127.0.0.1:5620")
    assert result.returncode == 2
    assert "<embedded defaults>" not in result.stderr
    assert result.stderr == (
        "maitred: --mdp: '127.0.0.1:5620' is not a ZeroMQ endpoint (no scheme); write "
        "tcp://127.0.0.1:5620 (or ipc:///path, inproc://name)\n"
    )


def test_check_takes_the_address_flags_too(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, NO_MDP)
    code, err = check(conf, capsys, "--http", "127.0.0.1:70000")
    assert code == 2
    assert err.startswith("maitred: --http: '127.0.0.1:70000': port 70000 is out of range")


# -- Unix sockets ---------------------------------------------------------------------------


def test_unix_socket_directory_missing(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, NO_MDP + '[transports.http]\nlisten = ["unix:/nonexistent/http.sock"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert (
        "transports.http.listen: 'unix:/nonexistent/http.sock': the directory '/nonexistent' "
        "does not exist; create it first" in err
    )


def test_ipc_directory_missing(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, '[transports.mdp]\nendpoints = ["ipc:///nonexistent/mdp.ipc"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert "transports.mdp.endpoints: 'ipc:///nonexistent/mdp.ipc': the directory" in err


def test_unix_socket_path_too_long(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = tmp_path / ("s" * 120)
    write(conf, NO_MDP + f'[transports.http]\nlisten = ["unix:{long}"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert "longer than the 107 a Unix socket allows; use a shorter path" in err


def test_unix_socket_path_is_a_file(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.sock").write_text("not a socket")
    write(conf, NO_MDP + f'[transports.http]\nlisten = ["unix:{tmp_path}/a.sock"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert "exists and is not a socket; remove it or choose another path" in err


def test_a_stale_socket_is_no_problem(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    write(conf, NO_MDP + f'[transports.http]\nlisten = ["unix:{path}"]\nswitch = false\n')
    assert check(conf, capsys) == (0, "")


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Run the block with the effective user ``nobody`` when the suite runs as root."""
    if os.geteuid() != 0:
        yield
        return
    # what the check imports lazily, imported first (nobody cannot read root's Python)
    import http.client  # noqa: F401
    import sqlite3  # noqa: F401

    import maitred.core.preflight
    import maitred.transports.http.client  # noqa: F401

    cli.main(["plugins"])  # loads every entry point
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may read (tmp_path is root's alone when the suite is root)."""
    path = Path(tempfile.mkdtemp(prefix="maitred-check-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unix_socket_directory_not_writable(
    shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o555)
    conf = write(
        shared_dir / "c.toml",
        NO_MDP + f'[transports.http]\nlisten = ["unix:{locked}/h.sock"]\nswitch = false\n',
    )
    conf.chmod(0o644)
    capsys.readouterr()
    with as_nobody():
        code, err = check(conf, capsys)
    assert code == 2, err
    assert f"the directory '{locked}' is not writable by this user" in err


# -- TLS ------------------------------------------------------------------------------------


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def ws_tls(cert: Path | str, key: Path | str) -> str:
    return (
        NO_MDP
        + f'[transports.ws]\nlisten = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )


def test_tls_good_pair_passes(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = make_cert(tmp_path, "a")
    write(conf, ws_tls(cert, key))
    assert check(conf, capsys) == (0, "")


def test_tls_key_not_readable(shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = make_cert(shared_dir, "a")
    cert.chmod(0o644)
    key.chmod(0o600)  # the key of another user (root's, or ours for nobody)
    conf = write(shared_dir / "c.toml", ws_tls(cert, key))
    conf.chmod(0o644)
    capsys.readouterr()
    with as_nobody():
        code, err = check(conf, capsys)
    assert code == 2
    assert (
        f"transports.ws.tls_key: '{key}': not readable by this user (permission denied); fix "
        "its permissions" in err
    )


def test_tls_key_of_another_certificate(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = make_cert(tmp_path, "a")
    _, other_key = make_cert(tmp_path, "b")
    write(conf, ws_tls(cert, other_key))
    code, err = check(conf, capsys)
    assert code == 2
    assert (
        f"transports.ws.tls_key: '{other_key}' is not the key of the certificate '{cert}'; give "
        "the key the certificate was made with" in err
    )


def test_tls_cert_and_key_swapped(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = make_cert(tmp_path, "a")
    write(conf, ws_tls(key, cert))
    code, err = check(conf, capsys)
    assert code == 2
    assert (
        f"transports.ws.tls_cert: '{key}' and '{cert}' are swapped (tls_cert holds the key); "
        "exchange tls_cert and tls_key" in err
    )


def test_tls_cert_that_is_no_certificate(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, key = make_cert(tmp_path, "a")
    junk = write(tmp_path / "junk.crt", "hello\n")
    write(conf, ws_tls(junk, key))
    code, err = check(conf, capsys)
    assert code == 2
    assert f"transports.ws.tls_cert: '{junk}' holds no PEM certificate" in err


def test_tls_cert_without_key(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = make_cert(tmp_path, "a")
    write(conf, NO_MDP + f'[transports.ws]\nlisten = "127.0.0.1:0"\ntls_cert = "{cert}"\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert "transports.ws.tls_key: tls_cert and tls_key go together; set tls_key too" in err


def test_tls_file_missing(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, ws_tls("/nonexistent/a.crt", "/nonexistent/a.key"))
    code, err = check(conf, capsys)
    assert code == 2
    assert "transports.ws.tls_cert: '/nonexistent/a.crt': no such file" in err


# -- stores ---------------------------------------------------------------------------------


def test_service_store_not_writable(shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write(
        shared_dir / "c.toml",
        '[transports.mdp]\nendpoints = ["inproc://x"]\n'
        '[broker]\nstore_path = "/nonexistent/services.sqlite3"\n'
        '[services.default]\non_no_worker = "store"\n',
    )
    conf.chmod(0o644)
    capsys.readouterr()
    with as_nobody():
        code, err = check(conf, capsys)
    assert code == 2
    assert (
        f"{conf}: broker.store_path: the store '/nonexistent/services.sqlite3' cannot be "
        "created: '/' is not writable by this user (to create '/nonexistent'); choose a "
        "writable path or create the directory for this user" in err
    )


def test_switch_store_under_a_file(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = write(tmp_path / "plain", "x")
    write(
        conf,
        NO_MDP + f'[transports.http]\nlisten = ["127.0.0.1:0"]\nstore_path = "{plain}/s.sqlite3"\n',
    )
    code, err = check(conf, capsys)
    assert code == 2
    assert f"transports.http.store_path: the store '{plain}' is not a directory" in err


def test_store_path_under_a_file(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # [store] path: the one store of store services and switch queues alike
    plain = write(tmp_path / "plain", "x")
    write(
        conf,
        '[transports.mdp]\nendpoints = ["inproc://x"]\n'
        f'[store]\npath = "{plain}/s.sqlite3"\n[services.default]\non_no_worker = "store"\n',
    )
    code, err = check(conf, capsys)
    assert code == 2
    assert f"{conf}: store.path: the store '{plain}' is not a directory" in err


def test_store_is_not_checked_when_unused(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        conf,
        '[transports.mdp]\nendpoints = ["inproc://x"]\n[broker]\nstore_path = "/proc/x/y"\n',
    )
    assert check(conf, capsys)[0] == 0


# -- keys, enums, names ---------------------------------------------------------------------


def test_unknown_key_did_you_mean(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, '[broker]\nstorepath = "x"\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert err == (
        f"maitred: {conf}: broker: Object contains unknown field `storepath`; did you mean "
        "'store_path'?\n"
    )


def test_unknown_key_without_a_close_one_lists_the_keys(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(conf, "[plugins]\nzzz = 1\n")
    code, err = check(conf, capsys)
    assert code == 2
    assert "plugins: Object contains unknown field `zzz` (keys here: disable)" in err


def test_unknown_key_in_a_transport_table(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, '[transports.mdp]\nendpoint = ["tcp://127.0.0.1:0"]\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert (
        "transports.mdp: Object contains unknown field `endpoint`; did you mean 'endpoints'?" in err
    )


def test_enum_error_lists_the_choices(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, '[services.default]\non_no_worker = "queue"\n')
    code, err = check(conf, capsys)
    assert code == 2
    assert (
        "services.default.on_no_worker: Invalid enum value 'queue'; choose one of 'fail', "
        "'store', 'wait'" in err
    )


def test_unknown_transport_did_you_mean(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, "[transports.htpp]\n")
    code, err = check(conf, capsys)
    assert code == 2
    assert "transports.htpp: no such transport (installed: " in err
    assert "did you mean 'http'?" in err


def test_disabling_a_plugin_that_is_not_installed_warns(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(conf, '[plugins]\ndisable = ["htpp"]\n[transports.mdp]\nendpoints = ["inproc://x"]\n')
    code, err = check(conf, capsys)
    assert code == 0
    assert f"maitred: warning: {conf}: plugins.disable: 'htpp' is not an installed plugin" in err
    assert "did you mean 'http'?" in err


def test_a_good_config_is_ok(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(conf, '[transports.mdp]\nendpoints = ["tcp://127.0.0.1:0", "tcp://*:0"]\n')
    assert cli.main(["check", "-c", str(conf)]) == 0
    assert capsys.readouterr().out == f"{conf}: ok (transports enabled: mdp)\n"


def test_a_directory_as_unix_path_parent_is_checked_with_mode_bits(tmp_path: Path) -> None:
    # the helper sees the mode bits that matter (guards the test above against a vacuous pass)
    from maitred.core.preflight import check_unix_path

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    problem = check_unix_path(str(locked / "s.sock"), "unix:x")
    if os.geteuid() == 0:
        assert problem is None  # root may write anywhere: the nobody tests above cover it
    else:
        assert problem is not None and "not writable" in problem
