"""maitred.plugins.testing: the fixtures and helpers offered to plugin authors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pluggy
import pytest

from maitred.core.config import Config
from maitred.core.errors import ConfigError, ErrorCode, MaitredError
from maitred.core.transport import BrokerPort, TransportSpec
from maitred.plugins import hookimpl
from maitred.plugins.testing import (
    BrokerStarter,
    ConfigFactory,
    PluginManagerFactory,
    ServeStarter,
    config_from,
    make_broker,
    plugin_manager,
    running_broker,
)


class Named:
    @hookimpl
    def maitred_configure(self, config: Config) -> None:
        return None


def test_config_from_toml_text_dict_path_and_none(tmp_path: Path) -> None:
    assert config_from().transports == {}  # not the embedded default (mdp on port 5555)
    assert config_from('[broker]\nname = "t"').broker.name == "t"
    cfg = config_from({"broker": {"name": "d"}, "transports": {"mdp": {}}}, name="mine")
    assert cfg.broker.name == "d" and cfg.transports == {"mdp": {}} and cfg.source == "mine"
    assert config_from(cfg) is cfg
    path = tmp_path / "m.toml"
    path.write_text('[broker]\nname = "file"\n', encoding="utf-8")
    from_file = config_from(path)
    assert from_file.broker.name == "file" and from_file.source == str(path)
    assert "mdp" in from_file.transports  # a file keeps the production defaults


def test_config_from_refuses_like_the_broker() -> None:
    with pytest.raises(ConfigError, match=r"<test config>: broker: Object contains unknown field"):
        config_from({"broker": {"nope": 1}})
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_from("[broker")
    with pytest.raises(ConfigError, match=r"<test config>: broker\.tick_interval: must be"):
        config_from("[broker]\ntick_interval = 0")
    with pytest.raises(ConfigError, match="source: not a configuration key"):
        config_from({"source": "x"})


def test_fixtures_return_the_helpers(
    maitred_config: ConfigFactory, maitred_plugin_manager: PluginManagerFactory
) -> None:
    assert maitred_config('[broker]\nname = "f"').broker.name == "f"
    pm = maitred_plugin_manager(Named(), load_entry_points=False)
    assert isinstance(pm, pluggy.PluginManager)
    assert [type(p) for p in pm.get_plugins()] == [Named]


def test_plugin_manager_registers_an_installed_plugin_object_once() -> None:
    import maitred.transports.mdp.plugin as mdp_plugin

    pm = plugin_manager(mdp_plugin)
    assert pm.is_registered(mdp_plugin)
    assert [p for p in pm.get_plugins() if p is mdp_plugin] == [mdp_plugin]
    assert "mdp" not in [name for name, _ in pm.list_name_plugin()]  # no second copy
    assert plugin_manager(disabled=["mdp"]).get_plugin("mdp") is None
    assert plugin_manager(load_entry_points=False).get_plugins() == set()


def test_make_broker_transports_by_name_need_an_ephemeral_address() -> None:
    with pytest.raises(ConfigError, match=r"no transport named 'nope' is registered"):
        make_broker(transports=["nope"])
    broker = make_broker(transports={"mdp": ["inproc://explicit"]})
    assert broker.endpoints() == {}  # built, not started


def test_make_broker_refuses_an_unknown_option() -> None:
    """Its options are a TypedDict (declared once for make_broker, running_broker and the
    fixture): a misspelt one is still a TypeError, as for any keyword argument."""
    options: Any = {"plugin": []}
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'plugin'"):
        make_broker(**options)


def test_running_broker_binds_a_free_port() -> None:
    async def main() -> None:
        async with running_broker(transports="mdp") as broker:
            [endpoint] = broker.endpoints()["mdp"]
            assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
            assert broker.state == "running"
        assert broker.state == "stopped"

    asyncio.run(main())


def test_maitred_broker_runs_in_a_thread(maitred_broker: BrokerStarter) -> None:
    running = maitred_broker(transports=["mdp"])
    assert running.endpoint("mdp").startswith("tcp://127.0.0.1:")
    assert running.call(lambda: running.broker.state) == "running"

    async def info() -> str:
        return str(running.broker.info()["state"])

    assert running.run(info()) == "running"
    with pytest.raises(KeyError, match="not running"):
        running.endpoint("line-or-other")
    running.stop()
    assert running.broker.state == "stopped"
    running.stop()  # idempotent; the fixture stops it again after the test


class Unbindable(msgspec.Struct, kw_only=True):
    enabled: bool = True


class UnbindableTransport:
    name = "unbindable"

    def __init__(self, config: Unbindable, port: BrokerPort) -> None:
        self.closed = False

    async def start(self) -> None:
        raise MaitredError("unbindable: cannot bind anything", ErrorCode.BAD_REQUEST)

    def endpoints(self) -> list[str]:
        return []

    async def stop_accepting(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


class UnbindablePlugin:
    @hookimpl
    def maitred_transports(self) -> Sequence[TransportSpec]:
        return [TransportSpec("unbindable", Unbindable, UnbindableTransport)]


def test_maitred_broker_start_failure_is_raised(maitred_broker: BrokerStarter) -> None:
    with pytest.raises(ConfigError, match=r"transports\.mdp: Object contains unknown field"):
        maitred_broker({"transports": {"mdp": {"bogus": 1}}})
    with pytest.raises(MaitredError, match="cannot bind anything"):
        maitred_broker({"transports": {"unbindable": {}}}, plugins=[UnbindablePlugin()])


@pytest.mark.slow
def test_pytest_plugins_form_works_without_pytest_asyncio(tmp_path: Path) -> None:
    """What the docs tell plugin authors, in a project of their own (a pytest subprocess)."""
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\naddopts = -p no:cacheprovider\n", encoding="utf-8"
    )
    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["maitred.plugins.testing"]\n', encoding="utf-8"
    )
    (tmp_path / "test_author.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            from maitred.plugins import hookimpl
            from maitred.plugins.testing import running_broker


            class Seen:
                def __init__(self):
                    self.calls = []

                @hookimpl
                def maitred_broker_started(self, broker):
                    self.calls.append(("started", sorted(broker.endpoints())))


            def test_threaded(maitred_broker, maitred_config):
                config = maitred_config("[broker]\\nname = 'a'")
                running = maitred_broker(config, transports=["mdp"])
                assert running.call(lambda: running.broker.config.broker.name) == "a"


            def test_async(maitred_plugin_manager):
                seen = Seen()

                async def main():
                    pm = maitred_plugin_manager(seen)
                    async with running_broker(pm=pm, transports=["mdp"]) as broker:
                        assert broker.endpoints()["mdp"]

                asyncio.run(main())
                assert seen.calls == [("started", ["mdp"])]
            """
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:asyncio", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.slow
def test_maitred_serve_waits_for_every_transport(maitred_serve: ServeStarter) -> None:
    served = maitred_serve("--mdp", "tcp://127.0.0.1:0", "--http", "127.0.0.1:0")
    assert set(served.endpoints) == {"mdp", "http"}
    assert served.endpoint("http").startswith("http://127.0.0.1:")
    with pytest.raises(KeyError, match="'ws' is not running"):
        served.endpoint("ws")
    assert served.stop() == 0
    assert "maitred stopped" in served.log()
