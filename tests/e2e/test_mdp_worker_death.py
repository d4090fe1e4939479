"""MDP workers killed with SIGKILL (no DISCONNECT) over real sockets: the broker notices the
vanished peer at once, fails or redelivers what it held by the service's policy, hands the
requests it was sent but never started to another worker, and sends it nothing new.

The liveness window here is 30 s and the request deadline 60 s, while every wait in these tests
is at most 10 s: whatever the tests see happen was caused by the broker noticing the lost
connection, not by a liveness expiry or a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.e2e.helpers import BrokerThread, recv, socket, wait_until

Ctx = zmq.Context[Any]

LIVE = """
[liveness]
heartbeat_interval = 10.0
liveness = 3

[services.default]
request_timeout = 60.0
"""

#: fast answers count for adaptive pipelining whatever the machine's load
MDP = """
worker_credit = 1
worker_credit_max = 32
worker_pipeline_below = 5.0
"""

#: an MDP/0.2 worker in its own process: answers ``answer`` requests (all when -1) with
#: [name, body], then holds every further one; prints "ready" once its READY is sent and
#: "got <body>" for each request it receives
WORKER = r"""
import sys, zmq
endpoint, service, name = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
answer = int(sys.argv[4])
sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(endpoint)
sock.send_multipart([b"", b"MDPW02", b"\x01", service])
print("ready", flush=True)
answered = 0
while True:
    frames = sock.recv_multipart()
    if frames[2] != b"\x02":
        continue  # a heartbeat
    addr, body = frames[3], frames[5:]
    print("got", body[0].decode(), flush=True)
    if answer < 0 or answered < answer:
        answered += 1
        sock.send_multipart([b"", b"MDPW02", b"\x04", addr, b"", name, *body])
"""


class WorkerProcess:
    def __init__(self, endpoint: str, service: str, name: str, answer: int = -1) -> None:
        self.name = name.encode()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, endpoint, service, name, str(answer)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(endpoint: str, service: str, name: str, answer: int = -1) -> WorkerProcess:
        w = WorkerProcess(endpoint, service, name, answer)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


class Caller:
    """An MDP/0.2 client on a DEALER: many requests in flight, replies matched by body."""

    def __init__(self, ctx: Ctx, endpoint: str) -> None:
        self.sock = socket(ctx, zmq.DEALER, endpoint)

    def send(self, service: bytes, tag: bytes) -> None:
        self.sock.send_multipart([b"", b"MDPC02", b"\x02", service, tag])

    def replies(self, n: int, timeout: float = 10.0) -> dict[bytes, list[bytes]]:
        """``n`` final replies by tag: [worker name] for a reply, [code, reason] for an error."""
        out: dict[bytes, list[bytes]] = {}
        deadline = time.monotonic() + timeout
        while len(out) < n:
            frames = recv(self.sock, max(0.01, deadline - time.monotonic()))
            assert frames[:3] == [b"", b"MDPC02", b"\x04"], frames
            body = frames[3:]
            if len(body) == 2 and body[0].isdigit():  # an error reply: [code, reason]
                out[f"error-{len(out)}".encode()] = body
            else:
                assert len(body) == 2, frames
                out[body[1]] = [body[0]]
        return out


def credits(broker: BrokerThread, service: str) -> list[int]:
    """The credit of each worker of ``service``."""

    def read() -> list[int]:
        svc = broker.broker.router.services.get(service)
        return [w.credit for w in svc.workers] if svc else []

    return broker.call(read)


def held(broker: BrokerThread, service: str) -> list[int]:
    """How many requests each worker of ``service`` holds."""

    def count() -> list[int]:
        svc = broker.broker.router.services.get(service)
        return [len(w.inflight) for w in svc.workers] if svc else []

    return broker.call(count)


def grow_then_hold(
    broker: BrokerThread,
    ctx: Ctx,
    spawn: Callable[..., WorkerProcess],
    service: str,
    hold: int,
) -> tuple[WorkerProcess, Caller]:
    """A victim worker whose adaptive credit grew past ``hold``, now holding ``hold`` requests
    it was sent (pipelined) and never answered."""
    victim = spawn(broker.endpoint, service, "victim", answer=64)
    wait_until(lambda: held(broker, service) == [0], what="the victim's READY")
    caller = Caller(ctx, broker.endpoint)
    for i in range(64):
        caller.send(service.encode(), b"warm-%d" % i)
    warm = caller.replies(64)
    assert all(v == [b"victim"] for v in warm.values())
    [credit] = credits(broker, service)
    assert credit > hold, f"adaptive credit only grew to {credit}"
    for i in range(hold):
        caller.send(service.encode(), b"held-%d" % i)
    wait_until(lambda: held(broker, service) == [hold], what=f"the victim holding {hold}")
    return victim, caller


def test_a_killed_pipelined_worker_gets_nothing_new_and_nothing_times_out(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, spawn: Callable[..., WorkerProcess]
) -> None:
    broker = make_broker(LIVE, MDP)
    victim, caller = grow_then_hold(broker, ctx, spawn, "pipe", hold=8)
    spawn(broker.endpoint, "pipe", "healthy")
    wait_until(lambda: sorted(held(broker, "pipe")) == [0, 8], what="the healthy worker")
    victim.kill()
    for i in range(40):
        caller.send(b"pipe", b"after-%d" % i)
    got = caller.replies(48)
    errors = [v for k, v in got.items() if k.startswith(b"error-")]
    # the one request the victim may have started fails at once (no redeliver) ...
    assert errors == [[b"502", b"worker died (disconnected)"]]
    # ... the 7 pipelined behind it and every later request are served by the healthy worker
    answered = {k: v for k, v in got.items() if not k.startswith(b"error-")}
    assert {b"held-%d" % i for i in range(1, 8)} <= set(answered)
    assert {b"after-%d" % i for i in range(40)} <= set(answered)
    assert set(map(tuple, answered.values())) == {(b"healthy",)}
    stats = broker.stats()
    # the 7, and any later request sent to the victim before the broker read its loss
    assert stats["requests.handed_back"] >= 7
    assert stats.get("workers.expired", 0) == 0  # noticed by the connection, not by silence
    assert broker.call(lambda: broker.broker.transports["mdp"].stats["mdp.peers_lost"]) == 1


def test_redeliver_hands_everything_to_the_other_worker(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, spawn: Callable[..., WorkerProcess]
) -> None:
    broker = make_broker(LIVE + "\n[services.idem]\nredeliver = true\n", MDP)
    victim, caller = grow_then_hold(broker, ctx, spawn, "idem", hold=5)
    spawn(broker.endpoint, "idem", "healthy")
    wait_until(lambda: sorted(held(broker, "idem")) == [0, 5], what="the healthy worker")
    victim.kill()
    got = caller.replies(5)
    assert got == {b"held-%d" % i: [b"healthy"] for i in range(5)}
    assert broker.stats()["requests.redelivered"] == 1


def test_a_killed_worker_fails_its_request_at_once_without_redeliver(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, spawn: Callable[..., WorkerProcess]
) -> None:
    broker = make_broker(LIVE, "worker_credit_max = 1\n")
    victim = spawn(broker.endpoint, "slow", "victim", answer=0)
    wait_until(lambda: held(broker, "slow") == [0], what="the victim's READY")
    caller = Caller(ctx, broker.endpoint)
    caller.send(b"slow", b"one")
    wait_until(lambda: held(broker, "slow") == [1], what="the victim holding the request")
    victim.kill()
    got = caller.replies(1)  # within 10 s: neither the 30 s window nor the 60 s deadline
    assert list(got.values()) == [[b"502", b"worker died (disconnected)"]]
    wait_until(lambda: "slow" not in broker.call(lambda: set(broker.broker.router.services)))


def test_a_stored_request_reaches_the_replacement_worker(
    make_broker: Callable[..., BrokerThread],
    ctx: Ctx,
    spawn: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    broker = make_broker(
        LIVE
        + f'\n[broker]\nstore = "sqlite"\nstore_path = "{tmp_path / "store.sqlite3"}"\n'
        + '\n[services.jobs]\non_no_worker = "store"\n',
        "worker_credit_max = 1\n",
    )
    victim = spawn(broker.endpoint, "jobs", "victim", answer=0)
    wait_until(lambda: held(broker, "jobs") == [0], what="the victim's READY")
    caller = Caller(ctx, broker.endpoint)
    caller.send(b"jobs", b"job-1")
    wait_until(lambda: held(broker, "jobs") == [1], what="the victim holding the job")
    victim.kill()
    wait_until(
        lambda: broker.call(lambda: broker.broker.router.services["jobs"].queued) == 1,
        timeout=10.0,
        what="the job back in the queue",
    )
    spawn(broker.endpoint, "jobs", "replacement")
    assert caller.replies(1) == {b"job-1": [b"replacement"]}


def test_a_frozen_worker_is_dropped_by_zmtp_heartbeats(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, spawn: Callable[..., WorkerProcess]
) -> None:
    """A worker process that is stopped (SIGSTOP: its connection stays open, its libzmq answers
    nothing, like a frozen host) loses its connection after the liveness window through the
    socket's ZMTP heartbeats. busy_timeout = 0 here: the router alone would keep it forever."""
    broker = make_broker(
        "[liveness]\nheartbeat_interval = 0.5\nliveness = 3\nbusy_timeout = 0\n"
        "[services.default]\nrequest_timeout = 60.0\n",
        "worker_credit_max = 1\n",
    )
    victim = spawn(broker.endpoint, "frozen", "victim", answer=0)
    wait_until(lambda: held(broker, "frozen") == [0], what="the victim's READY")
    caller = Caller(ctx, broker.endpoint)
    caller.send(b"frozen", b"one")
    wait_until(lambda: held(broker, "frozen") == [1], what="the victim holding the request")
    os.kill(victim.proc.pid, signal.SIGSTOP)
    got = caller.replies(1)
    assert list(got.values()) == [[b"502", b"worker died (disconnected)"]]
    assert broker.call(lambda: broker.broker.transports["mdp"].stats["mdp.peers_lost"]) == 1


def test_a_killed_worker_on_an_ipc_endpoint_is_noticed_too(
    ctx: Ctx, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    broker = BrokerThread(
        LIVE
        + f'\n[transports.mdp]\nendpoints = ["ipc://{tmp_path}/mdp.sock"]\nworker_credit_max = 1\n'
    )
    try:
        victim = spawn(broker.endpoint, "slow", "victim", answer=0)
        wait_until(lambda: held(broker, "slow") == [0], what="the victim's READY")
        caller = Caller(ctx, broker.endpoint)
        caller.send(b"slow", b"one")
        wait_until(lambda: held(broker, "slow") == [1], what="the victim holding the request")
        victim.kill()
        assert list(caller.replies(1).values()) == [[b"502", b"worker died (disconnected)"]]
    finally:
        broker.stop(drain_timeout=0)
