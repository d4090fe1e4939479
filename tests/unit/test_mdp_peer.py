"""The sans-I/O core the sync and asyncio MDP peers share (transports/mdp/peer.py), without
sockets: a request's exchange and what a worker answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from maitred.transports.mdp import codec
from maitred.transports.mdp.codec import ENVELOPE, SHORT, V2, MdpFormatError
from maitred.transports.mdp.peer import (
    ErrorReply,
    Exchange,
    FinalReply,
    WorkerCore,
    default_error_reply,
    dialect_flags,
)

E = b""
C02, W02, W01 = b"MDPC02", b"MDPW02", b"MDPW01"


# -- client: one exchange -------------------------------------------------------------------------


def test_exchange_frames_and_replies_rfc() -> None:
    ex = Exchange(V2, "echo", [b"a", bytearray(b"b")])
    assert ex.frames == [C02, b"\x01", b"echo", b"a", b"b"]
    assert ex.receive([C02, b"\x02", b"echo", b"p"]) == (False, [b"p"])
    assert not ex.done
    assert ex.receive([C02, b"\x03", b"echo", b"f"]) == (True, [b"f"])
    assert ex.done


def test_exchange_majortomo_replies_carry_no_service() -> None:
    ex = Exchange(V2 | ENVELOPE | SHORT, b"svc", [])
    assert ex.frames == [E, C02, b"\x02", b"svc"]
    assert ex.receive([E, C02, b"\x04", b"x"]) == (True, [b"x"])


def test_exchange_refuses_a_reply_for_another_service() -> None:
    ex = Exchange(V2, "echo", [b"a"])
    with pytest.raises(MdpFormatError, match="reply for service b'other'"):
        ex.receive([C02, b"\x03", b"other", b"f"])
    assert not ex.done


def test_exchange_refuses_what_is_not_a_reply() -> None:
    with pytest.raises(MdpFormatError):
        Exchange(V2, "echo", []).receive([W02, b"\x03"])


@pytest.mark.parametrize("body", [b"single", "text", [b"ok", "no"], [b"ok", 3]])
def test_exchange_checks_the_body_before_anything_is_sent(body: object) -> None:
    with pytest.raises(TypeError):
        Exchange(V2, "echo", body)  # type: ignore[arg-type]


def test_exchange_service_must_be_str_or_bytes() -> None:
    with pytest.raises(TypeError, match="service must be str or bytes"):
        Exchange(V2, 42, [])  # type: ignore[arg-type]


# -- worker: what it answers ----------------------------------------------------------------------


def _core(
    handler: object,
    dialect: str = "0.2",
    heartbeat_interval: float = 1.0,
    error_reply: ErrorReply | None = default_error_reply,
) -> WorkerCore:
    return WorkerCore(
        "tcp://127.0.0.1:1",
        "svc",
        handler,  # type: ignore[arg-type]
        dialect=dialect,
        heartbeat_interval=heartbeat_interval,
        liveness=3,
        error_reply=error_reply,
    )


def test_a_plain_handler_gets_one_final() -> None:
    core = _core(lambda body: [b"re", *body])
    assert list(core._sync_replies(b"7", [b"x"])) == [[W02, b"\x04", b"7", E, b"re", b"x"]]


def test_a_generator_streams_partials_then_its_final() -> None:
    def handler(body: list[bytes]) -> Iterator[object]:
        yield [b"1"]
        yield (b"2",)
        yield FinalReply([b"done"])
        yield [b"never"]  # pragma: no cover - the stream ended at FinalReply

    assert list(_core(handler)._sync_replies(b"7", [])) == [
        [W02, b"\x03", b"7", E, b"1"],
        [W02, b"\x03", b"7", E, b"2"],
        [W02, b"\x04", b"7", E, b"done"],
    ]


def test_a_generator_that_returns_its_body() -> None:
    def handler(body: list[bytes]) -> Iterator[object]:
        yield [b"1"]
        return [b"end"]

    replies = list(_core(handler)._sync_replies(b"7", []))
    assert replies[-1] == [W02, b"\x04", b"7", E, b"end"]


@pytest.mark.allow_error_logs("handler failed")
def test_a_failing_handler_answers_the_error_reply() -> None:
    def handler(body: list[bytes]) -> list[bytes]:
        raise ValueError("boom")

    replies = list(_core(handler)._sync_replies(b"7", []))
    assert replies == [[W02, b"\x04", b"7", E, b"500", b"ValueError: boom"]]
    assert codec.parse_error_body(replies[0][4:]) is not None


def test_a_failing_handler_without_error_reply_raises() -> None:
    def handler(body: list[bytes]) -> list[bytes]:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(_core(handler, error_reply=None)._sync_replies(b"7", []))


@pytest.mark.allow_error_logs("handler failed")
def test_a_bad_reply_value_becomes_an_error_reply() -> None:
    replies = list(_core(lambda body: b"not a list")._sync_replies(b"7", []))
    assert replies[0][4] == b"500"
    assert replies[0][5].startswith(b"TypeError: the final reply must be a list or tuple")


def test_mdp01_refuses_streaming_handlers() -> None:
    def handler(body: list[bytes]) -> Iterator[object]:
        yield [b"1"]

    with pytest.raises(ValueError, match=r"MDP/0\.1 workers cannot send partial replies"):
        _core(handler, dialect="0.1")
    assert list(_core(lambda b: b, dialect="0.1")._sync_replies(b"7", [b"x"])) == [
        [E, W01, b"\x03", b"7", E, b"x"]
    ]


@pytest.mark.parametrize(
    ("service", "problem"), [("", "must not be empty"), ("mmi.service", "answered by the broker")]
)
def test_worker_service_names(service: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        WorkerCore(
            "e",
            service,
            lambda b: b,
            dialect="0.2",
            heartbeat_interval=1,
            liveness=1,
            error_reply=None,
        )


def test_heartbeat_clocks() -> None:
    core = _core(lambda b: b, heartbeat_interval=2.0)
    core._sent(10.0)
    core._heard(10.0)
    assert core._heartbeat_at == 12.0
    assert core._dead_at == 16.0  # liveness 3


def test_a_plain_handler_may_return_a_final_reply() -> None:
    core = _core(lambda body: FinalReply([b"f", *body]))
    assert list(core._sync_replies(b"7", [b"x"])) == [[W02, b"\x04", b"7", E, b"f", b"x"]]


# -- worker: its clocks and what the broker sends it ----------------------------------------------


def test_a_connection_restarts_the_clocks_and_gives_the_ready() -> None:
    core = _core(lambda b: b, dialect="majortomo", heartbeat_interval=2.0)
    assert core._reconnect_delay(5.0) < 0  # never connected: at once
    assert core._connected(10.0) == [E, W02, b"\x01", b"svc"]
    assert core._dead_at == 16.0
    assert core._reconnect_delay(10.5) == 1.5  # READY at most once per heartbeat interval


def test_a_silent_broker_is_noticed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    core = _core(lambda b: b, heartbeat_interval=1.0)
    core._heard(10.0)
    assert not core._silent(12.9)
    assert core._silent(13.0)
    assert "broker silent, reconnecting" in caplog.text


def test_inbound_messages(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="maitred.transports.mdp.client")
    core = _core(lambda b: b, heartbeat_interval=1.0)
    request = [W02, b"\x02", b"client", E, b"body"]
    assert core._inbound(request, 20.0) == (codec.CLIENT_REQUEST, b"client", [b"body"])
    assert core._dead_at == 23.0  # the broker was heard
    assert core._inbound([W02, b"\x05"], 21.0) == (codec.HEARTBEAT, E, [])
    assert core._inbound([W02, b"\x06"], 22.0) == (codec.DISCONNECT, E, [])
    assert "DISCONNECT from the broker" in caplog.text
    assert core._inbound([W01, b"\x02"], 23.0) is None  # another dialect: dropped
    assert core._dead_at == 26.0  # even a malformed message shows the broker is alive
    assert "dropped a malformed message" in caplog.text


def test_dialect_names() -> None:
    assert dialect_flags("majortomo") == V2 | ENVELOPE | SHORT
    assert dialect_flags("0.1") == ENVELOPE
    with pytest.raises(ValueError, match="unknown MDP dialect"):
        dialect_flags("0.3")
    with pytest.raises(TypeError):
        dialect_flags(True)
