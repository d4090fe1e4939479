"""The CLI over CURVE, as processes: ``maitred keygen``; ``call``, ``worker`` and ``services``
with ``--curve-server-key`` and ``--curve-key-file`` against a CURVE broker; ``maitred check``
on CURVE config problems."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth

from tests.e2e.helpers import BrokerThread, wait_until
from tests.e2e.test_mdp_curve import ACCESS, Keys


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maitred.core", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_keygen_call_worker_services_over_curve(keys: Keys, tmp_path: Path) -> None:
    made = _cli("keygen", "cli", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    secret_file = tmp_path / "cli.key_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(tmp_path / "cli.key") == (public.encode(), None)
    assert _cli("keygen", "cli", "--dir", str(tmp_path)).returncode != 0  # never overwrites
    broker = BrokerThread(
        ACCESS
        + f"""
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
curve_secret_key_file = "{keys.broker_secret_file}"

[[transports.mdp.keys]]
public_key = "{public}"
identity = "cli"
roles = ["ops"]
"""
    )
    try:
        curve = [
            "-b",
            broker.endpoint,
            "--curve-server-key",
            str(keys.broker_secret_file.with_suffix(".key")),
            "--curve-key-file",
            str(secret_file),
            "-t",
            "10",
        ]
        program = ["worker", "up", "--program", "tr a-z A-Z", "--max-requests", "1"]
        worker = subprocess.Popen(
            [sys.executable, "-m", "maitred.core", *program, *curve],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: (
                    broker.call(lambda: broker.broker.router.services.get("up") is not None)
                    and broker.call(lambda: bool(broker.broker.router.services["up"].workers))
                ),
                15,
                "the CLI worker",
            )
            listing = _cli("services", "--json", *curve)
            assert listing.returncode == 0 and "up" in listing.stdout, listing.stderr
            called = _cli("call", "up", "hello", *curve)
            assert called.returncode == 0, called.stderr
            assert called.stdout.strip() == "HELLO"
            assert worker.wait(15) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(5)
            worker.communicate()
        # without a key of the table: refused in the handshake, the CLI times out
        plain = _cli("call", "up", "x", "-b", broker.endpoint, "-t", "1")
        assert plain.returncode != 0
        loose = tmp_path / "loose"
        loose.write_text(secret_file.read_text())
        loose.chmod(0o644)
        bad = _cli("call", "up", "x", *curve[:4], "--curve-key-file", str(loose))
        assert bad.returncode == 2 and f"chmod 600 {loose}" in bad.stderr
    finally:
        broker.stop(drain_timeout=0)


def test_check_reports_curve_config_problems(keys: Keys, tmp_path: Path) -> None:
    config = tmp_path / "maitred.toml"
    config.write_text(
        f"""
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
curve_secret_key_file = "{keys.broker_secret_file}"

[[transports.mdp.keys]]
public_key = "too-short"
identity = "x"
"""
    )
    checked = _cli("check", "-c", str(config))
    assert checked.returncode != 0
    out = checked.stdout + checked.stderr
    assert "keys[0].public_key: expected 40 Z85 characters" in out
    config.write_text(config.read_text().replace("too-short", keys.worker[0].decode()))
    assert _cli("check", "-c", str(config)).returncode == 0
    keys.broker_secret_file.chmod(0o640)
    checked = _cli("check", "-c", str(config))
    out = checked.stdout + checked.stderr
    assert checked.returncode != 0
    assert f"transports.mdp.curve_secret_key_file: {keys.broker_secret_file}" in out
    assert f"chmod 600 {keys.broker_secret_file}" in out
