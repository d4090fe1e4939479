"""The durable path over MDP: a service with ``on_no_worker = "store"`` (every request committed
to SQLite, then deleted when the worker answers) against the same service without the store, in
the same run, same load generator (bench/loadgen.py: one MDP client, one echo worker).

    .venv/bin/python bench/durable_mdp.py [--runs 3] [--duration 3] [--inflight 64]

For each run it starts ``maitred serve`` with a fresh SQLite file, runs the loadgen worker and
client, then asks ``mmi.info`` for the store's counters, to show that requests were really
written (``appended``) and committed (``commits`` transactions). Prints one line per run and the
medians: persisted+acked requests/s, and the ratio to the plain service.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

HERE = Path(__file__).resolve().parent
PY = sys.executable
MAITRED = str(Path(PY).with_name("maitred"))
LOADGEN = str(HERE / "loadgen.py")


def start_broker(config: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [MAITRED, "serve", "-c", str(config), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.match(r"maitred: mdp listening on (\S+)", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("maitred did not start")


def mmi_info(endpoint: str) -> dict[str, Any]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", b"MDPC02", b"\x02", b"mmi.info", b""])
        if not sock.poll(5000):
            raise RuntimeError("no answer from mmi.info")
        frames = sock.recv_multipart()
        info: dict[str, Any] = json.loads(frames[-1])
        return info
    finally:
        sock.close(0)


def one_run(tmp: Path, store: bool, args: argparse.Namespace) -> dict[str, Any]:
    db = tmp / f"services-{time.monotonic_ns()}.sqlite3"
    config = tmp / "maitred.toml"
    policy = 'on_no_worker = "store"' if store else 'on_no_worker = "wait"'
    config.write_text(
        f'[store]\npath = "{db}"\n\n[services.echo]\n{policy}\n\n'
        '[transports.mdp]\nendpoints = ["tcp://127.0.0.1:0"]\n'
    )
    broker, endpoint = start_broker(config)
    worker = subprocess.Popen(
        [PY, LOADGEN, "worker", "--endpoint", endpoint, "--max-seconds", "120"],
        stderr=subprocess.DEVNULL,
    )
    try:
        out = subprocess.run(
            [
                PY,
                LOADGEN,
                "client",
                "--endpoint",
                endpoint,
                "--inflight",
                str(args.inflight),
                "--duration",
                str(args.duration),
                "--watch",
                f"broker={broker.pid}",
            ],
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
            check=True,
        )
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        result["store"] = mmi_info(endpoint).get("store")
        return result
    finally:
        for p in (worker, broker):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--inflight", type=int, default=64)
    args = ap.parse_args()
    rates: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="maitred-durable-") as tmpdir:
        tmp = Path(tmpdir)
        for i in range(args.runs):
            for store in (False, True):
                r = one_run(tmp, store, args)
                rates[store].append(r["req_per_s"])
                cpu = r["cpu_percent"].get("broker")
                print(
                    f"run {i + 1} {'store' if store else 'plain'}: {r['req_per_s']:,.0f} req/s "
                    f"p99 {r['latency_us']['p99']:,.0f} µs  broker cpu {cpu}%"
                    f"  store {r['store']}",
                    flush=True,
                )
    plain, durable = statistics.median(rates[False]), statistics.median(rates[True])
    print(
        f"\nmedians of {args.runs}: plain {plain:,.0f} req/s, "
        f"store (persisted+acked) {durable:,.0f} req/s, ratio {durable / plain:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
