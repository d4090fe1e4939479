"""Regression: sends into the MDP socket from outside its reader callback (a WebSocket caller's
request dispatched to an MDP worker) could let libzmq consume the FD's edge while replies were
waiting; under uvloop (as ``maitred serve`` runs) those replies then sat until the next
heartbeat. The transport now looks again after such sends."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import uvloop
from websockets.sync.client import connect

from maitred.transports.mdp.client import Worker
from tests.e2e.helpers import BrokerThread, wait_until

CONFIG = """
[transports.ws]
listen = "127.0.0.1:0"

[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
worker_credit = 8
heartbeat_interval = 30
"""


@pytest.fixture
def uv_broker() -> Iterator[BrokerThread]:
    broker = BrokerThread(CONFIG, loop_factory=uvloop.new_event_loop)
    yield broker
    broker.stop(drain_timeout=0)


def test_ws_callers_to_an_mdp_worker_never_stall(uv_broker: BrokerThread) -> None:
    stop = threading.Event()
    worker = Worker(uv_broker.endpoint, "echo", lambda body: body, heartbeat_interval=30)
    thread = threading.Thread(target=worker.run, kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: uv_broker.call(lambda: "echo" in uv_broker.broker.router.services))
        with connect(uv_broker.endpoints["ws"][0]) as ws:
            ws.send("xyzzy")
            assert ws.recv(timeout=5) == "MM OK"
            ws.recv(timeout=5)
            n = 64
            for i in range(n):
                ws.send(f"REQ echo\r\nReqID: {i}\r\n\r\nbody {i}\r\n.\r\n")
            replies = [ws.recv(timeout=5) for _ in range(n)]  # 5 s << the 30 s heartbeat
        assert all(str(r).startswith("RES echo") for r in replies)
    finally:
        stop.set()
        thread.join(5)
        worker.close()
