"""``[plugins] disable`` skips installed plugins by entry-point name."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from maitred.core import cli
from maitred.core.app import build_broker, plugin_manager_for, transport_specs
from maitred.core.config import parse_config
from maitred.core.errors import ConfigError
from maitred.plugins.manager import installed_plugins, make_plugin_manager
from maitred.plugins.testing import running_broker

DISABLE_MDP = """
[plugins]
disable = ["mdp"]

[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
"""


def test_mdp_is_installed_and_enabled_by_default() -> None:
    assert "mdp" in installed_plugins()
    assert "mdp" in transport_specs(make_plugin_manager())


def test_disabling_mdp_makes_its_transport_unknown() -> None:
    config = parse_config(DISABLE_MDP, "disable.toml")
    pm = plugin_manager_for(config)
    assert pm.is_blocked("mdp")
    assert "mdp" not in transport_specs(pm)
    # a table for a transport that no enabled plugin provides is still refused, by name
    text = '[plugins]\ndisable = ["mdp"]\n[transports.nope]\n'
    with pytest.raises(ConfigError) as refused:
        build_broker(parse_config(text, "nope.toml"))
    assert "nope.toml: transports.nope: no such transport" in refused.value.reason
    assert "mdp" not in refused.value.reason.partition("installed:")[2]


def test_a_disabled_plugins_transport_table_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_config(DISABLE_MDP, "disable.toml")

    async def main() -> None:
        async with running_broker(config) as broker:
            assert broker.endpoints() == {}  # [transports.mdp] is there, but mdp does not run

    with caplog.at_level(logging.WARNING, logger="maitred.core.app"):
        asyncio.run(main())
    assert "transports.mdp is configured but plugin 'mdp' is disabled" in caplog.text
    # the embedded defaults (a [transports.mdp] table) with mdp disabled: no transport at all
    only_disable = parse_config('[plugins]\ndisable = ["mdp"]\n', "only-disable.toml")
    assert "mdp" in only_disable.transports
    build_broker(only_disable)


def test_maitred_check_does_not_list_a_disabled_transport(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "disable.toml"
    path.write_text(DISABLE_MDP, encoding="utf-8")
    assert cli.main(["check", "-c", str(path)]) == cli.EXIT_OK
    assert "transports enabled: none" in capsys.readouterr().out


def test_disabling_a_name_that_is_not_installed_only_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = '[plugins]\ndisable = ["no-such-plugin"]\n[transports.mdp]\nendpoints = ["inproc://d"]\n'
    config = parse_config(text, "warn.toml")
    with caplog.at_level(logging.WARNING, logger="maitred.plugins"):
        broker = build_broker(config)
    assert broker is not None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "plugins.disable names 'no-such-plugin', which is not an installed plugin"
    ]
    assert warnings[0].name == "maitred.plugins"


def test_disabled_plugin_is_not_registered() -> None:
    pm = make_plugin_manager(disabled=["mdp"])
    assert pm.get_plugin("mdp") is None
    # its CLI client is gone too
    assert pm.hook.maitred_connect(url="tcp://127.0.0.1:5555", timeout=1.0, options={}) is None


def test_address_flag_for_a_disabled_transport_is_a_config_error() -> None:
    config = parse_config('[plugins]\ndisable = ["mdp"]\n[transports]\n', "flags.toml")
    with pytest.raises(ConfigError, match="mdp"):
        build_broker(config, addresses={"mdp": ["tcp://127.0.0.1:0"]})
