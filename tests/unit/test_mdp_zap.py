"""The ZAP side of MDP over CURVE without sockets: Z85, the key table's problems, ZAP requests
parsed from any frames (a hypothesis property: every input gives an answer or a drop, never an
exception), the verdicts, and the broker's key files."""

from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.utils.z85
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maitred.core.access import Identity
from maitred.core.errors import MaitredError
from maitred.transports.mdp import zap
from maitred.transports.mdp.config import MdpConfig
from maitred.transports.mdp.curve import (
    client_curve,
    load_secret_key,
    read_public_key,
    secret_key_problem,
    write_certificate,
)
from maitred.transports.mdp.plugin import preflight

PROPS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PUBLIC, SECRET = zmq.curve_keypair()
KEY = zmq.utils.z85.decode(PUBLIC)
ALICE = Identity("alice", frozenset({"apps"}))
KEYS = {KEY: ALICE}
ENVELOPE = [b"\x00\x01", b""]


def request(
    *, version: bytes = b"1.0", mechanism: bytes = b"CURVE", creds: list[bytes] | None = None
) -> list[bytes]:
    return [
        version,
        b"7",
        b"maitred.mdp",
        b"127.0.0.1",
        b"",
        mechanism,
        *(creds if creds is not None else [KEY]),
    ]


# -- Z85 ---------------------------------------------------------------------------------------


@PROPS
@given(st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4]))
def test_z85_matches_libzmq(raw: bytes) -> None:
    text = zap.z85_encode(raw)
    assert text.encode() == zmq.utils.z85.encode(raw)
    assert zap.z85_decode(text) == raw


@pytest.mark.parametrize(
    ("text", "why"),
    [("abcd", "groups of 5"), ("abcd~", "not a Z85 character"), ("#####", "too large")],
)
def test_z85_decode_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        zap.z85_decode(text)


@PROPS
@given(st.text(max_size=50))
def test_z85_decode_is_total(text: str) -> None:
    try:
        zap.z85_decode(text)
    except ValueError:
        pass


# -- the key table -----------------------------------------------------------------------------


def key(public: str = PUBLIC.decode(), identity: str = "alice") -> zap.CurveKey:
    return zap.CurveKey(public_key=public, identity=identity, roles=["apps"])


def test_key_problems_name_the_entry_and_the_fix() -> None:
    other = zmq.curve_keypair()[0].decode()
    problems = zap.key_problems(
        [key(), key("short"), key("~" * 40), key(PUBLIC.decode()), key(other, "")]
    )
    assert problems == [
        "keys[1].public_key: expected 40 Z85 characters (maitred keygen prints one), got 5",
        "keys[2].public_key: not Z85: '~' is not a Z85 character",
        "keys[3].public_key: the same key as keys[0]",
        "keys[4].identity: empty",
    ]
    assert zap.key_problems([key(), key(other, "bob")]) == []


def test_config_problems_cover_the_curve_keys(tmp_path: Path) -> None:
    bad = MdpConfig(keys=[key("nope")], curve_endpoints=["tcp://127.0.0.1:5555"])
    assert any("keys[0].public_key" in p for p in bad.problems())
    assert any("set curve_secret_key_file too" in p for p in bad.problems())
    only_ipc = MdpConfig(endpoints=["ipc:///tmp/x"], curve_secret_key_file="/k")
    assert any("no endpoint uses CURVE" in p for p in only_ipc.problems())
    assert only_ipc.curve_bound() == []
    stray = MdpConfig(curve_secret_key_file="/k", curve_endpoints=["tcp://10.0.0.1:1"])
    assert any("is not one of endpoints" in p for p in stray.problems())
    both = MdpConfig(
        endpoints=["tcp://127.0.0.1:1", "ipc:///tmp/y", "inproc://z"],
        curve_secret_key_file="/k",
    )
    assert both.problems() == []
    assert both.curve_bound() == ["tcp://127.0.0.1:1"]
    listed = msgspec.structs.replace(both, curve_endpoints=["ipc:///tmp/y"])
    assert listed.curve_bound() == ["ipc:///tmp/y"]
    inproc = msgspec.structs.replace(both, curve_endpoints=["inproc://z"])
    assert any("CURVE is for tcp:// and ipc://" in p for p in inproc.problems())
    assert MdpConfig().curve_bound() == []


def test_key_table_maps_keys_and_names() -> None:
    table = zap.KeyTable([key(), key(zmq.curve_keypair()[0].decode(), "alice")])
    assert len(table) == 2
    assert table.by_key[KEY] == ALICE
    assert table.by_name["alice"] == ALICE


# -- ZAP requests ------------------------------------------------------------------------------


def test_known_key_is_its_identity() -> None:
    out = zap.respond(ENVELOPE + request(), KEYS)
    assert out.reply == [*ENVELOPE, b"1.0", b"7", b"200", b"OK", b"alice", b""]
    assert out.request is not None and out.request.credentials == (KEY,)
    assert not out.malformed


def test_unknown_key_is_refused_with_400() -> None:
    out = zap.respond(ENVELOPE + request(creds=[bytes(32)]), KEYS)
    assert out.reply == [*ENVELOPE, b"1.0", b"7", b"400", b"unknown CURVE key", b"", b""]
    assert out.verdict is not None and out.verdict.status == b"400"


def test_null_is_the_transports_own_identity_and_plain_is_refused() -> None:
    out = zap.respond(ENVELOPE + request(mechanism=b"NULL", creds=[]), KEYS)
    assert out.reply is not None and out.reply[4:7] == [b"200", b"OK", b""]
    out = zap.respond(ENVELOPE + request(mechanism=b"PLAIN", creds=[b"u", b"p"]), KEYS)
    assert out.reply is not None and out.reply[4] == b"400"


@pytest.mark.parametrize(
    ("frames", "answered", "why"),
    [
        ([], False, "no REQ envelope"),
        ([b"rid"], False, "no REQ envelope"),
        ([b"rid", b"x", *request()], False, "no REQ envelope"),
        (ENVELOPE, False, "0 frames"),
        ([*ENVELOPE, b"1.0"], False, "1 frames"),
        ([*ENVELOPE, b"1.0", b"9"], True, "2 frames"),
        (ENVELOPE + request(version=b"2.0"), True, "ZAP version b'2.0'"),
        (ENVELOPE + request(mechanism=b"GSSAPI"), True, "unknown mechanism"),
        (ENVELOPE + request(creds=[]), True, "CURVE with 0 credential frames"),
        (ENVELOPE + request(creds=[KEY, KEY]), True, "CURVE with 2 credential frames"),
        (ENVELOPE + request(creds=[KEY[:31]]), True, "CURVE key of 31 bytes"),
    ],
)
def test_malformed_requests_are_answered_500_or_dropped(
    frames: list[bytes], answered: bool, why: str
) -> None:
    out = zap.respond(frames, KEYS)
    assert why in out.malformed
    if answered:
        assert out.reply is not None and out.reply[4] == b"500"
    else:
        assert out.reply is None


frame = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"1.0", b"CURVE", b"NULL", b"PLAIN", KEY, b"200"]),
)


@PROPS
@given(st.lists(frame, max_size=12))
def test_respond_is_total(frames: list[bytes]) -> None:
    """Any frames: an Outcome (a reply of the right shape, or a drop), never an exception; a
    200 only ever for the one known key or NULL."""
    out = zap.respond(frames, KEYS)
    if out.reply is not None:
        assert out.reply[:2] == frames[:2] and len(out.reply) == 8
        assert out.reply[2] == b"1.0" and out.reply[4] in (b"200", b"400", b"500")
        if out.reply[4] == b"200":
            assert out.request is not None
            assert out.request.mechanism == b"NULL" or out.request.credentials == (KEY,)


@PROPS
@given(st.lists(frame, max_size=12))
def test_parse_request_raises_only_zap_error(frames: list[bytes]) -> None:
    try:
        parsed = zap.parse_request(frames)
    except zap.ZapError:
        return
    assert parsed.mechanism in (b"NULL", b"PLAIN", b"CURVE")


# -- key files ---------------------------------------------------------------------------------


def test_certificates_are_zeromqs_and_the_secret_is_private(tmp_path: Path) -> None:
    public_file, secret_file, public = write_certificate(tmp_path, "broker")
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    import zmq.auth

    assert zmq.auth.load_certificate(public_file) == (public.encode(), None)
    pub, sec = zmq.auth.load_certificate(secret_file)
    assert pub == public.encode() and sec is not None
    assert load_secret_key(str(secret_file)) == (pub, sec)
    assert read_public_key(str(public_file)) == pub
    assert read_public_key(public) == pub
    with pytest.raises(FileExistsError):
        write_certificate(tmp_path, "broker")
    with pytest.raises(ValueError):
        write_certificate(tmp_path, "../x")


def test_secret_key_problems_name_the_file_and_the_fix(tmp_path: Path) -> None:
    public_file, secret_file, _ = write_certificate(tmp_path, "k")
    assert secret_key_problem(str(secret_file)) is None
    assert "no such file" in (secret_key_problem(str(tmp_path / "none")) or "")
    public_file.chmod(0o600)
    assert "no secret-key line" in (secret_key_problem(str(public_file)) or "")
    secret_file.chmod(0o640)
    problem = secret_key_problem(str(secret_file)) or ""
    assert f"chmod 600 {secret_file}" in problem
    with pytest.raises(MaitredError, match="chmod 600"):
        load_secret_key(str(secret_file))
    junk = tmp_path / "junk"
    junk.write_text('curve\n    public-key = "short"\n    secret-key = "short"\n')
    junk.chmod(0o600)
    assert "expected 40 Z85 characters" in (secret_key_problem(str(junk)) or "")


def test_preflight_reports_the_secret_key_file(tmp_path: Path) -> None:
    _, secret_file, _ = write_certificate(tmp_path, "k")
    ok = MdpConfig(curve_secret_key_file=str(secret_file))
    assert preflight(ok) == []
    secret_file.chmod(0o644)
    (problem,) = preflight(ok)
    assert problem.key == "curve_secret_key_file" and "chmod 600" in problem.text


def test_client_curve_keys(tmp_path: Path) -> None:
    _, secret_file, public = write_certificate(tmp_path, "c")
    assert client_curve(None, None) is None
    server, mine, _ = client_curve(PUBLIC, str(secret_file)) or (b"", b"", b"")
    assert server == PUBLIC and mine == public.encode()
    fresh = client_curve(PUBLIC.decode(), None)
    assert fresh is not None and len(fresh[1]) == 40
    with pytest.raises(ValueError, match="nor a readable key file"):
        client_curve(str(tmp_path), None)
    empty = tmp_path / "empty.key"
    empty.write_text("curve\n")
    with pytest.raises(ValueError, match="no public-key line"):
        client_curve(str(empty), None)


def test_the_handler_counts_and_reports(tmp_path: Path) -> None:
    """ZapHandler.handle (the socket is only bound here, nothing is sent)."""
    from maitred.transports.mdp.curve import ZapHandler

    context: zmq.Context[object] = zmq.Context()
    refused: list[bytes] = []
    stats: Counter[str] = Counter()
    try:
        handler = ZapHandler(
            context,
            zap.KeyTable([key()]),
            stats,
            lambda req, verdict: refused.append(verdict.status),
        )
        with pytest.raises(MaitredError, match="another ZAP handler"):
            ZapHandler(context, zap.KeyTable(), stats, lambda r, v: None)
        assert handler.handle(ENVELOPE + request()) is not None
        assert handler.handle(ENVELOPE + request(creds=[bytes(32)])) is not None
        assert handler.handle([b"garbage"]) is None
        assert stats == Counter({"mdp.zap.curve": 1, "mdp.zap.malformed": 1})
        assert refused == [b"400"]
        handler.socket.close(0)
    finally:
        context.destroy(0)
