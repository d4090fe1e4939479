"""MDP peers that send malformed messages or refused READYs cannot flood the log: each one is
counted and logged at DEBUG, with at most one WARNING summary per kind and 10 s."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from tests.e2e.helpers import W01, BrokerThread, socket, wait_until

DENY_SERVE = """
[access]
default = "allow"
[[access.rules]]
allow = false
actions = ["serve"]
names = ["forbidden"]
"""


def _loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.INFO and "mdp" in r.name]


def test_refused_readys_and_garbage_are_summarised(
    make_broker: Callable[..., BrokerThread],
    ctx: zmq.Context[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = make_broker(DENY_SERVE)
    caplog.set_level(logging.DEBUG)
    peer = socket(ctx, zmq.DEALER, broker.endpoint)
    for _ in range(1000):
        peer.send_multipart([b"", W01, b"\x01", b"forbidden"])
    for _ in range(1000):
        peer.send_multipart([b"", b"NOT-MDP", b"\x01", b"junk"])
    wait_until(
        lambda: (
            broker.stats().get("mdp.ready_refused.forbidden", 0) == 1000
            and broker.stats().get("mdp.rejected", 0) >= 1000
        ),
        timeout=30,
        what="2,000 rejections",
    )
    loud = _loud(caplog)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert len(loud) <= 4, [r.getMessage() for r in loud]
    broker.stop(drain_timeout=0)
    summaries = [r.getMessage() for r in _loud(caplog) if r.levelno == logging.WARNING]
    assert any(m.startswith("1,000 MDP READYs refused from ") for m in summaries), summaries
    assert any("malformed MDP messages dropped from" in m for m in summaries), summaries
