"""The cluster's wire, on bytes: subjects of topics and patterns, and every message type
round-tripped, with malformed input refused by the decoders."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.core.routing.patterns import matches
from maitred.transports.cluster import codec
from maitred.transports.cluster.config import ClusterConfig, cli_addresses, connect_options


def test_plain_segments_stay_and_others_are_encoded() -> None:
    assert codec.topic_subject("maitred", "orders.eu.created") == "maitred.pub.orders.eu.created"
    assert codec.topic_subject("p", "a.*.>") == "p.pub.a.*.>"
    encoded = codec.topic_subject("p", "a.b c.é")
    assert encoded.startswith("p.pub.a.~")
    assert " " not in encoded and "é" not in encoded
    # a '>' that is not the last segment is no wildcard: encoded
    assert codec.topic_subject("p", ">.a") != "p.pub.>.a"
    assert codec.encode_segment("~x") != "~x"  # '~' starts encoded segments only


segment = st.text(min_size=1, max_size=8).filter(lambda s: "." not in s)


@given(st.lists(segment, min_size=1, max_size=4), st.lists(segment, min_size=1, max_size=4))
def test_encoding_is_injective_per_segment(a: list[str], b: list[str]) -> None:
    sa = codec.topic_subject("p", ".".join(a))
    sb = codec.topic_subject("p", ".".join(b))
    assert (sa == sb) == (a == b) or "*" in a + b or ">" in a + b


@given(
    st.lists(st.sampled_from(["x", "y z", "é", "*", "a-b"]), min_size=1, max_size=3),
    st.lists(st.sampled_from(["x", "y z", "é", "a-b"]), min_size=1, max_size=3),
)
def test_a_pattern_subject_matches_like_the_pattern(pattern: list[str], topic: list[str]) -> None:
    p, t = ".".join(pattern), ".".join(topic)
    ps, ts = codec.topic_subject("q", p), codec.topic_subject("q", t)
    nats_match = len(ps.split(".")) == len(ts.split(".")) and all(
        x == "*" or x == y for x, y in zip(ps.split("."), ts.split("."), strict=True)
    )
    assert nats_match == matches(p, t)


def test_service_names_travel_as_bytes() -> None:
    name = b"\xff\xfebinary".decode("utf-8", "surrogateescape")
    assert codec.service_bytes(name) == b"\xff\xfebinary"
    assert codec.service_name(codec.service_bytes(name)) == name


@pytest.mark.parametrize(
    ("message", "decode"),
    [
        (
            codec.Announcement(
                "a",
                2**62,
                3,
                "mdp=tcp://h:1",
                [codec.ServiceState(b"echo", 2, 4, 3, 0)],
                7,
                False,
            ),
            codec.decode_announcement,
        ),
        (codec.Hello("a", 1, "addr"), codec.decode_hello),
        (codec.Forward(9, b"\xffs", 1.5, "b", 5, [b"", b"\x00"], {"K": "v"}), codec.decode_forward),
        (codec.Reply(9, int(codec.Kind.ERROR), "c", 6, [b"why"], 504), codec.decode_reply),
        (codec.Publication("a", 1, 2, "t.x", [b"p"], None), codec.decode_publication),
        (codec.Cancel(9, "a", 2**63 - 1), codec.decode_cancel),
    ],
)
def test_round_trip(message: msgspec.Struct, decode: object) -> None:
    data = codec.encode(message)
    assert decode(data) == message  # type: ignore[operator]


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", b"\x93\x01\x02\x03", codec.encode(["a", "not an int", 1, "", []])]
)
def test_malformed_input_raises_decode_error(data: bytes) -> None:
    for decode in (
        codec.decode_announcement,
        codec.decode_forward,
        codec.decode_reply,
        codec.decode_publication,
        codec.decode_hello,
        codec.decode_cancel,
    ):
        with pytest.raises(codec.DecodeError):
            decode(data)


def test_config_problems_and_options() -> None:
    assert ClusterConfig().problems() == []
    bad = ClusterConfig(
        nats=["http://x"],
        node="a b",
        subject_prefix="a.b",
        announce_interval=0,
        missed_announcements=0,
        connect_timeout=0,
    )
    assert len(bad.problems()) == 6
    assert ClusterConfig(nats=[]).problems() == ["nats: at least one NATS server URL"]
    assert "-" in ClusterConfig().node_name()
    assert cli_addresses(["nats://h:1"]) == {"nats": ["nats://h:1"]}
    opts = connect_options(ClusterConfig(token="t"), "n")
    assert opts["token"] == "t" and opts["no_echo"] is True and opts["max_reconnect_attempts"] == -1
    opts = connect_options(ClusterConfig(user="u", password="p"), "n")
    assert (opts["user"], opts["password"]) == ("u", "p")


def test_the_conf_file_writes_every_cluster_key_and_leaves_it_off() -> None:
    from pathlib import Path

    from maitred.core.app import plugin_manager_for, resolve_transports, transport_specs
    from maitred.core.config import load_config

    conf = load_config(Path(__file__).resolve().parents[2] / "conf" / "maitred.toml")
    assert msgspec.convert(conf.cluster, ClusterConfig) == ClusterConfig(enabled=False)
    assert set(conf.cluster) == set(msgspec.structs.asdict(ClusterConfig()))
    specs = transport_specs(plugin_manager_for(conf))
    assert "cluster" not in resolve_transports(conf, specs)


def test_config_errors_name_the_cluster_table() -> None:
    from maitred.core.app import plugin_manager_for, preflight, resolve_transports, transport_specs
    from maitred.core.config import parse_config
    from maitred.core.errors import ConfigError

    specs = transport_specs(plugin_manager_for(parse_config("")))
    typo = parse_config('[cluster]\nnodee = "x"\n', "f.toml")
    with pytest.raises(ConfigError, match=r"f.toml: cluster: .*did you mean 'node'"):
        preflight(typo, specs)
    bad = parse_config('[cluster]\nnode = "a b"\n', "f.toml")
    with pytest.raises(ConfigError, match=r"f\.toml: cluster: node: 'a b' must be"):
        resolve_transports(bad, specs)
    on = parse_config('[cluster]\nnode = "a"\n', "f.toml")
    assert "cluster" in resolve_transports(on, specs)
