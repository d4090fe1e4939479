"""The MDP codec on bytes: every command of every dialect (docs/reference/mdp.md), round trips,
malformed input, and hypothesis properties (parse never raises anything but MdpFormatError,
and whatever it accepts is exactly what the matching encoder produces).

Frame lists are written out literally from the tables in docs/reference/mdp.md, not built with
the codec."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maitred.core.errors import ErrorCode
from maitred.transports.mdp import codec
from maitred.transports.mdp.codec import (
    CLIENT_REQUEST,
    DISCONNECT,
    ENVELOPE,
    HEARTBEAT,
    READY,
    REPLY_FINAL,
    REPLY_PARTIAL,
    SHORT,
    V2,
    MdpFormatError,
)

E = b""
C01, W01, C02, W02 = b"MDPC01", b"MDPW01", b"MDPC02", b"MDPW02"

RFC = V2
RFC_ENV = V2 | ENVELOPE
MAJORTOMO = V2 | ENVELOPE | SHORT
MAJORTOMO_BARE = V2 | SHORT
#: the dialects a client can speak (0 = MDP/0.1 seen through a REQ socket, client side only)
CLIENT_DIALECTS = [ENVELOPE, RFC, RFC_ENV, MAJORTOMO, MAJORTOMO_BARE]
#: the dialects a worker can speak (SHORT is a client-only notion)
WORKER_DIALECTS = [ENVELOPE, RFC, RFC_ENV]

PROPS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- constants ---------------------------------------------------------------------------------


def test_constants() -> None:
    assert (codec.C01, codec.W01, codec.C02, codec.W02, codec.EMPTY) == (C01, W01, C02, W02, E)
    assert (ENVELOPE, V2, SHORT) == (1, 2, 4)
    assert set(codec.DIALECT_NAMES) == {ENVELOPE, RFC, RFC_ENV, MAJORTOMO, MAJORTOMO_BARE}
    assert set(codec.COMMAND_NAMES) == {
        CLIENT_REQUEST,
        READY,
        REPLY_PARTIAL,
        REPLY_FINAL,
        HEARTBEAT,
        DISCONNECT,
    }


def test_format_error_is_a_value_error_with_a_reason() -> None:
    err = MdpFormatError("bad")
    assert isinstance(err, ValueError)
    assert err.reason == "bad"
    assert str(err) == "bad"


# -- parse: what the broker receives -----------------------------------------------------------

VALID = [
    # MDP/0.1 client: a REQ socket and a DEALER adding the empty frame look the same here
    ([E, C01, b"echo", b"a", b"b"], (CLIENT_REQUEST, ENVELOPE, b"echo", [b"a", b"b"])),
    ([E, C01, b"echo"], (CLIENT_REQUEST, ENVELOPE, b"echo", [])),
    ([E, C01, b"echo", E], (CLIENT_REQUEST, ENVELOPE, b"echo", [E])),
    # RFC 18 client, with and without the leading empty frame
    ([C02, b"\x01", b"echo", b"a"], (CLIENT_REQUEST, RFC, b"echo", [b"a"])),
    ([C02, b"\x01", b"echo"], (CLIENT_REQUEST, RFC, b"echo", [])),
    ([E, C02, b"\x01", b"echo", b"a", b"b"], (CLIENT_REQUEST, RFC_ENV, b"echo", [b"a", b"b"])),
    # majortomo client: REQUEST byte 0x02
    ([E, C02, b"\x02", b"echo", b"a"], (CLIENT_REQUEST, MAJORTOMO, b"echo", [b"a"])),
    ([C02, b"\x02", b"echo", b"a"], (CLIENT_REQUEST, MAJORTOMO_BARE, b"echo", [b"a"])),
    # MDP/0.1 worker
    ([E, W01, b"\x01", b"echo"], (READY, ENVELOPE, b"echo", [])),
    ([E, W01, b"\x03", b"tok", E, b"r1", b"r2"], (REPLY_FINAL, ENVELOPE, b"tok", [b"r1", b"r2"])),
    ([E, W01, b"\x03", b"tok", E], (REPLY_FINAL, ENVELOPE, b"tok", [])),
    ([E, W01, b"\x04"], (HEARTBEAT, ENVELOPE, E, [])),
    ([E, W01, b"\x05"], (DISCONNECT, ENVELOPE, E, [])),
    # RFC 18 worker, no envelope
    ([W02, b"\x01", b"echo"], (READY, RFC, b"echo", [])),
    ([W02, b"\x03", b"tok", E, b"p"], (REPLY_PARTIAL, RFC, b"tok", [b"p"])),
    ([W02, b"\x04", b"tok", E, b"f"], (REPLY_FINAL, RFC, b"tok", [b"f"])),
    ([W02, b"\x05"], (HEARTBEAT, RFC, E, [])),
    ([W02, b"\x06"], (DISCONNECT, RFC, E, [])),
    # MDP/0.2 worker with the envelope (majortomo workers)
    ([E, W02, b"\x01", b"echo"], (READY, RFC_ENV, b"echo", [])),
    ([E, W02, b"\x03", b"tok", E, b"p"], (REPLY_PARTIAL, RFC_ENV, b"tok", [b"p"])),
    ([E, W02, b"\x04", b"tok", E, b"f", b"g"], (REPLY_FINAL, RFC_ENV, b"tok", [b"f", b"g"])),
    ([E, W02, b"\x05"], (HEARTBEAT, RFC_ENV, E, [])),
    ([E, W02, b"\x06"], (DISCONNECT, RFC_ENV, E, [])),
]


@pytest.mark.parametrize(("frames", "expected"), VALID)
def test_parse_valid(frames: list[bytes], expected: codec.Parsed) -> None:
    assert codec.parse(frames) == expected


def test_parse_does_not_mutate_its_input() -> None:
    frames = [E, W02, b"\x04", b"tok", E, b"x"]
    codec.parse(frames)
    assert frames == [E, W02, b"\x04", b"tok", E, b"x"]


MALFORMED = [
    [],
    [E],
    [E, E],
    [E, E, C02, b"\x01", b"echo"],  # two envelopes
    [b"XXXXXX"],
    [b"MDPC03", b"\x01", b"echo"],
    [b"mdpc02", b"\x01", b"echo"],  # headers are case-sensitive
    [b"MDPC02 ", b"\x01", b"echo"],
    [b"echo", b"body"],
    # MDPC02 too short or bad command
    [C02],
    [C02, b"\x01"],
    [E, C02, b"\x01"],
    [E, C02, b"\x02"],
    [C02, b"\x03", b"echo"],  # a reply byte travelling client -> broker
    [C02, b"\x04", b"echo"],
    [C02, b"\x00", b"echo"],
    [C02, E, b"echo"],
    [C02, b"\x01\x00", b"echo"],
    # MDPC01
    [C01, b"echo", b"a"],  # no leading empty frame
    [E, C01],  # no service
    # MDPW01 / MDPW02 header problems
    [W01, b"\x01", b"echo"],  # MDP/0.1 worker without the empty frame
    [E, W01],
    [W02],
    [E, W02],
    # unknown worker commands
    [W02, b"\x00"],
    [W02, b"\x02", b"tok", E],  # REQUEST travels broker -> worker only
    [W02, b"\x07"],
    [E, W01, b"\x02", b"tok", E],
    [E, W01, b"\x06"],  # 0.2's DISCONNECT byte under a 0.1 header
    [E, W02, b"\x01\x01", b"echo"],
    # READY
    [W02, b"\x01"],
    [W02, b"\x01", b"echo", b"extra"],
    [E, W01, b"\x01", b"echo", b"extra"],
    [E, W02, b"\x01", b"echo", E],
    [W02, b"\x01", E],  # empty service
    [E, W01, b"\x01"],
    # replies
    [W02, b"\x04"],
    [W02, b"\x04", b"tok"],
    [W02, b"\x04", b"tok", b"body"],  # no empty frame after the address
    [W02, b"\x03", b"tok", b"x", E],
    [E, W01, b"\x03", b"tok", b"body"],
    [E, W01, b"\x03", b"tok"],
    [E, W02, b"\x03", b"tok"],
    # HEARTBEAT / DISCONNECT with extra frames
    [W02, b"\x05", E],
    [E, W02, b"\x06", b"x"],
    [E, W01, b"\x04", b"x"],
    [E, W01, b"\x05", E],
]


@pytest.mark.parametrize("frames", MALFORMED)
def test_parse_malformed(frames: list[bytes]) -> None:
    with pytest.raises(MdpFormatError) as info:
        codec.parse(frames)
    assert info.value.reason


# -- broker -> peer encoders --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "final", "expected"),
    [
        (ENVELOPE, True, [E, C01, b"echo", b"a", b"b"]),
        (ENVELOPE, False, None),  # MDP/0.1 has no partials
        (RFC, False, [C02, b"\x02", b"echo", b"a", b"b"]),
        (RFC, True, [C02, b"\x03", b"echo", b"a", b"b"]),
        (RFC_ENV, False, [E, C02, b"\x02", b"echo", b"a", b"b"]),
        (RFC_ENV, True, [E, C02, b"\x03", b"echo", b"a", b"b"]),
        (MAJORTOMO, False, [E, C02, b"\x03", b"a", b"b"]),
        (MAJORTOMO, True, [E, C02, b"\x04", b"a", b"b"]),
        (MAJORTOMO_BARE, False, [C02, b"\x03", b"a", b"b"]),
        (MAJORTOMO_BARE, True, [C02, b"\x04", b"a", b"b"]),
    ],
)
def test_client_reply(dialect: int, final: bool, expected: list[bytes] | None) -> None:
    assert codec.client_reply(dialect, final, b"echo", [b"a", b"b"]) == expected


def test_client_reply_empty_body() -> None:
    assert codec.client_reply(ENVELOPE, True, b"s", []) == [E, C01, b"s"]
    assert codec.client_reply(RFC, True, b"s", []) == [C02, b"\x03", b"s"]
    assert codec.client_reply(MAJORTOMO, True, b"s", []) == [E, C02, b"\x04"]


@pytest.mark.parametrize(
    ("dialect", "request_", "heartbeat", "disconnect"),
    [
        (
            ENVELOPE,
            [E, W01, b"\x02", b"tok", E, b"a"],
            [E, W01, b"\x04"],
            [E, W01, b"\x05"],
        ),
        (RFC, [W02, b"\x02", b"tok", E, b"a"], [W02, b"\x05"], [W02, b"\x06"]),
        (
            RFC_ENV,
            [E, W02, b"\x02", b"tok", E, b"a"],
            [E, W02, b"\x05"],
            [E, W02, b"\x06"],
        ),
        (
            MAJORTOMO,
            [E, W02, b"\x02", b"tok", E, b"a"],
            [E, W02, b"\x05"],
            [E, W02, b"\x06"],
        ),
    ],
)
def test_worker_bound_encoders(
    dialect: int,
    request_: list[bytes],
    heartbeat: list[bytes],
    disconnect: list[bytes],
) -> None:
    assert codec.worker_request(dialect, b"tok", [b"a"]) == request_
    assert codec.worker_heartbeat(dialect) == heartbeat
    assert codec.worker_heartbeat_from_worker(dialect) == heartbeat
    assert codec.worker_disconnect(dialect) == disconnect


def test_worker_request_empty_body() -> None:
    assert codec.worker_request(RFC, b"7", []) == [W02, b"\x02", b"7", E]


@pytest.mark.parametrize("dialect", CLIENT_DIALECTS)
@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("body", [[], [b"a"], [b"a", E, b"c"]])
def test_client_reply_routed_is_the_route_then_the_reply(
    dialect: int, final: bool, body: list[bytes]
) -> None:
    """What the broker sends on its ROUTER socket is the tested encoder's output, routed."""
    plain = codec.client_reply(dialect, final, b"echo", body)
    routed = codec.client_reply(dialect, final, b"echo", tuple(body), b"rid")
    assert routed == (None if plain is None else [b"rid", *plain])


@pytest.mark.parametrize("dialect", [*WORKER_DIALECTS, MAJORTOMO])
@pytest.mark.parametrize("body", [[], [b"a"], [b"a", E, b"c"]])
def test_worker_request_routed_is_the_route_then_the_request(
    dialect: int, body: list[bytes]
) -> None:
    plain = codec.worker_request(dialect, b"17", body)
    assert codec.worker_request(dialect, b"17", tuple(body), b"rid") == [b"rid", *plain]


def test_reply_and_request_tables_cover_every_dialect_parse_reports() -> None:
    assert set(codec.CLIENT_REPLY_HEADS) == set(CLIENT_DIALECTS)
    assert set(WORKER_DIALECTS) <= set(codec.WORKER_REQUEST_HEADS)
    assert {ENVELOPE, RFC, RFC_ENV} == codec.REPLY_HAS_SERVICE


# -- errors: code -> wire form -------------------------------------------------------------------


def test_every_error_code_has_its_reply_frame() -> None:
    assert set(codec.ERROR_FRAMES) == set(ErrorCode)
    for code, frame in codec.ERROR_FRAMES.items():
        assert frame == str(int(code)).encode()


@pytest.mark.parametrize(
    ("code", "reason", "body"),
    [
        (ErrorCode.NO_WORKER, "no worker for echo", [b"503", b"no worker for echo"]),
        (ErrorCode.TOO_LARGE, "too big", [b"413", b"too big"]),
        (ErrorCode.SHUTTING_DOWN, "broker is shutting down", [b"530", b"broker is shutting down"]),
        (ErrorCode.INTERNAL, "caf\u00e9 \udcff", [b"500", b"caf\xc3\xa9 ?"]),
    ],
)
def test_error_body(code: ErrorCode, reason: str, body: list[bytes]) -> None:
    assert codec.error_body(code, reason) == body


@pytest.mark.parametrize("code", list(ErrorCode))
def test_parse_error_body_round_trip(code: ErrorCode) -> None:
    assert codec.parse_error_body(codec.error_body(code, "why")) == (code, "why")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([b"599", b"odd"], (ErrorCode.INTERNAL, "odd")),  # not in the table: 500
        ([b"200", b"ok"], None),
        ([b"50", b"short"], None),
        ([b"5x3", b"not digits"], None),
        ([b"503"], None),
        ([b"503", b"a", b"b"], None),
        ([], None),
    ],
)
def test_parse_error_body_other_shapes(
    body: list[bytes], expected: tuple[ErrorCode, str] | None
) -> None:
    assert codec.parse_error_body(body) == expected


# -- peer side: client ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (ENVELOPE, [E, C01, b"echo", b"a"]),
        (RFC, [C02, b"\x01", b"echo", b"a"]),
        (RFC_ENV, [E, C02, b"\x01", b"echo", b"a"]),
        (MAJORTOMO, [E, C02, b"\x02", b"echo", b"a"]),
        (MAJORTOMO_BARE, [C02, b"\x02", b"echo", b"a"]),
    ],
)
def test_client_request(dialect: int, expected: list[bytes]) -> None:
    """What a DEALER client sends (a REQ socket sends the same minus the leading empty frame)."""
    assert codec.client_request(dialect, b"echo", [b"a"]) == expected


def test_client_request_without_body() -> None:
    assert codec.client_request(RFC, b"echo", []) == [C02, b"\x01", b"echo"]


CLIENT_REPLIES = [
    (ENVELOPE, [E, C01, b"echo", b"r"], (True, b"echo", [b"r"])),
    (ENVELOPE, [E, C01, b"echo"], (True, b"echo", [])),
    (0, [C01, b"echo", b"r"], (True, b"echo", [b"r"])),  # REQ socket: envelope already removed
    (RFC, [C02, b"\x02", b"echo", b"p"], (False, b"echo", [b"p"])),
    (RFC, [C02, b"\x03", b"echo", b"f", b"g"], (True, b"echo", [b"f", b"g"])),
    (RFC, [C02, b"\x03", b"echo"], (True, b"echo", [])),
    (RFC_ENV, [E, C02, b"\x02", b"echo", b"p"], (False, b"echo", [b"p"])),
    (RFC_ENV, [E, C02, b"\x03", b"echo", b"f"], (True, b"echo", [b"f"])),
    (MAJORTOMO, [E, C02, b"\x03", b"p"], (False, None, [b"p"])),
    (MAJORTOMO, [E, C02, b"\x04", b"f"], (True, None, [b"f"])),
    (MAJORTOMO, [E, C02, b"\x04"], (True, None, [])),
    (MAJORTOMO_BARE, [C02, b"\x04", b"f"], (True, None, [b"f"])),
]


@pytest.mark.parametrize(("dialect", "frames", "expected"), CLIENT_REPLIES)
def test_parse_client_reply(
    dialect: int, frames: list[bytes], expected: tuple[bool, bytes | None, list[bytes]]
) -> None:
    assert codec.parse_client_reply(dialect, frames) == expected


@pytest.mark.parametrize(
    ("dialect", "frames"),
    [
        (ENVELOPE, []),
        (ENVELOPE, [C01, b"echo", b"r"]),  # envelope missing
        (ENVELOPE, [E, C01]),  # no service frame
        (ENVELOPE, [E, C02, b"\x03", b"echo"]),  # wrong version
        (ENVELOPE, [b"x", C01, b"echo"]),
        (0, [E, C01, b"echo"]),  # REQ-style client: header expected first
        (RFC, []),
        (RFC, [C02]),
        (RFC, [C02, b"\x03"]),  # no service frame
        (RFC, [C02, b"\x04", b"echo"]),  # majortomo's FINAL byte
        (RFC, [C02, b"\x01", b"echo"]),  # REQUEST byte
        (RFC, [E, C02, b"\x03", b"echo"]),  # unexpected envelope
        (RFC, [C01, b"echo"]),
        (RFC, [W02, b"\x03", b"echo"]),
        (RFC_ENV, [C02, b"\x03", b"echo"]),  # envelope missing
        (MAJORTOMO, [E, C02, b"\x02", b"x"]),  # RFC's PARTIAL byte
        (MAJORTOMO, [E, C02]),
        (MAJORTOMO, [C02, b"\x04", b"f"]),  # envelope missing
        (MAJORTOMO, [E, C01, b"\x04"]),
        (MAJORTOMO_BARE, [C02, b"\x05"]),
    ],
)
def test_parse_client_reply_malformed(dialect: int, frames: list[bytes]) -> None:
    with pytest.raises(MdpFormatError):
        codec.parse_client_reply(dialect, frames)


# -- peer side: worker --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "ready", "partial", "final"),
    [
        (ENVELOPE, [E, W01, b"\x01", b"echo"], None, [E, W01, b"\x03", b"tok", E, b"r"]),
        (
            RFC,
            [W02, b"\x01", b"echo"],
            [W02, b"\x03", b"tok", E, b"r"],
            [W02, b"\x04", b"tok", E, b"r"],
        ),
        (
            RFC_ENV,
            [E, W02, b"\x01", b"echo"],
            [E, W02, b"\x03", b"tok", E, b"r"],
            [E, W02, b"\x04", b"tok", E, b"r"],
        ),
        (
            MAJORTOMO,
            [E, W02, b"\x01", b"echo"],
            [E, W02, b"\x03", b"tok", E, b"r"],
            [E, W02, b"\x04", b"tok", E, b"r"],
        ),
    ],
)
def test_worker_encoders(
    dialect: int, ready: list[bytes], partial: list[bytes] | None, final: list[bytes]
) -> None:
    assert codec.worker_ready(dialect, b"echo") == ready
    assert codec.worker_reply(dialect, b"tok", [b"r"]) == final
    assert codec.worker_reply(dialect, b"tok", [b"r"], final=True) == final
    if partial is None:
        with pytest.raises(ValueError, match="partial"):
            codec.worker_reply(dialect, b"tok", [b"r"], final=False)
    else:
        assert codec.worker_reply(dialect, b"tok", [b"r"], final=False) == partial


def test_worker_reply_empty_body() -> None:
    assert codec.worker_reply(ENVELOPE, b"t", []) == [E, W01, b"\x03", b"t", E]
    assert codec.worker_reply(RFC, b"t", [], final=False) == [W02, b"\x03", b"t", E]


WORKER_INBOUND = [
    (ENVELOPE, [E, W01, b"\x02", b"tok", E, b"a", b"b"], (CLIENT_REQUEST, b"tok", [b"a", b"b"])),
    (ENVELOPE, [E, W01, b"\x02", b"tok", E], (CLIENT_REQUEST, b"tok", [])),
    (ENVELOPE, [E, W01, b"\x04"], (HEARTBEAT, E, [])),
    (ENVELOPE, [E, W01, b"\x05"], (DISCONNECT, E, [])),
    (RFC, [W02, b"\x02", b"tok", E, b"a"], (CLIENT_REQUEST, b"tok", [b"a"])),
    (RFC, [W02, b"\x05"], (HEARTBEAT, E, [])),
    (RFC, [W02, b"\x06"], (DISCONNECT, E, [])),
    (RFC_ENV, [E, W02, b"\x02", b"tok", E, b"a"], (CLIENT_REQUEST, b"tok", [b"a"])),
    (RFC_ENV, [E, W02, b"\x05"], (HEARTBEAT, E, [])),
    (RFC_ENV, [E, W02, b"\x06"], (DISCONNECT, E, [])),
    (MAJORTOMO, [E, W02, b"\x02", b"tok", E, b"a"], (CLIENT_REQUEST, b"tok", [b"a"])),
    (MAJORTOMO, [E, W02, b"\x05"], (HEARTBEAT, E, [])),
    (MAJORTOMO, [E, W02, b"\x06"], (DISCONNECT, E, [])),
]


@pytest.mark.parametrize(("dialect", "frames", "expected"), WORKER_INBOUND)
def test_parse_worker_inbound(
    dialect: int, frames: list[bytes], expected: tuple[int, bytes, list[bytes]]
) -> None:
    assert codec.parse_worker_inbound(dialect, frames) == expected


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [E],
        [W02],
        [E, W02],
        [b"MDPW03", b"\x05"],
        [C02, b"\x02", b"tok", E],  # a client header
        [W02, b"\x01", b"echo"],  # READY travels worker -> broker only
        [W02, b"\x04", b"tok", E],  # FINAL travels worker -> broker only
        [W02, b"\x07"],
        [E, W01, b"\x06"],
        [W02, b"\x02"],
        [W02, b"\x02", b"tok"],  # no empty frame
        [W02, b"\x02", b"tok", b"x", b"body"],  # address not followed by an empty frame
        [E, W01, b"\x02", b"tok"],
        [E, E, W02, b"\x05"],
    ],
)
def test_parse_worker_inbound_malformed(frames: list[bytes]) -> None:
    for dialect in WORKER_DIALECTS:
        with pytest.raises(MdpFormatError):
            codec.parse_worker_inbound(dialect, frames)


@pytest.mark.parametrize(
    ("dialect", "frames"),
    [
        # the broker answers a worker in its own dialect; anything else is not for this worker
        (ENVELOPE, [W01, b"\x04"]),  # MDP/0.1 without the empty frame
        (ENVELOPE, [W01, b"\x02", b"tok", E, b"a"]),
        (ENVELOPE, [E, W02, b"\x05"]),  # wrong version
        (ENVELOPE, [b"x", W01, b"\x04"]),
        (RFC, [E, W02, b"\x05"]),  # unexpected envelope
        (RFC, [E, W02, b"\x02", b"tok", E, b"a"]),
        (RFC, [W01, b"\x04"]),
        (RFC, [E, W01, b"\x04"]),
        (RFC_ENV, [W02, b"\x05"]),  # envelope missing
        (RFC_ENV, [W02, b"\x02", b"tok", E, b"a"]),
        (MAJORTOMO, [W02, b"\x06"]),
        (RFC_ENV, [E, W01, b"\x04"]),
        # HEARTBEAT / DISCONNECT carry nothing
        (RFC, [W02, b"\x05", E]),
        (RFC_ENV, [E, W02, b"\x06", b"x"]),
        (ENVELOPE, [E, W01, b"\x04", b"x"]),
    ],
)
def test_parse_worker_inbound_wrong_dialect(dialect: int, frames: list[bytes]) -> None:
    with pytest.raises(MdpFormatError):
        codec.parse_worker_inbound(dialect, frames)


# -- round trips ----------------------------------------------------------------------------------

BODIES = [[], [E], [b"a"], [b"a", E, b"b"], [b"\x00\x01", b"MDPC02", b"\x04"]]


@pytest.mark.parametrize("dialect", CLIENT_DIALECTS)
@pytest.mark.parametrize("body", BODIES)
def test_round_trip_client(dialect: int, body: list[bytes]) -> None:
    """client_request -> parse -> client_reply (in the detected dialect) -> parse_client_reply."""
    command, detected, service, got = codec.parse(codec.client_request(dialect, b"svc", body))
    assert (command, detected, service, got) == (CLIENT_REQUEST, dialect, b"svc", body)
    for final in (False, True):
        frames = codec.client_reply(detected, final, service, body)
        if frames is None:
            assert dialect == ENVELOPE and not final
            continue
        expect_service = None if dialect & SHORT else b"svc"
        assert codec.parse_client_reply(dialect, frames) == (final, expect_service, body)


@pytest.mark.parametrize("body", BODIES)
def test_round_trip_req_socket_client(body: list[bytes]) -> None:
    """An MDP/0.1 REQ socket adds the empty frame on send and strips it on receive."""
    sent = codec.client_request(ENVELOPE, b"svc", body)
    assert sent[0] == E
    on_wire = [E, *sent[1:]]  # what the REQ socket puts on the wire
    _, detected, service, got = codec.parse(on_wire)
    reply = codec.client_reply(detected, True, service, got)
    assert reply is not None and reply[0] == E
    assert codec.parse_client_reply(0, reply[1:]) == (True, b"svc", body)


@pytest.mark.parametrize("dialect", [*WORKER_DIALECTS, MAJORTOMO])
@pytest.mark.parametrize("body", BODIES)
def test_round_trip_worker(dialect: int, body: list[bytes]) -> None:
    """Worker-side encoders -> parse, and broker-side encoders -> parse_worker_inbound."""
    expected = dialect & ~SHORT
    assert codec.parse(codec.worker_ready(dialect, b"svc")) == (READY, expected, b"svc", [])
    assert codec.parse(codec.worker_reply(dialect, b"tok", body)) == (
        REPLY_FINAL,
        expected,
        b"tok",
        body,
    )
    if dialect & V2:
        assert codec.parse(codec.worker_reply(dialect, b"tok", body, final=False)) == (
            REPLY_PARTIAL,
            expected,
            b"tok",
            body,
        )
    hb = codec.worker_heartbeat_from_worker(dialect)
    assert codec.parse(hb) == (HEARTBEAT, expected, E, [])
    assert codec.parse(codec.worker_disconnect(dialect)) == (DISCONNECT, expected, E, [])

    assert codec.parse_worker_inbound(dialect, codec.worker_request(dialect, b"tok", body)) == (
        CLIENT_REQUEST,
        b"tok",
        body,
    )
    assert codec.parse_worker_inbound(dialect, codec.worker_heartbeat(dialect)) == (
        HEARTBEAT,
        E,
        [],
    )
    assert codec.parse_worker_inbound(dialect, codec.worker_disconnect(dialect)) == (
        DISCONNECT,
        E,
        [],
    )


# -- properties ------------------------------------------------------------------------------------

INTERESTING = [E, C01, W01, C02, W02, *(bytes([i]) for i in range(8)), b"svc", b"\x01\x00"]
frame = st.one_of(st.sampled_from(INTERESTING), st.binary(max_size=6))
random_frames = st.lists(frame, max_size=9)
body_st = st.lists(st.binary(max_size=5), max_size=4)


@st.composite
def near_valid(draw: st.DrawFn) -> list[bytes]:
    """A valid message of some dialect, then maybe one frame inserted, dropped or replaced."""
    dialect = draw(st.sampled_from(CLIENT_DIALECTS))
    wdialect = draw(st.sampled_from(WORKER_DIALECTS))
    name = draw(st.binary(min_size=1, max_size=4))
    body = draw(body_st)
    frames = draw(
        st.sampled_from(
            [
                codec.client_request(dialect, name, body),
                codec.worker_ready(wdialect, name),
                codec.worker_reply(wdialect, name, body),
                codec.worker_reply(wdialect | V2, name, body, final=False),
                codec.worker_heartbeat(wdialect),
                codec.worker_disconnect(wdialect),
                codec.worker_request(wdialect, name, body),
                codec.client_reply(dialect, True, name, body) or [],
            ]
        )
    )
    frames = list(frames)
    op = draw(st.sampled_from(["keep", "insert", "drop", "replace"]))
    if op == "keep" or (op != "insert" and not frames):
        return frames
    if op == "insert":
        frames.insert(draw(st.integers(0, len(frames))), draw(frame))
    else:
        i = draw(st.integers(0, len(frames) - 1))
        if op == "drop":
            del frames[i]
        else:
            frames[i] = draw(frame)
    return frames


any_frames = st.one_of(random_frames, near_valid())


def _reencode(parsed: codec.Parsed) -> list[bytes]:
    """The one frame list the peer-side encoders produce for a parsed message."""
    command, dialect, name, body = parsed
    if command == CLIENT_REQUEST:
        return codec.client_request(dialect, name, body)
    if command == READY:
        return codec.worker_ready(dialect, name)
    if command in (REPLY_PARTIAL, REPLY_FINAL):
        return codec.worker_reply(dialect, name, body, final=command == REPLY_FINAL)
    if command == HEARTBEAT:
        return codec.worker_heartbeat_from_worker(dialect)
    assert command == DISCONNECT
    return codec.worker_disconnect(dialect)


@PROPS
@given(any_frames)
def test_parse_total(frames: list[bytes]) -> None:
    """parse returns a well-formed tuple or raises MdpFormatError, never anything else; and what
    it accepts is exactly the encoding of what it returns (no information lost or invented)."""
    try:
        parsed = codec.parse(frames)
    except MdpFormatError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    command, dialect, name, body = parsed
    assert command in codec.COMMAND_NAMES
    assert dialect in codec.DIALECT_NAMES
    assert isinstance(name, bytes)
    assert isinstance(body, list) and all(isinstance(f, bytes) for f in body)
    if command in (READY, HEARTBEAT, DISCONNECT):
        assert body == []
    if command in (HEARTBEAT, DISCONNECT):
        assert name == E
    if command == READY:
        assert name
    if command != CLIENT_REQUEST:
        assert not dialect & SHORT
    if command == REPLY_PARTIAL:
        assert dialect & V2
    assert _reencode(parsed) == frames


@PROPS
@given(st.sampled_from([0, *CLIENT_DIALECTS]), any_frames)
def test_parse_client_reply_total(dialect: int, frames: list[bytes]) -> None:
    try:
        final, service, body = codec.parse_client_reply(dialect, frames)
    except MdpFormatError:
        return
    assert isinstance(final, bool)
    assert all(isinstance(f, bytes) for f in body)
    assert (service is None) == bool(dialect & SHORT)
    if not dialect & V2:
        assert final
    encoded = codec.client_reply(dialect or ENVELOPE, final, service or E, body)
    assert encoded is not None
    assert (encoded if dialect else encoded[1:]) == frames


@PROPS
@given(st.sampled_from([*WORKER_DIALECTS, MAJORTOMO]), any_frames)
def test_parse_worker_inbound_total(dialect: int, frames: list[bytes]) -> None:
    try:
        command, token, body = codec.parse_worker_inbound(dialect, frames)
    except MdpFormatError:
        return
    assert command in (CLIENT_REQUEST, HEARTBEAT, DISCONNECT)
    assert isinstance(token, bytes) and all(isinstance(f, bytes) for f in body)
    # strict: exactly what the broker-side encoders produce for this worker's dialect
    if command == CLIENT_REQUEST:
        assert codec.worker_request(dialect, token, body) == frames
    elif command == HEARTBEAT:
        assert token == E and body == []
        assert codec.worker_heartbeat(dialect) == frames
    else:
        assert token == E and body == []
        assert codec.worker_disconnect(dialect) == frames


@PROPS
@given(
    st.sampled_from(CLIENT_DIALECTS),
    st.binary(max_size=8),
    body_st,
    st.booleans(),
)
def test_client_round_trip_property(
    dialect: int, service: bytes, body: list[bytes], final: bool
) -> None:
    assert codec.parse(codec.client_request(dialect, service, body)) == (
        CLIENT_REQUEST,
        dialect,
        service,
        body,
    )
    frames = codec.client_reply(dialect, final, service, body)
    if frames is not None:
        expect_service = None if dialect & SHORT else service
        assert codec.parse_client_reply(dialect, frames) == (final, expect_service, body)


@PROPS
@given(
    st.sampled_from(WORKER_DIALECTS),
    st.binary(min_size=1, max_size=8),
    st.binary(max_size=8),
    body_st,
)
def test_worker_round_trip_property(
    dialect: int, service: bytes, token: bytes, body: list[bytes]
) -> None:
    assert codec.parse(codec.worker_ready(dialect, service)) == (READY, dialect, service, [])
    assert codec.parse(codec.worker_reply(dialect, token, body)) == (
        REPLY_FINAL,
        dialect,
        token,
        body,
    )
    assert codec.parse_worker_inbound(dialect, codec.worker_request(dialect, token, body)) == (
        CLIENT_REQUEST,
        token,
        body,
    )
