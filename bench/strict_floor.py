"""The floor of strict MDP on this machine: the least a Python broker can do per request.

    python bench/strict_floor.py --endpoint tcp://127.0.0.1:5555 [--sched-batch] [--client-first]

A minimal MDP/0.2 broker (the majortomo dialect the benchmark's load generator speaks) with
strict least-recently-used dispatch, one request per worker at a time: one ROUTER socket, a
blocking ``recv_multipart`` loop, pyzmq's base-class ``send`` frame by frame, no heartbeats
sent, no liveness, no limits, no error replies, no logging. It is not a broker to use: it is
what the benchmark's ``maitred-strict`` leg is measured against, to tell the cost of the
machine's wake-ups (the same for every strict broker) from the cost of a broker's own work.

Run it as a leg of the benchmark through ``--maitred-cmd``, e.g.::

    maitred bench --legs maitred,majortomo --scenarios 1w-fast --inflight 8,64 --runs 5 \\
        --maitred-cmd "{python} bench/strict_floor.py --endpoint {endpoint}"

``--sched-batch`` runs libzmq's I/O thread as SCHED_BATCH (as maitred does by default);
``--client-first`` sends a reply to the client before the worker's next request (as majortomo
does) instead of the next request first; ``--spin-us N`` polls the socket for up to N µs
before each blocking receive (a busy wait: it trades CPU for fewer wake-ups).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import zmq
from zmq.backend import Socket as _BaseSocket

CLIENT = b"MDPC02"
WORKER = b"MDPW02"
REQUEST = b"\x02"
FINAL = b"\x04"
READY = b"\x01"
DISCONNECT = b"\x06"
EMPTY = b""
MORE = int(zmq.SNDMORE)


def serve(
    endpoint: str, sched_batch: bool = False, client_first: bool = False, spin_us: int = 0
) -> int:
    """Broker until SIGTERM/SIGINT (bounded by nothing else: the benchmark ends it)."""
    ctx = zmq.Context()
    if sched_batch and hasattr(os, "SCHED_BATCH"):
        ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_BATCH)
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(endpoint)
    send = _BaseSocket.send.__get__(sock)
    idle: deque[bytes] = deque()  # workers with no request, least recently used first
    queue: deque[tuple[bytes, list[Any]]] = deque()  # (client, body frames) waiting

    def to_worker(worker: bytes, client: bytes, body: list[Any]) -> None:
        for frame in (worker, EMPTY, WORKER, REQUEST, client, EMPTY):
            send(frame, MORE)
        for frame in body[:-1]:
            send(frame, MORE)
        send(body[-1])

    def to_client(client: bytes, body: list[Any]) -> None:
        for frame in (client, EMPTY, CLIENT, FINAL):
            send(frame, MORE)
        for frame in body[:-1]:
            send(frame, MORE)
        send(body[-1])

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    spin = spin_us / 1e6
    clock = time.perf_counter
    try:
        while True:
            if spin:  # look again for up to spin_us before sleeping in the receive
                until = clock() + spin
                while not poller.poll(0) and clock() < until:
                    pass
            frames = sock.recv_multipart(copy=False)
            peer = frames[0].bytes
            if len(frames) < 4:
                continue
            header, command = frames[2].bytes, frames[3].bytes
            if header == CLIENT and command == REQUEST and len(frames) >= 6:
                body = frames[5:]
                if idle:
                    to_worker(idle.popleft(), peer, body)
                else:
                    queue.append((peer, body))
            elif header == WORKER and command == FINAL and len(frames) >= 7:
                client, body = frames[4].bytes, frames[6:]
                if client_first:
                    to_client(client, body)
                if queue:
                    to_worker(peer, *queue.popleft())
                else:
                    idle.append(peer)
                if not client_first:
                    to_client(client, body)
            elif header == WORKER and command == READY:
                if queue:
                    to_worker(peer, *queue.popleft())
                else:
                    idle.append(peer)
            elif header == WORKER and command == DISCONNECT and peer in idle:
                idle.remove(peer)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        sock.close(linger=0)
        ctx.term()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a minimal strict MDP/0.2 broker: the floor")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--sched-batch", action="store_true", help="libzmq's I/O thread SCHED_BATCH")
    p.add_argument("--client-first", action="store_true", help="reply before the next request")
    p.add_argument("--spin-us", type=int, default=0, help="poll this long before sleeping")
    args = p.parse_args(argv)

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    return serve(args.endpoint, args.sched_batch, args.client_first, args.spin_us)


if __name__ == "__main__":
    sys.exit(main())
