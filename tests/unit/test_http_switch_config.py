"""``[transports.http]`` switch keys: the shutdown secret's sources and the limits' checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from maitred.core.errors import MaitredError
from maitred.transports.http.adapter import HttpConfig


def test_secret_from_a_file_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("  abc123\n")
    path.chmod(0o600)
    assert HttpConfig(shutdown_secret_file=str(path)).shutdown_secret() == b"abc123"


def test_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAITRED_UNIT_SECRET", "xyz\n")
    assert HttpConfig(shutdown_secret_env="MAITRED_UNIT_SECRET").shutdown_secret() == b"xyz"


def test_no_secret_means_no_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    assert HttpConfig().shutdown_secret() is None
    with caplog.at_level("WARNING"):
        assert HttpConfig(shutdown_tokens=["ops-*"]).shutdown_secret() is None
    assert "no shutdown secret" in caplog.text


def test_a_missing_or_empty_secret_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.delenv("MAITRED_UNIT_UNSET", raising=False)
    for cfg in (
        HttpConfig(shutdown_secret_file=str(empty)),
        HttpConfig(shutdown_secret_file=str(tmp_path / "missing")),
        HttpConfig(shutdown_secret_env="MAITRED_UNIT_UNSET"),
    ):
        with pytest.raises(MaitredError):
            cfg.shutdown_secret()


def test_a_secret_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secret"
    path.write_text("abc")
    path.chmod(0o644)
    with caplog.at_level("WARNING"):
        assert HttpConfig(shutdown_secret_file=str(path)).shutdown_secret() == b"abc"
    assert "readable by others" in caplog.text


def test_problems() -> None:
    assert HttpConfig().problems() == []
    bad = HttpConfig(
        shutdown_secret_file="a",
        shutdown_secret_env="B",
        switch_max_queue=0,
        switch_max_queues_per_token=0,
        diagnostics_messages=-1,
    ).problems()
    assert len(bad) == 4, bad
