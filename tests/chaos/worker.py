"""A chaos-harness MDP worker, run as its own process so the harness can SIGKILL, SIGSTOP and
restart it: ``python -m tests.chaos.worker ENDPOINT SERVICE LOGFILE SEED``.

For each request it appends the request's id (the last body frame) to LOGFILE — one ``write``
of one line on a file opened with O_APPEND, so lines of processes sharing a file never mix — and
only then answers ``ok:<id>``. It takes 0 to 40 ms per request, so requests are in flight when
the harness strikes. SIGTERM stops it after the request in hand (DISCONNECT).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from typing import Any

from maitred.transports.mdp.client import Worker

#: the broker's [liveness] heartbeat_interval in the harness config (a worker must not be
#: more talkative than the broker)
HEARTBEAT = 0.5


def main(argv: list[str]) -> int:
    endpoint, service, logfile, seed = argv
    rng = random.Random(int(seed))
    fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handle(body: list[bytes]) -> list[bytes]:
        rid = body[-1] if body else b"?"
        os.write(fd, rid + b"\n")
        time.sleep(rng.random() * 0.04)  # "work" (and a window for the harness to strike)
        return [b"ok:" + rid]

    worker = Worker(endpoint, service, handle, heartbeat_interval=HEARTBEAT, liveness=3)

    def stop(signum: int, frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("worker: running", flush=True)
    try:
        worker.run()
    finally:
        worker.close()
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
