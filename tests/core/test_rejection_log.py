"""core.logs.RejectionLog: every rejection at DEBUG, one WARNING summary per kind and window."""

from __future__ import annotations

import asyncio
import logging

import pytest

from maitred.core.logs import RejectionLog


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_is_one_summary_per_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    rl = RejectionLog(
        logging.getLogger("t.rej"), {"bad": "malformed requests"}, interval=10, clock=clock
    )
    caplog.set_level(logging.DEBUG, "t.rej")
    for _ in range(1654):
        rl.note("bad", "127.0.0.1", "bad header")
    clock.now += 10
    rl.note("bad", "127.0.0.1", "bad header")  # opens the next window, writes the summary
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "1,654 malformed requests from 127.0.0.1 in the last 10 s"
    ]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 1655
    assert all(r.exc_info is None for r in caplog.records)
    rl.close()
    assert caplog.records[-1].getMessage() == "1 malformed requests from 127.0.0.1 in the last 1 s"


def test_many_peers_are_bounded_and_summarised(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    rl = RejectionLog(logging.getLogger("t.rej2"), {}, interval=10, max_peers=3, clock=clock)
    caplog.set_level(logging.WARNING, "t.rej2")
    for i in range(10):
        for _ in range(i + 1):
            rl.note("refused", f"peer{i}", "x")
    assert len(rl._windows["refused"][2]) == 3
    rl.close()
    (rec,) = caplog.records
    assert rec.getMessage() == (
        "55 refused in the last 1 s: 3 from peer2, 2 from peer1, 1 from peer0, 49 from other peers"
    )


def test_the_timer_writes_the_summary_in_a_loop(caplog: pytest.LogCaptureFixture) -> None:
    rl = RejectionLog(logging.getLogger("t.rej3"), {"bad": "bad frames"}, interval=0.05)
    caplog.set_level(logging.WARNING, "t.rej3")

    async def main() -> None:
        rl.note("bad", "a", "x")
        rl.note("bad", "a", "x")
        for _ in range(500):
            if caplog.records:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ["2 bad frames from a in the last 1 s"]


def test_a_hint_and_a_place_instead_of_a_peer(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    rl = RejectionLog(
        logging.getLogger("t.rej4"),
        {"plain": "plain-text connections on the TLS listener 127.0.0.1:8443"},
        interval=10,
        clock=clock,
        hints={"plain": "a ws:// client on a wss:// port?"},
    )
    caplog.set_level(logging.DEBUG, "t.rej4")
    for _ in range(3):
        rl.note("plain", "", "HTTP_REQUEST")
    clock.now += 10
    rl.flush()
    rl.note("plain", "", "x")
    rl.note("plain", "10.0.0.9", "x")
    rl.close()
    assert next(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG) == (
        "plain-text connections on the TLS listener 127.0.0.1:8443: HTTP_REQUEST"
    )
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "3 plain-text connections on the TLS listener 127.0.0.1:8443 in the last 10 s:"
        " a ws:// client on a wss:// port?",
        "2 plain-text connections on the TLS listener 127.0.0.1:8443 in the last 1 s:"
        " 1 from unknown peers, 1 from 10.0.0.9: a ws:// client on a wss:// port?",
    ]
