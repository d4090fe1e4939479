"""Strict MDP (``worker_credit_max = 1``), over real sockets: the broker's loop turns are short
(a worker's reply, a client's refill), and a short turn after a short one ends by asking
ZMQ_EVENTS, not with a receive that fails with EAGAIN (a system call and a Python exception per
turn). Every request is still answered, in order, by the one worker. This is the pure-Python
loop's policy (the compiled loop's last receive costs no Python exception): the test uses it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from maitred.transports.mdp import adapter as mdp_adapter
from maitred.transports.mdp.adapter import MdpTransport
from tests.e2e.helpers import BrokerThread, RawClient, RawWorker

Ctx = zmq.Context[Any]

REQUESTS = 300
IN_FLIGHT = 8


def test_short_turns_end_without_a_failed_receive(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    #: per loop turn: [messages read, whether a receive failed with EAGAIN after them]
    turns: list[list[int]] = []
    turn_of_readable = MdpTransport._on_readable
    recv = mdp_adapter._recv_frame

    def on_readable(self: MdpTransport) -> None:
        turns.append([0, 0])
        turn_of_readable(self)

    def spy_recv(sock: Any, flags: int, copy: bool) -> Any:
        try:
            frame = recv(sock, flags, copy)
        except zmq.Again:
            if turns:
                turns[-1][1] += 1
            raise
        if copy and turns:  # the routing id: the first frame of a message
            turns[-1][0] += 1
        return frame

    monkeypatch.setattr(mdp_adapter, "LOOP", None)  # the pure-Python loop, even where compiled
    monkeypatch.setattr(MdpTransport, "_on_readable", on_readable)
    monkeypatch.setattr(mdp_adapter, "_recv_frame", spy_recv)
    broker = make_broker(mdp="worker_credit_max = 1\n")
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"echo")
    worker.ready()
    client = RawClient(ctx, broker.endpoint, "rfc")
    sent = answered = 0
    for _ in range(IN_FLIGHT):
        client.send(b"echo", b"%d" % sent)
        sent += 1
    while answered < REQUESTS:  # bounded: each step answers one request or fails in 3 s
        addr, body = worker.request()
        worker.final(addr, *body)
        final, got = client.recv()
        assert final and got == [b"%d" % answered], got
        answered += 1
        if sent < REQUESTS:
            client.send(b"echo", b"%d" % sent)
            sent += 1
    # a turn that read a message and then failed a receive read a burst (at least _PEEK), or
    # followed one: after a short turn, a short turn ends by asking ZMQ_EVENTS
    peek = mdp_adapter._PEEK
    failed = [
        (before, turn)
        for before, turn in itertools.pairwise(turns)
        if 0 < turn[0] < peek and turn[1] and before[0] < peek
    ]
    assert sum(turn[0] for turn in turns) >= 2 * REQUESTS  # the spy saw every message
    assert not failed, (len(failed), len(turns))
