"""Broker.reload without sockets: what changes, what is reported, what is refused."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec
import pytest

from maitred.core.app import build_broker
from maitred.core.config import convert_section, load_config, parse_config
from maitred.core.errors import ConfigError
from maitred.core.runtime import Broker
from maitred.core.transport import ReloadPlan, TransportSpec

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
    assert result == {"applied": ["access"], "unchanged": ["transports.mdp", "broker"]}
    assert broker.router.access is not before
    assert broker.config.broker.name == "maitred"  # left as it was
    assert "[transports.mdp], [broker] changed in a.toml but cannot change" in caplog.text


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


# -- transports taking part in reload (fake transports, no sockets) ---------------------------


class FakeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    listen: str = "a"
    secret: str = "one"

    def problems(self) -> list[str]:
        return ["secret: empty"] if not self.secret else []


class FakeTransport:
    """Applies ``secret``; ``listen`` needs a restart; a secret "bad" fails its check."""

    def __init__(self, name: str, config: FakeConfig, reloadable: bool) -> None:
        self.name = name
        self.config = config
        if reloadable:
            self.plan_reload = self._plan

    async def start(self) -> None:
        pass

    def endpoints(self) -> list[str]:
        return []

    async def stop_accepting(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _plan(self, config: FakeConfig) -> ReloadPlan:
        if config.secret == "bad":
            raise ConfigError("secret: cannot load 'bad'")
        restart = ["listen"] if config.listen != self.config.listen else []
        applied = ["secret"] if config.secret != self.config.secret else []

        def apply() -> None:
            self.config = msgspec.structs.replace(self.config, secret=config.secret)

        return ReloadPlan(applied, restart, apply)


def fake_broker(conf: str) -> tuple[Broker, dict[str, FakeTransport]]:
    made: dict[str, FakeTransport] = {}

    def spec(name: str, reloadable: bool) -> TransportSpec:
        def factory(config: FakeConfig, port: object) -> FakeTransport:
            made[name] = FakeTransport(name, config, reloadable)
            return made[name]

        return TransportSpec(name=name, config_type=FakeConfig, factory=factory)

    config = parse_config(conf, "a.toml")
    specs = {"r": spec("r", True), "s": spec("s", False)}
    transports = {
        name: (specs[name], convert_section(t, FakeConfig, f"transports.{name}", "a.toml"))
        for name, t in config.transports.items()
    }
    broker = Broker(config, transports)
    for name, (s, tconfig) in transports.items():  # what start() does, without a loop
        broker.transports[name] = s.factory(tconfig, broker.port)
    return broker, made


TWO = "[transports.r]\n{r}\n[transports.s]\n{s}\n"


def test_a_transport_applies_what_it_can_and_reports_the_rest() -> None:
    broker, made = fake_broker(TWO.format(r="", s=""))
    new = parse_config(
        TWO.format(r='secret = "two"\nlisten = "b"', s='secret = "two"\nlisten = "b"')
        + '[transports.t]\nlisten = "c"\n',
        "a.toml",
    )
    assert broker.reload(new) == {
        "applied": ["transports.r.secret"],
        # r: its plan's restart list; s (no plan_reload): every changed key; t: not running
        "unchanged": [
            "transports.r.listen",
            "transports.s.listen",
            "transports.s.secret",
            "transports.t",
        ],
    }
    assert made["r"].config.secret == "two" and made["r"].config.listen == "a"
    assert made["s"].config.secret == "one"


def test_removed_or_disabled_transports_keep_running_until_restart() -> None:
    broker, made = fake_broker(TWO.format(r="", s=""))
    new = parse_config("[transports.r]\nenabled = false\n", "a.toml")
    assert broker.reload(new)["unchanged"] == ["transports.r", "transports.s"]
    assert broker.transports == made


@pytest.mark.parametrize(
    ("r", "s", "error"),
    [
        ('secret = "bad"', "", "transports.r: secret: cannot load 'bad'"),
        ('secret = "two"', 'secret = ""', "transports.s: secret: empty"),
        ('secret = "two"', "nope = 1", "transports.s"),
    ],
)
def test_a_bad_transport_table_changes_nothing(r: str, s: str, error: str) -> None:
    broker, made = fake_broker(TWO.format(r="", s=""))
    access = broker.router.access
    new = parse_config(
        TWO.format(r=r, s=s) + '[services.default]\non_no_worker = "fail"\n'
        '[access]\ndefault = "deny"\n',
        "a.toml",
    )
    with pytest.raises(ConfigError, match=error):
        broker.reload(new)
    # checked first, applied never: nor the other transport, nor services, nor access
    assert made["r"].config.secret == "one"
    assert broker.router.service("x").policy.on_no_worker == "wait"
    assert broker.router.access is access
