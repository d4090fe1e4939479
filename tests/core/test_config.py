"""The configuration file: decoding, refusal of unknown keys and bad values, policy resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from maitred.core.access import Action, AllowAll, Identity, RuleTable
from maitred.core.config import (
    BrokerSection,
    Config,
    ServicePolicies,
    convert_section,
    load_config,
    parse_config,
)
from maitred.core.errors import ConfigError, ErrorCode
from maitred.core.routing.model import ServicePolicy
from maitred.core.routing.router import Liveness

SOURCE = "/etc/maitred/test.toml"

GOOD = """
[broker]
name = "edge-1"
tick_interval = 0.02
drain_timeout = 2
log_level = "debug"
uvloop = false

[liveness]
heartbeat_interval = 1.5
liveness = 4
busy_timeout = 0

[services.default]
request_timeout = 10
max_queue = 100

[services.echo]
on_no_worker = "fail"
redeliver = true
max_deliveries = 2

[services."orders.*"]
overflow = "drop_oldest"
request_timeout = 0

[services."orders.>"]
max_queue = 5

[access]
default = "deny"

[[access.rules]]
who = ["role:admin"]

[[access.rules]]
allow = true
who = ["*"]
actions = ["call", "subscribe"]
names = ["public.>", "mmi.*"]

[plugins]
disable = ["noisy"]

[transports.mdp]
bind = "tcp://127.0.0.1:5555"

[transports.http]
enabled = false
"""


def parse(text: str) -> Config:
    return parse_config(text, SOURCE)


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.code is ErrorCode.BAD_REQUEST
    message = str(info.value)
    assert SOURCE in message, message  # the file is named
    return message


def test_good_config() -> None:
    c = parse(GOOD)
    assert c.source == SOURCE
    assert c.broker == BrokerSection(
        name="edge-1", tick_interval=0.02, drain_timeout=2.0, log_level="debug", uvloop=False
    )
    assert c.liveness == Liveness(heartbeat_interval=1.5, liveness=4, busy_timeout=0.0)
    assert c.liveness.idle_timeout == 6.0
    assert c.plugins.disable == ["noisy"]
    assert c.enabled_transports() == ["mdp"]
    assert c.transports["mdp"] == {"bind": "tcp://127.0.0.1:5555"}
    assert len(c.access.rules) == 2
    assert c.access.rules[1].actions == (Action.CALL, Action.SUBSCRIBE)
    assert c.access.rules[1].names == ("public.>", "mmi.*")


def test_empty_config_is_the_defaults() -> None:
    c = parse("")
    assert c.broker == BrokerSection()
    assert c.liveness == Liveness()
    assert c.enabled_transports() == ["mdp"]
    assert isinstance(c.access.policy(), AllowAll)
    assert c.policies().for_service("anything") == ServicePolicy()


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(GOOD, encoding="utf-8")
    c = load_config(path)
    assert c.source == str(path)
    assert c.broker.name == "edge-1"
    defaults = load_config(None)
    assert defaults.source == "<embedded defaults>"
    assert defaults.broker == BrokerSection()


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_load_config_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[broker]\nnmae = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "nmae" in str(info.value)


# -- refusals name the key path and the file ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("bogus = 1\n", "", "bogus"),
        ("[broker]\nnmae = 'x'\n", "broker", "nmae"),
        ("[liveness]\nheartbeat = 1\n", "liveness", "heartbeat"),
        ("[services.default]\ntimeout = 1\n", "services.default", "timeout"),
        ("[services.echo]\nfoo = 1\n", "services.echo", "foo"),
        ('[services."a.*"]\nfoo = 1\n', "services.a.*", "foo"),
        ("[access]\nrulez = []\n", "access", "rulez"),
        ("[[access.rules]]\nfoo = 1\n", "access.rules[0]", "foo"),
        ("[plugins]\nenable = []\n", "plugins", "enable"),
    ],
)
def test_unknown_keys_are_refused(text: str, where: str, what: str) -> None:
    message = refused(text)
    assert "unknown field" in message
    assert f"`{what}`" in message
    if where:
        assert f"{SOURCE}: {where}: " in message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[broker]\ntick_interval = 'fast'\n", "broker.tick_interval"),
        ("[broker]\nlog_level = 'loud'\n", "broker.log_level"),
        ("[broker]\nuvloop = 1\n", "broker.uvloop"),
        ("[liveness]\nliveness = 1.5\n", "liveness.liveness"),
        ("[services.default]\non_no_worker = 'drop'\n", "services.default.on_no_worker"),
        ("[services.echo]\nmax_queue = true\n", "services.echo.max_queue"),
        ("[services.echo]\noverflow = 'spill'\n", "services.echo.overflow"),
        ("[services.echo]\nredeliver = 'yes'\n", "services.echo.redeliver"),
        ("[[access.rules]]\nactions = ['fly']\n", "access.rules[0].actions[0]"),
        ("[[access.rules]]\nwho = 'alice'\n", "access.rules[0].who"),
        ("[access]\ndefault = 'maybe'\n", "access.default"),
        ("[[access.rules]]\n[[access.rules]]\nallow = 'no'\n", "access.rules[1].allow"),
        ("[plugins]\ndisable = 'x'\n", "plugins.disable"),
    ],
)
def test_bad_values_are_refused(text: str, where: str) -> None:
    message = refused(text)
    assert f"{SOURCE}: {where}: " in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[services.default]\nrequest_timeout = -1\n", "services.default: request_timeout"),
        ("[services.echo]\nmax_queue = -1\n", "services.echo: max_queue must be >= 0"),
        ("[services.echo]\nmax_deliveries = 0\n", "services.echo: max_deliveries"),
        ('[services."a.*"]\nrequest_timeout = -5\n', "services.a.*: request_timeout"),
        (
            "[liveness]\nheartbeat_interval = 0\n",
            "liveness: heartbeat_interval must be a finite number > 0",
        ),
        ("[liveness]\nliveness = 0\n", "liveness: liveness must be >= 1"),
        ("[liveness]\nbusy_timeout = -1\n", "liveness: busy_timeout must be a finite number >= 0"),
        ("[broker]\ntick_interval = 0\n", "broker.tick_interval: must be a number > 0"),
        ("[broker]\ndrain_timeout = -1\n", "broker.drain_timeout: must be a finite number >= 0"),
        ("[plugins]\ndisable = ['']\n", "plugins.disable: empty name"),
    ],
)
def test_check_problems(text: str, expected: str) -> None:
    assert expected in refused(text)


def test_several_problems_are_reported_together() -> None:
    message = refused("[broker]\ntick_interval = 0\ndrain_timeout = -1\n")
    assert "tick_interval" in message and "drain_timeout" in message


def test_invalid_toml() -> None:
    assert "not valid TOML" in refused("[broker\n")


def test_source_is_not_a_key() -> None:
    assert "source" in refused("source = 'x'\n")


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("['a..b']", "access.rules[0]: empty segment"),
        ("['a.>.b']", "access.rules[0]: '>' must be the last segment"),
        ("['']", "access.rules[0]: empty name"),
    ],
)
def test_invalid_access_rule_patterns(names: str, expected: str) -> None:
    assert expected in refused(f"[[access.rules]]\nnames = {names}\n")


def test_empty_who_entry_is_refused() -> None:
    assert "access.rules[0]: empty 'who' entry" in refused("[[access.rules]]\nwho = ['']\n")


def test_invalid_service_pattern_names() -> None:
    assert "services.a..b: empty segment" in refused("[services.'a..b']\n")
    assert "services.a.>.b: '>' must be the last" in refused("[services.'a.>.b']\n")


def test_ints_are_accepted_for_floats() -> None:
    c = parse("[broker]\ndrain_timeout = 3\n[services.echo]\nrequest_timeout = 5\n")
    assert c.broker.drain_timeout == 3.0
    assert c.policies().for_service("echo").request_timeout == 5.0


# -- service policies -----------------------------------------------------------------------------


def test_policy_resolution() -> None:
    policies = parse(GOOD).policies()
    default = ServicePolicy(request_timeout=10, max_queue=100)
    assert policies.default == default
    assert policies.for_service("other") == default
    # exact table merged over default
    assert policies.for_service("echo") == ServicePolicy(
        request_timeout=10, max_queue=100, on_no_worker="fail", redeliver=True, max_deliveries=2
    )
    # first matching pattern, merged over default (not over other patterns)
    assert policies.for_service("orders.eu") == ServicePolicy(
        request_timeout=0, max_queue=100, overflow="drop_oldest"
    )
    assert policies.for_service("orders.eu.x") == ServicePolicy(request_timeout=10, max_queue=5)
    assert policies.for_service("orders") == default


def test_exact_beats_pattern_and_pattern_order_decides() -> None:
    tables = {
        "a.>": {"max_queue": 1},
        "a.*": {"max_queue": 2},
        "a.b": {"max_queue": 3},
    }
    policies = ServicePolicies(tables, "<test>")
    assert policies.for_service("a.b").max_queue == 3
    assert policies.for_service("a.c").max_queue == 1  # a.> comes first in the file
    assert policies.for_service("a.c.d").max_queue == 1
    assert policies.for_service("b").max_queue == ServicePolicy().max_queue


def test_policy_problems() -> None:
    assert ServicePolicy().problems() == []
    bad = ServicePolicy(request_timeout=-1, max_queue=-1, max_deliveries=0)
    assert len(bad.problems()) == 3


# -- access section -------------------------------------------------------------------------------


def test_access_policy_from_config() -> None:
    policy = parse(GOOD).access.policy()
    assert isinstance(policy, RuleTable)
    admin = Identity("root", frozenset({"admin"}))
    guest = Identity("guest")
    assert policy.allowed(admin, Action.SERVE, "anything")
    assert policy.allowed(guest, Action.CALL, "public.x")
    assert policy.allowed(guest, Action.CALL, "mmi.service")
    assert not policy.allowed(guest, Action.SERVE, "public.x")
    assert not policy.allowed(guest, Action.CALL, "private")


def test_access_default_allow_with_rules_is_a_table() -> None:
    c = parse("[[access.rules]]\nallow = false\nwho = ['eve']\n")
    policy = c.access.policy()
    assert isinstance(policy, RuleTable)
    assert not policy.allowed(Identity("eve"), Action.CALL, "x")
    assert policy.allowed(Identity("bob"), Action.CALL, "x")


def test_convert_section_names_key_and_file() -> None:
    with pytest.raises(ConfigError) as info:
        convert_section({"liveness": "x"}, Liveness, "liveness", "f.toml")
    assert str(info.value).endswith("f.toml: liveness.liveness: Expected `int`, got `str`")
    assert convert_section({"liveness": 2}, Liveness, "liveness", "f.toml").liveness == 2
