"""WebSocket benchmark: maitred's ws transport against a raw websockets echo of the same frames.

Legs (each in fresh processes, medians of ``--runs``):

- ``raw``: a plain websockets echo server (one process) — the floor: the client's middleman REQ
  frame comes straight back; on asyncio's default event loop;
- ``raw-uvloop``: the same echo server on uvloop, the event loop maitred runs on by default
  (``[broker] uvloop``); an extra leg, for the comparison on equal loops (the ratios stay
  against ``raw``);
- ``ws-mdp``: middleman client → maitred (``--ws``/``--mdp``) → MDP echo worker (bench/loadgen.py);
- ``ws-ws``: middleman client → maitred → middleman echo service (a plain websockets client, EREQ);
- ``fanout``: one publisher, ``--subscribers`` middleman connections (default 1,000) subscribed to
  one topic, ``--messages`` publications: deliveries/s until every subscriber got every message;
- ``ws-mdp-tls``, ``ws-ws-tls``: ``ws-mdp`` and ``ws-ws`` over ``wss://`` (a self-signed
  certificate made with openssl for the run; TLS 1.3, the defaults of both ends). With both the
  plain and the TLS leg in ``--legs``, the report gives the cost of TLS: 1 minus the median of the
  ratios TLS / plain of legs measured in the same round.

The client keeps ``--inflight`` requests (default 64) of ``--size`` bytes (default 1 KiB) in
flight, correlated by a ``ReqID`` header. Usage::

    .venv/bin/python bench/ws.py                  # all legs, 3 runs
    .venv/bin/python bench/ws.py --smoke          # one short run of each
    .venv/bin/python bench/ws.py --legs ws-mdp,ws-mdp-tls,ws-ws,ws-ws-tls --runs 5   # TLS cost
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

HERE = Path(__file__).resolve().parent
PY = sys.executable
MAITRED = str(Path(PY).with_name("maitred"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def proc(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield p
    finally:
        stop(p)


def stop(p: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


#: the certificate the TLS legs' broker presents (set for the child processes too)
CA_ENV = "MAITRED_BENCH_CA"


def client_ssl(url: str) -> ssl.SSLContext | None:
    """A context that trusts the run's certificate, for a ``wss://`` URL."""
    if not url.startswith("wss://"):
        return None
    return ssl.create_default_context(cafile=os.environ[CA_ENV])


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return cert, key


async def open_ws(url: str, timeout: float = 15.0) -> ClientConnection:
    """Connect, retrying while the server starts (bounded)."""
    deadline = time.monotonic() + timeout
    context = client_ssl(url)
    while True:
        try:
            return await connect(
                url, compression=None, max_size=None, ping_interval=None, ssl=context
            )
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def login(url: str, key: str = "xyzzy", raw: bool = False) -> ClientConnection:
    ws = await open_ws(url)
    if not raw:
        await ws.send(key)
        assert await ws.recv() == "MM OK"
        await ws.recv()
    return ws


# -- peers ------------------------------------------------------------------------------------


async def echo_server(port: int) -> None:
    async def handler(ws: ServerConnection) -> None:
        async for msg in ws:
            await ws.send(msg)

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None):
        await asyncio.Future()


async def mm_service(url: str, service: str) -> None:
    ws = await login(url)
    await ws.send(f"EREQ {service}\r\n\r\n.\r\n")
    async for frame in ws:
        assert isinstance(frame, str)
        head, _, body = frame.partition("\r\n\r\n")
        if not head.startswith("REQ "):
            continue
        hdrs = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        await ws.send(
            f"RES {service}\r\nRid: {hdrs['Rid']}\r\nReqid: {hdrs.get('Reqid', '')}\r\n\r\n{body}"
        )


# -- load -------------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0.0 without /proc or a pid)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def request_load(
    url: str,
    raw: bool,
    inflight: int,
    size: int,
    warmup: float,
    duration: float,
    server_pid: int | None = None,
) -> dict[str, float]:
    """Requests/s and latencies; with ``server_pid``, also the server's CPU time per request
    (``cpu_us_req``: less sensitive to a busy machine than the rate is)."""
    ws = await login(url, raw=raw)
    body = "x" * size
    frames = [f"REQ echo\r\nReqID: {i}\r\n\r\n{body}\r\n.\r\n" for i in range(inflight)]
    sent_at = [0.0] * inflight
    lat: list[float] = []
    count = 0
    measuring = False
    cpu_start = 0.0
    for i in range(inflight):
        sent_at[i] = time.perf_counter()
        await ws.send(frames[i])
    start = time.perf_counter()
    t_measure = start + warmup
    t_end = t_measure + duration
    while True:
        msg = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(msg, str)
        if msg.startswith("PUB ERROR"):
            raise RuntimeError(msg)
        i = int(msg.split("Reqid: " if not raw else "ReqID: ", 1)[1].split("\r\n", 1)[0])
        now = time.perf_counter()
        if measuring:
            count += 1
            lat.append(now - sent_at[i])
        elif now >= t_measure:
            measuring = True
            t_measure = now
            cpu_start = cpu_seconds(server_pid)
        if now >= t_end:
            break
        sent_at[i] = now
        await ws.send(frames[i])
    elapsed = time.perf_counter() - t_measure
    cpu = cpu_seconds(server_pid) - cpu_start if measuring else 0.0
    await ws.close()
    lat.sort()
    out = {
        "req_s": count / elapsed,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else 0.0,
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else 0.0,
    }
    if server_pid is not None and count:
        out["cpu_us_req"] = 1e6 * cpu / count
    return out


async def fanout(url: str, subscribers: int, messages: int, timeout: float) -> dict[str, float]:
    subs = [await login(url) for _ in range(subscribers)]
    for ws in subs:
        await ws.send("SUB fan\r\n\r\n.\r\n")
    pub = await login(url)
    # one probe publication proves every SUB was processed (each connection is in order)
    await pub.send("PUB fan\r\n\r\nprobe\r\n.\r\n")
    await asyncio.gather(*(asyncio.wait_for(ws.recv(), timeout) for ws in subs))
    done = asyncio.Event()
    remaining = subscribers * messages

    async def drain(ws: ClientConnection) -> None:
        nonlocal remaining
        for _ in range(messages):
            await ws.recv()
            remaining -= 1
        if remaining == 0:
            done.set()

    tasks = [asyncio.ensure_future(drain(ws)) for ws in subs]
    start = time.perf_counter()
    for i in range(messages):
        await pub.send(f"PUB fan\r\n\r\n{i:064d}\r\n.\r\n")
    await asyncio.wait_for(done.wait(), timeout)
    elapsed = time.perf_counter() - start
    for t in tasks:
        t.cancel()
    for ws in [*subs, pub]:
        await ws.close()
    return {"deliveries_s": subscribers * messages / elapsed, "seconds": elapsed}


# -- orchestration ----------------------------------------------------------------------------


def maitred_cmd(ws_port: int, mdp_port: int, tls: Path | None = None) -> list[str]:
    """The broker's command; ``tls``: a directory with the run's ``cert.pem`` and ``key.pem``
    (the config file written there adds them to ``[transports.ws]``)."""
    config = os.environ.get("MAITRED_BENCH_CONFIG", "")
    if tls is not None:
        text = Path(config).read_text() if config else ""
        text += (
            f'\n[transports.ws]\ntls_cert = "{tls / "cert.pem"}"\ntls_key = "{tls / "key.pem"}"\n'
        )
        config = str(tls / "maitred.toml")
        Path(config).write_text(text)
    return [
        MAITRED if os.path.exists(MAITRED) else PY,
        *([] if os.path.exists(MAITRED) else ["-m", "maitred.core"]),
        "serve",
        # MAITRED_BENCH_CONFIG: a config file for the broker (e.g. [transports.mdp]
        # worker_credit = 8; for the TLS legs, without a [transports.ws] table); the --ws/--mdp
        # addresses below still apply
        *(["-c", config] if config else []),
        "--ws",
        f"127.0.0.1:{ws_port}",
        "--mdp",
        f"tcp://127.0.0.1:{mdp_port}",
        "--log-level",
        "warning",
    ]


async def probe(url: str) -> None:
    """One request through the broker: the worker is ready."""
    deadline = time.monotonic() + 15
    ws = await login(url)
    try:
        while True:
            await ws.send("REQ echo\r\nReqID: p\r\n\r\np\r\n.\r\n")
            got = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(got, str) and got.startswith("RES "):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no echo worker: {got!r}")
            await asyncio.sleep(0.05)
    finally:
        await ws.close()


def run_leg(leg: str, args: argparse.Namespace) -> dict[str, float]:
    ws_port, mdp_port = free_port(), free_port()
    tls = leg.endswith("-tls")
    leg = leg.removesuffix("-tls")
    url = f"{'wss' if tls else 'ws'}://127.0.0.1:{ws_port}"
    with contextlib.ExitStack() as stack:
        if leg in ("raw", "raw-uvloop"):
            loop = ["uvloop"] if leg == "raw-uvloop" else []
            server = stack.enter_context(proc(PY, __file__, "echo-server", str(ws_port), *loop))
        else:
            tls_dir = Path(os.environ[CA_ENV]).parent if tls else None
            server = stack.enter_context(proc(*maitred_cmd(ws_port, mdp_port, tls_dir)))
            if leg == "ws-mdp":
                stack.enter_context(
                    proc(PY, str(HERE / "loadgen.py"), "worker", "--endpoint",
                         f"tcp://127.0.0.1:{mdp_port}", "--service", "echo")
                )  # fmt: skip
            elif leg == "ws-ws":
                stack.enter_context(proc(PY, __file__, "mm-service", url))
            if leg != "fanout":
                asyncio.run(probe(url))
        if leg == "fanout":
            return asyncio.run(fanout(url, args.subscribers, args.messages, args.timeout))
        return asyncio.run(
            request_load(
                url,
                leg.startswith("raw"),
                args.inflight,
                args.size,
                args.warmup,
                args.duration,
                server.pid,
            )
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["echo-server"]:
        if argv[2:3] == ["uvloop"]:
            import uvloop

            uvloop.run(echo_server(int(argv[1])))
        else:
            asyncio.run(echo_server(int(argv[1])))
        return 0
    if argv[:1] == ["mm-service"]:
        asyncio.run(mm_service(argv[1], argv[2] if len(argv) > 2 else "echo"))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--legs", default="raw,ws-mdp,ws-ws,fanout")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--smoke", action="store_true", help="1 short run, 100 subscribers")
    args = parser.parse_args(argv)
    legs = args.legs.split(",")
    with contextlib.ExitStack() as stack:
        if any(leg.endswith("-tls") for leg in legs) and CA_ENV not in os.environ:
            where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maitred-tls-")))
            os.environ[CA_ENV] = str(make_certificate(where)[0])
            stack.callback(os.environ.pop, CA_ENV, None)
        return _run(legs, args)


def _run(legs: list[str], args: argparse.Namespace) -> int:
    if args.smoke:
        args.runs, args.warmup, args.duration = 1, 0.2, 0.5
        args.subscribers, args.messages = 100, 5
    results: dict[str, list[dict[str, float]]] = {}
    # round robin (raw, ws-mdp, ws-ws, raw, ...): a change in the machine's load hits every leg
    # alike, so the ratios of a run (each leg against the raw echo measured just before it) hold
    ratios: dict[str, list[float]] = {}
    for run in range(args.runs):
        # without the raw leg (which must come first), every other round runs the legs in the
        # opposite order, so neither of a plain/TLS pair always runs on a warmer machine
        order = legs[::-1] if run % 2 and "raw" not in legs else legs
        for leg in order:
            r = run_leg(leg, args)
            print(f"{leg} run {run + 1}: {json.dumps(r)}", file=sys.stderr)
            results.setdefault(leg, []).append(r)
            raw_now = results.get("raw", [{}])[-1].get("req_s")
            if leg != "raw" and raw_now and "req_s" in r:
                ratios.setdefault(leg, []).append(r["req_s"] / raw_now)
    med: dict[str, dict[str, float]] = {
        leg: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for leg, runs in results.items()
    }
    print(f"WebSocket bench: {args.inflight} in flight, {args.size} B, medians of {args.runs}")
    raw = med.get("raw", {}).get("req_s")
    for leg, m in med.items():
        line = f"  {leg:7s} " + "  ".join(f"{k}={v:,.1f}" for k, v in m.items())
        if raw and "req_s" in m and leg != "raw":
            line += f"  ratio_vs_raw={m['req_s'] / raw:.2f}"
            if leg in ratios:
                line += f"  median_run_ratio={statistics.median(ratios[leg]):.2f}"
        print(line)
    for leg in legs:
        plain = leg.removesuffix("-tls")
        if leg == plain or plain not in results or "req_s" not in results[plain][0]:
            continue
        # the runs of a round are next to each other: pair them
        paired = [
            t["req_s"] / p["req_s"] for t, p in zip(results[leg], results[plain], strict=True)
        ]
        cost = 1 - statistics.median(paired)
        print(
            f"  TLS cost on {plain}: {100 * cost:.1f} % of req/s (median of {len(paired)} "
            f"paired runs; ratio of the medians {med[leg]['req_s'] / med[plain]['req_s']:.2f})"
        )
        if "cpu_us_req" in med[leg] and "cpu_us_req" in med[plain]:
            pairs = zip(results[leg], results[plain], strict=True)
            cpu = [t["cpu_us_req"] / p["cpu_us_req"] for t, p in pairs]
            print(
                f"  TLS cost on {plain}: broker CPU per request x{statistics.median(cpu):.2f} "
                f"(median of paired runs; {med[plain]['cpu_us_req']:.0f} -> "
                f"{med[leg]['cpu_us_req']:.0f} us), so at most "
                f"{100 * (1 - 1 / statistics.median(cpu)):.1f} % of req/s on a saturated broker"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
