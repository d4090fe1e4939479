"""Broker.reload without sockets: what changes, what is reported, what is refused."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from maitred.core.app import build_broker
from maitred.core.config import load_config, parse_config
from maitred.core.errors import ConfigError

NONE = "[transports]\n"


def test_policies_change_for_existing_and_future_services(tmp_path: Path) -> None:
    broker = build_broker(parse_config(NONE, "a.toml"))
    existing = broker.router.service("jobs")
    assert existing.policy.on_no_worker == "wait"
    new = parse_config(NONE + '[services.default]\non_no_worker = "fail"\n', "a.toml")
    assert broker.reload(new) == {"applied": ["services"], "unchanged": []}
    assert existing.policy.on_no_worker == "fail"
    assert broker.router.service("later").policy.on_no_worker == "fail"
    assert broker.config.services == new.services


def test_access_changes_and_unchangeable_sections_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = build_broker(parse_config(NONE, "a.toml"))
    before = broker.router.access
    new = parse_config(
        '[transports.mdp]\nendpoints = ["inproc://x"]\n[broker]\nname = "other"\n'
        '[access]\ndefault = "deny"\n',
        "a.toml",
    )
    with caplog.at_level(logging.INFO, logger="maitred.core.runtime"):
        result = broker.reload(new)
    assert result == {"applied": ["access"], "unchanged": ["transports", "broker"]}
    assert broker.router.access is not before
    assert broker.config.broker.name == "maitred"  # left as it was
    assert "[transports], [broker] changed in a.toml but cannot change" in caplog.text


def test_no_change_applies_nothing() -> None:
    broker = build_broker(parse_config(NONE, "a.toml"))
    assert broker.reload(parse_config(NONE, "a.toml")) == {"applied": [], "unchanged": []}


def test_reload_reads_the_file_again(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text(NONE)
    broker = build_broker(load_config(conf))
    conf.write_text(NONE + "[services.x]\nmax_queue = 3\n")
    assert broker.reload()["applied"] == ["services"]
    assert broker.router.service("x").policy.max_queue == 3


def test_without_a_file_there_is_nothing_to_read_again() -> None:
    broker = build_broker(load_config(None))
    with pytest.raises(ConfigError, match="there is no config file to read again"):
        broker.reload()


def test_store_services_need_a_restart() -> None:
    broker = build_broker(parse_config(NONE, "a.toml"))
    new = parse_config(
        NONE + '[broker]\nstore = "memory"\n[services.x]\non_no_worker = "store"\n', "a.toml"
    )
    with pytest.raises(ConfigError, match="restart the broker"):
        broker.reload(new)
    assert broker.router.service("x").policy.on_no_worker == "wait"


def test_request_reload_logs_instead_of_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text(NONE)
    broker = build_broker(load_config(conf))
    with caplog.at_level(logging.WARNING, logger="maitred.core.runtime"):
        broker.request_reload()  # not running yet
        assert "reload ignored: the broker is new" in caplog.text

        async def main() -> None:
            async with broker:
                conf.write_text("[broker]\nnope = 1\n")
                broker.request_reload()

        asyncio.run(main())
    assert "reload refused, the running config stays" in caplog.text
