"""``maitred check`` (and ``serve``, which runs the same checks first) on secrets: every file a
transport declares as holding a secret (``TransportSpec.secret_files``) must be readable by its
owner only, and is named with its config key and the fix; keys from the environment must be
set; key files must load. docs/howto/operators.md, "Secrets and maitred check"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maitred.core import cli
from maitred.core.preflight import Problem, check_secret_files

NO_MDP = "[transports.mdp]\nenabled = false\n"


def check(conf: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["check", "-c", str(conf)])
    return code, capsys.readouterr().err


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "ws.crt", directory / "ws.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def secret(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_check_secret_files(tmp_path: Path) -> None:
    good = secret(tmp_path / "good", "s", 0o600)
    bad = secret(tmp_path / "bad", "s", 0o640)
    found = check_secret_files(
        [
            ("a", str(good)),
            ("b", str(bad)),
            ("c", ""),
            ("d", str(tmp_path / "none")),
            ("e", str(bad)),
        ],
        skip=["e"],
    )
    assert found == [
        Problem(
            "b",
            f"{bad}: a secret readable by others (mode 0640); run 'chmod 600 {bad}' "
            "so that only its owner can read it",
        ),
        Problem("d", f"{tmp_path / 'none'}: no such file"),
    ]


def test_check_names_every_readable_secret_with_its_key_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = make_cert(tmp_path)
    key.chmod(0o644)
    keyfile = secret(tmp_path / "mm.key", "k\n", 0o604)
    empty = secret(tmp_path / "empty.key", "\n", 0o600)
    monkeypatch.delenv("MAITRED_TEST_UNSET", raising=False)
    conf = tmp_path / "maitred.toml"
    conf.write_text(
        NO_MDP
        + f'[transports.ws]\nlisten = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        + f'[[transports.ws.keys]]\nkey_file = "{keyfile}"\n'
        + f'[[transports.ws.keys]]\nkey_file = "{empty}"\n'
        + '[[transports.ws.keys]]\nkey_env = "MAITRED_TEST_UNSET"\n'
    )
    code, err = check(conf, capsys)
    assert code == 2
    assert (
        f"{conf}: transports.ws.tls_key: {key}: a secret readable by others (mode 0644); "
        f"run 'chmod 600 {key}' so that only its owner can read it" in err
    )
    assert (
        f"{conf}: transports.ws.keys[0].key_file: {keyfile}: a secret readable by others "
        f"(mode 0604); run 'chmod 600 {keyfile}'" in err
    )
    assert f"{conf}: transports.ws.keys[1].key_file: the key is empty" in err
    assert (
        f"{conf}: transports.ws.keys[2].key_env: environment variable MAITRED_TEST_UNSET is "
        "not set" in err
    )
    key.chmod(0o600)
    keyfile.chmod(0o400)
    empty.write_text("k2\n")
    monkeypatch.setenv("MAITRED_TEST_UNSET", "k3")
    assert check(conf, capsys) == (0, "")


def test_check_names_a_readable_https_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = make_cert(tmp_path)
    key.chmod(0o640)
    conf = tmp_path / "maitred.toml"
    conf.write_text(
        NO_MDP
        + f'[transports.http]\nlisten = ["127.0.0.1:0"]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    code, err = check(conf, capsys)
    assert code == 2
    assert (
        f"{conf}: transports.http.tls_key: {key}: a secret readable by others (mode 0640); "
        f"run 'chmod 600 {key}'" in err
    )
    key.chmod(0o600)
    assert check(conf, capsys) == (0, "")


def test_check_reports_a_certificate_of_another_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = make_cert(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = make_cert(tmp_path / "other")
    conf = tmp_path / "maitred.toml"
    conf.write_text(
        NO_MDP
        + f'[transports.ws]\nlisten = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{other_key}"\n'
    )
    code, err = check(conf, capsys)
    assert code == 2 and f"transports.ws.tls_key: '{other_key}' is not the key of the" in err


@pytest.mark.slow
def test_serve_refuses_a_readable_secret_before_binding(tmp_path: Path) -> None:
    keyfile = secret(tmp_path / "mm.key", "k\n", 0o644)
    conf = tmp_path / "maitred.toml"
    conf.write_text(
        NO_MDP + f'[transports.ws]\nlisten = "127.0.0.1:0"\n[[transports.ws.keys]]\n'
        f'key_file = "{keyfile}"\n'
    )
    got = subprocess.run(
        [sys.executable, "-m", "maitred.core", "serve", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert got.returncode == 2, got
    assert f"run 'chmod 600 {keyfile}'" in got.stderr and "Traceback" not in got.stderr
