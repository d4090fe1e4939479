"""Idle connections cannot lock a broker out of file descriptors: a ``maitred serve`` process
with a low descriptor limit (RLIMIT_NOFILE 256, as systemd's 1,024 but smaller) takes 300
silent HTTP connections, refuses those past ``max_connections`` at once (503, closed, so their
descriptors come back), and new MDP, WebSocket and HTTP clients still get in."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from websockets.asyncio.client import connect

LIMIT = 256
CONFIG = """
[transports.mdp]
endpoints = ["tcp://127.0.0.1:0"]
[transports.http]
listen = ["127.0.0.1:0"]
store = "memory"
switch = false
max_connections = 100
header_timeout = 120.0
idle_timeout = 120.0
[transports.ws]
listen = "127.0.0.1:0"
ping_interval = 0
max_connections = 50
"""


#: ``python -m maitred.core`` with RLIMIT_NOFILE lowered first (in the child itself: no
#: preexec_fn, which is unsafe in a process with threads)
LOW_LIMIT_MAITRED = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT})); "
    "sys.argv[0] = 'maitred'; runpy.run_module('maitred.core', run_name='__main__')"
)


def _serve(
    path: Path,
) -> tuple[subprocess.Popen[str], dict[str, list[str]], threading.Thread]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOW_LIMIT_MAITRED, "serve", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    endpoints: dict[str, list[str]] = {}
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.match(r"maitred: (\w+) listening on (.*)", line.strip())
            if m:
                endpoints[m.group(1)] = m.group(2).split()
                if len(endpoints) == 3:
                    ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not ready.wait(30):
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        raise AssertionError(f"the broker did not start: {endpoints}")
    return proc, endpoints, reader


def _http_get(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), 10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.slow
def test_idle_connections_do_not_lock_clients_out(tmp_path: Path) -> None:
    path = tmp_path / "maitred.toml"
    path.write_text(CONFIG)
    proc, endpoints, reader = _serve(path)
    held: list[socket.socket] = []
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        host, _, port_text = endpoints["http"][0].removeprefix("http://").rpartition(":")
        port = int(port_text)
        refused = 0
        for _ in range(300):  # more connections than the process may hold descriptors
            sock = socket.create_connection((host, port), 10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = sock.recv(65536)
            if first.startswith(b"HTTP/1.1 200 "):
                held.append(sock)  # accepted: it stays open, idle
                continue
            assert first.startswith(b"HTTP/1.1 503 "), first
            assert b"too many connections" in first
            refused += 1
            sock.close()
        assert len(held) == 100 and refused == 200
        # MDP: a worker and a client of a fresh service
        worker = ctx.socket(zmq.DEALER)
        worker.connect(endpoints["mdp"][0])
        worker.send_multipart([b"", b"MDPW01", b"\x01", b"echo"])
        client = ctx.socket(zmq.DEALER)
        client.connect(endpoints["mdp"][0])
        client.send_multipart([b"", b"MDPC01", b"echo", b"ping"])
        assert worker.poll(10_000), "the MDP worker got no request"
        frames = worker.recv_multipart()
        assert frames[:3] == [b"", b"MDPW01", b"\x02"] and frames[-1] == b"ping"
        addr = frames[3]
        worker.send_multipart([b"", b"MDPW01", b"\x03", addr, b"", b"pong"])
        assert client.poll(10_000), "the MDP client got no reply"
        assert client.recv_multipart()[-1] == b"pong"
        worker.close(0)
        client.close(0)

        # WebSocket: a new client says hello
        async def hello() -> dict[str, Any]:
            async with connect(
                endpoints["ws"][0],
                subprotocols=["maitred.json"],  # type: ignore[list-item]
            ) as ws:
                await ws.send(json.dumps({"type": "hello", "key": "plugh"}))
                answer: dict[str, Any] = json.loads(await ws.recv())
                return answer

        assert asyncio.run(asyncio.wait_for(hello(), 20))["type"] == "welcome"
        # HTTP: a freed place serves a new client
        held.pop().close()
        deadline = time.monotonic() + 20
        while True:
            data = _http_get(host, port)
            if data.startswith(b"HTTP/1.1 200 ") or time.monotonic() > deadline:
                break
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    finally:
        for sock in held:
            sock.close()
        ctx.destroy(linger=0)
        proc.terminate()
        proc.wait(20)
        reader.join(10)
        if proc.stdout is not None:
            proc.stdout.close()
