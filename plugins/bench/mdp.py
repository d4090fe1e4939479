"""MDP benchmark: maitred, majortomo and a bare ``zmq.proxy`` hop under the same load generator.

    .venv/bin/python bench/run_mdp.py                 # 5 runs × {1, 64} in flight × 3 legs
    .venv/bin/python bench/run_mdp.py --smoke         # 1 short run of each, ~10-20 s
    .venv/bin/python -m bench.run_mdp --legs majortomo,proxy --runs 3
    .venv/bin/python bench/run_mdp.py --maitred-cmd "maitred serve --mdp {endpoint}"
    .venv/bin/python bench/run_mdp.py --legs maitred,maitred-b,proxy   # A/B: b = MAITRED_PURE=1

One measurement = fresh processes: the broker (or proxy), one echo worker, one client
(``bench/loadgen.py``). The worker connects, a round trip through the broker proves readiness (no
sleeps), then the client warms up and measures. Legs are interleaved (the order rotates every run)
so drift on the machine spreads over all of them. The figures are medians over ``--runs``; the
ratios are those of the medians, and the medians of the ratios of legs measured in the same
round. A table goes to stdout, progress to stderr, everything (each run, the commands, the
machine) to a JSON file under ``bench/results/`` (gitignored).

Every child runs under ``bench/guard.py``: it is killed if this process dies, even by SIGKILL, and
has a hard lifetime. On exit, error or Ctrl-C all children still running are terminated.

The maitred leg is skipped with a message (exit status 0; ``--strict`` makes it 1) when its command
cannot start or never answers: it is under development.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import selectors
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zmq

from maitred.core.errors import ErrorCode, MaitredError
from maitred.plugins.bench import loadgen, peers
from maitred.plugins.bench.plugin import csv_ints

BENCH_DIR = Path(__file__).resolve().parent
GUARD = BENCH_DIR / "guard.py"
LOADGEN = BENCH_DIR / "loadgen.py"
PEERS = BENCH_DIR / "peers.py"
#: where result files go by default: bench/results/ in a source checkout, else ./bench-results/
RESULTS_DIR = Path("bench/results") if Path("bench/README.md").is_file() else Path("bench-results")
#: the legs of the standard set (``maitred bench``), then the A/B legs of ``--b-cmd``
STANDARD_LEGS = ("maitred-strict", "maitred", "majortomo", "mdbroker", "proxy")
ALL_LEGS = (*STANDARD_LEGS, "maitred-b", "maitred-strict-b")
#: the maitred-strict leg: the maitred command with this config (MDP's one request per worker)
STRICT_TOML = BENCH_DIR / "maitred-strict.toml"
PY = sys.executable


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# child processes


class StartError(MaitredError):
    """A broker, proxy or worker did not come up."""

    code = ErrorCode.NO_WORKER


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    argv: list[str]
    stderr: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr_tail(self, limit: int = 1500) -> str:
        if self.stderr is None:
            return ""
        try:
            self.stderr.flush()
            self.stderr.seek(0, os.SEEK_END)
            size = self.stderr.tell()
            self.stderr.seek(max(0, size - limit))
            return self.stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""


def all_alive(*children: Child) -> Callable[[], bool]:
    return lambda: all(c.alive() for c in children)


class Children:
    """Starts children under ``guard.py`` in their own process group and ends them all on exit."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        max_seconds: float,
        stdout: int | IO[bytes] = subprocess.DEVNULL,
        capture_stderr: bool = True,
    ) -> Child:
        err: IO[bytes] | None = None
        if capture_stderr:  # lives as long as the child; closed by stop()
            err = tempfile.TemporaryFile(prefix=f"bench-{name}-")  # noqa: SIM115
        cmd = [
            PY,
            str(GUARD),
            "--ppid",
            str(os.getpid()),
            "--max-seconds",
            str(int(max_seconds) + 1),
            "--",
            *argv,
        ]
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=err if err is not None else subprocess.DEVNULL,
                start_new_session=True,  # own group: Ctrl-C reaches only us; we end the group
                close_fds=True,
            )
        except OSError:
            if err is not None:
                err.close()
            raise
        child = Child(name, popen, list(argv), err)
        self._children.append(child)
        return child

    def stop(self, child: Child, grace: float = 1.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace`` seconds."""
        p = child.popen
        if p.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                if sig == signal.SIGTERM and grace <= 0:
                    continue
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            # whatever the leader left behind in its group (a wrapper's children, say); the group
            # id stays reserved while any member lives, so this cannot hit an unrelated process
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        for stream in (p.stdout, child.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        for child in list(reversed(self._children)):
            self.stop(child, grace=0.5)


def read_line(child: Child, timeout: float) -> str:
    """The first line the child writes to its stdout pipe, within ``timeout`` seconds."""
    stream = child.popen.stdout
    if stream is None:
        raise StartError(f"{child.name}: no stdout pipe")
    fd = stream.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartError(f"{child.name}: no announcement within {timeout:g} s")
            if not sel.select(min(left, 0.2)):
                if not child.alive():
                    raise StartError(f"{child.name} exited: {child.stderr_tail()}")
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise StartError(f"{child.name} closed stdout: {child.stderr_tail()}")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


# --------------------------------------------------------------------------------------------------
# legs


@dataclass
class Config:
    runs: int
    inflight: list[int]
    size: int
    warmup: float
    warmup_max: int
    duration: float
    max_requests: int
    timeout: float
    ready_timeout: float
    io: str
    quiet_wait: float
    quiet_below: float
    legs: list[str]
    maitred_cmd: str
    majortomo_cmd: str
    mdbroker: str | None = None  # zguide's mdbroker.py, or None (the leg is skipped)
    workers: int = 1
    shape: str = "fast"  # the MDP workers' loop: "fast" or "simple" (see loadgen)
    slow: int = 0  # how many of the workers are slow (the last ones)
    slow_delay_us: int = 1000
    #: the A/B legs' maitred (``--b-cmd``; by default the same one with its pure-Python frame loop)
    b_cmd: str = ""

    @classmethod
    def measured(
        cls, runs: int, inflight: list[int], size: int, warmup: float, duration: float, **rest: Any
    ) -> Config:
        """A configuration with the standard limits (warm-up cap, request cap, timeouts, batch
        I/O, no waiting for a quiet machine); ``rest`` sets any other field."""
        fixed: dict[str, Any] = {
            "warmup_max": 200_000,
            "max_requests": 500_000,
            "timeout": 5.0,
            "ready_timeout": 10.0,
            "io": "batch",
            "quiet_wait": 0.0,
            "quiet_below": 20.0,
            "legs": ["maitred"],
            "maitred_cmd": "",
            "majortomo_cmd": "",
        }
        return cls(runs, inflight, size, warmup, duration=duration, **{**fixed, **rest})

    def lifetime(self) -> float:
        """Upper bound on how long any child of one measurement should live."""
        return self.ready_timeout + self.warmup + self.duration + 2 * self.timeout + 30.0


@dataclass
class Running:
    """A broker that is up: where the client and the worker connect."""

    child: Child
    client_endpoint: str
    worker_endpoint: str
    argv: list[str]


@dataclass
class Leg:
    name: str
    dialect: str  # what the worker speaks: "mdp" or "raw" (behind the proxy)
    start: Callable[[Children, Config], Running]
    stop_grace: float
    command: str  # for the report
    skipped: str | None = None
    failures: list[str] = field(default_factory=list)


def start_command_broker(name: str, template: str) -> Callable[[Children, Config], Running]:
    def start(children: Children, cfg: Config) -> Running:
        endpoint = f"tcp://127.0.0.1:{peers.free_tcp_port()}"
        argv = peers.render_cmd(template, endpoint)
        try:
            child = children.spawn(name, argv, cfg.lifetime())
        except OSError as exc:
            raise StartError(f"cannot start {argv[0]!r}: {exc}") from exc
        return Running(child, endpoint, endpoint, argv)

    return start


def proxy_starter(*extra: str) -> Callable[[Children, Config], Running]:
    """Start ``bench/peers.py proxy`` with ``extra`` arguments (e.g. its CURVE key file)."""

    def start(children: Children, cfg: Config) -> Running:
        argv = [PY, str(PEERS), "proxy", *extra]
        child = children.spawn("proxy", argv, cfg.lifetime(), stdout=subprocess.PIPE)
        try:
            ends = json.loads(read_line(child, cfg.ready_timeout))
            return Running(child, str(ends["frontend"]), str(ends["backend"]), argv)
        except (StartError, ValueError, KeyError) as exc:
            children.stop(child, 0)
            raise StartError(f"proxy did not start: {exc}") from exc

    return start


start_proxy = proxy_starter()


def make_legs(cfg: Config) -> list[Leg]:
    strict = f"{cfg.maitred_cmd} -c {shlex.quote(str(STRICT_TOML))}"
    b_cmd = cfg.b_cmd or f"env MAITRED_PURE=1 {cfg.maitred_cmd}"
    b_strict = f"{b_cmd} -c {shlex.quote(str(STRICT_TOML))}"
    mdbroker = "{python} -m maitred.plugins.bench.peers mdbroker --endpoint {endpoint} --path "
    mdbroker += shlex.quote(cfg.mdbroker or "mdbroker.py")
    mdbroker_leg = Leg(
        "mdbroker", "mdp01", start_command_broker("mdbroker", mdbroker), 0.0, mdbroker
    )
    if not cfg.mdbroker or not Path(cfg.mdbroker).is_file():
        mdbroker_leg.skipped = (
            f"no zguide mdbroker.py ({cfg.mdbroker or 'give --mdbroker PATH'}); it is not on "
            f"PyPI: get mdbroker.py, MDP.py and zhelpers.py (their Python 3 versions) from "
            f"{peers.MDBROKER_SOURCE}"
        )
    table = {
        "maitred": Leg(
            "maitred", "mdp", start_command_broker("maitred", cfg.maitred_cmd), 2.0, cfg.maitred_cmd
        ),
        "maitred-strict": Leg(
            "maitred-strict",
            "mdp",
            start_command_broker("maitred-strict", strict),
            2.0,
            strict,
        ),
        "majortomo": Leg(
            "majortomo",
            "mdp",
            start_command_broker("majortomo", cfg.majortomo_cmd),
            0.0,
            cfg.majortomo_cmd,
        ),  # its SIGTERM handler waits out a 2.5 s recv
        "mdbroker": mdbroker_leg,
        "proxy": Leg("proxy", "raw", start_proxy, 0.5, f"{{python}} {PEERS} proxy"),
        "maitred-b": Leg("maitred-b", "mdp", start_command_broker("maitred-b", b_cmd), 2.0, b_cmd),
        "maitred-strict-b": Leg(
            "maitred-strict-b",
            "mdp",
            start_command_broker("maitred-strict-b", b_strict),
            2.0,
            b_strict,
        ),
    }
    return [table[name] for name in cfg.legs]


# --------------------------------------------------------------------------------------------------
# one measurement


def measure(
    leg: Leg, inflight: int, cfg: Config, children: Children, ctx: zmq.Context[Any]
) -> dict[str, Any]:
    """Fresh broker + worker + client; returns the client's record (raises StartError)."""
    attempts = 3  # a "free" port can be taken between our check and the broker's bind
    running: Running | None = None
    workers: list[Child] = []
    client_dialect = "mdp01" if leg.dialect == "mdp01" else "mdp"
    tagged = cfg.workers > 1
    slow_tags = list(range(cfg.workers - cfg.slow, cfg.workers)) if tagged else []
    try:
        for attempt in range(1, attempts + 1):
            running = leg.start(children, cfg)
            workers = [
                children.spawn(
                    f"worker{i}",
                    [
                        PY,
                        str(LOADGEN),
                        "worker",
                        "--endpoint",
                        running.worker_endpoint,
                        "--dialect",
                        leg.dialect,
                        "--shape",
                        cfg.shape,
                        "--max-seconds",
                        str(cfg.lifetime()),
                        *(["--tag", str(i)] if tagged else []),
                        *(["--delay-us", str(cfg.slow_delay_us)] if i in slow_tags else []),
                    ],
                    cfg.lifetime(),
                )
                for i in range(cfg.workers)
            ]
            broker_child, worker_child = running.child, workers[0]
            try:
                loadgen.probe(
                    ctx,
                    running.client_endpoint,
                    cfg.ready_timeout,
                    size=cfg.size,
                    alive=all_alive(broker_child, *workers),
                    dialect=client_dialect,
                )
                if tagged:  # every worker up: one round trip each is not enough, wait for all
                    wait_for_workers(ctx, running, cfg, client_dialect, cfg.workers)
                break
            except (TimeoutError, RuntimeError) as exc:
                broker_exited = not broker_child.alive()
                if broker_exited:
                    why = f"{leg.name} exited with status {broker_child.popen.returncode}"
                    detail = broker_child.stderr_tail()
                elif not worker_child.alive():
                    why = f"the worker exited with status {worker_child.popen.returncode}"
                    detail = worker_child.stderr_tail()
                else:
                    why = str(exc)
                    detail = broker_child.stderr_tail()
                for w in workers:
                    children.stop(w, 0)
                children.stop(broker_child, 0)
                running, workers = None, []
                retry = attempt < attempts and broker_exited and "in use" in detail.lower()
                if not retry:
                    raise StartError(
                        f"{why}; command: {shlex.join(broker_child.argv)}"
                        + (f"\n    stderr: {detail[-800:]}" if detail else "")
                    ) from exc
        assert running is not None and workers
        client_argv = [
            PY,
            str(LOADGEN),
            "client",
            "--endpoint",
            running.client_endpoint,
            "--inflight",
            str(inflight),
            "--size",
            str(cfg.size),
            "--io",
            cfg.io,
            "--warmup",
            str(cfg.warmup),
            "--warmup-max",
            str(cfg.warmup_max),
            "--duration",
            str(cfg.duration),
            "--max-requests",
            str(cfg.max_requests),
            "--timeout",
            str(cfg.timeout),
            "--dialect",
            client_dialect,
            "--watch",
            f"broker={running.child.pid}",
            *[a for i, w in enumerate(workers) for a in ("--watch", f"worker{i}={w.pid}")],
            *(["--tagged"] if tagged else []),
            *[a for t in slow_tags for a in ("--slow-tag", str(t))],
        ]
        client = children.spawn("client", client_argv, cfg.lifetime(), stdout=subprocess.PIPE)
        limit = cfg.warmup + cfg.duration + 3 * cfg.timeout + 10.0
        try:
            out, _ = client.popen.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            children.stop(client, 0)
            return {"ok": False, "error": f"client did not finish within {limit:g} s"}
        tail = client.stderr_tail()
        children.stop(client, 0)
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
        if not lines:
            return {
                "ok": False,
                "error": f"client printed no result (status "
                f"{client.popen.returncode}): {tail[-500:]}",
            }
        record: dict[str, Any] = json.loads(lines[-1])
        record["broker_cmd"] = running.argv
        if not running.child.alive():
            record.setdefault("warnings", []).append(f"{leg.name} exited during the run")
        if not record.get("ok"):
            for who in (*workers, running.child):
                if not who.alive():
                    record["error"] = (
                        f"{record.get('error')}; {who.name} exited with status "
                        f"{who.popen.returncode}: {who.stderr_tail()[-500:]}"
                    )
        return record
    finally:
        for w in workers:
            children.stop(w, 1.0)
        if running is not None:
            children.stop(running.child, leg.stop_grace)


def wait_for_workers(
    ctx: zmq.Context[Any], running: Running, cfg: Config, dialect: str, count: int
) -> None:
    """Until replies tagged by ``count`` different workers came back (bounded by the ready
    timeout): with several workers, one round trip proves only that one of them is up."""
    deadline = time.monotonic() + cfg.ready_timeout
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 200
    header = loadgen.CLIENT_HEADER_01 if dialect == "mdp01" else loadgen.CLIENT_HEADER
    prefix = [loadgen.EMPTY, header]
    prefix += [b"echo"] if dialect == "mdp01" else [loadgen.C_REQUEST, b"echo"]
    seen: set[int] = set()
    try:
        sock.connect(running.client_endpoint)
        while len(seen) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(seen)} of {count} workers answered")
            body = loadgen.SEQ.pack(loadgen.PROBE_SEQ_BASE) + b"\x00" * (cfg.size - 8)
            for _ in range(count * 2):
                sock.send_multipart([*prefix, body])
            for _ in range(count * 2):
                try:
                    frames = sock.recv_multipart()
                except zmq.Again:
                    break
                if len(frames[-1]) > loadgen.SEQ.size:
                    seen.add(frames[-1][loadgen.SEQ.size])
            time.sleep(0.05)  # workers still connecting: a bounded retry, not a timing
    finally:
        sock.close(linger=0)


# --------------------------------------------------------------------------------------------------
# report


def add_other_cpu(record: dict[str, Any]) -> None:
    """cpu_percent["other"]: machine-wide CPU use minus ours (client, broker, worker)."""
    cpu = record.get("cpu_percent")
    if not isinstance(cpu, dict) or cpu.get("machine") is None:
        return
    ours = [cpu.get(k) for k in ("client", "broker", "worker")]
    nums = [float(v) for v in ours if isinstance(v, (int, float))]
    if len(nums) == len(ours):
        cpu["other"] = round(max(0.0, float(cpu["machine"]) - sum(nums)), 1)


def cpu_us_per_request(record: dict[str, Any], who: str) -> float | None:
    """CPU microseconds ``who`` (broker, client, worker) spent per request in the measured phase:
    its CPU time (all its threads, from /proc) over the replies. Less sensitive to other load on
    the machine than req/s, though not blind to it (caches, frequency, preemption)."""
    cpu = record.get("cpu_percent", {}).get(who)
    rate = record.get("req_per_s")
    if not isinstance(cpu, (int, float)) or not rate:
        return None
    return round(cpu / 100.0 / float(rate) * 1e6, 1)


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict[str, Any]], legs: list[Leg], cfg: Config) -> list[dict[str, Any]]:
    out = []
    for leg in legs:
        for n in cfg.inflight:
            mine = [r for r in runs if r["leg"] == leg.name and r["inflight"] == n]
            ok = [r for r in mine if r.get("ok")]
            row: dict[str, Any] = {
                "leg": leg.name,
                "inflight": n,
                "runs": len(mine),
                "ok_runs": len(ok),
                "skipped": leg.skipped,
            }
            if ok:
                rates = [float(r["req_per_s"]) for r in ok]
                row.update(
                    req_per_s=round(statistics.median(rates), 1),
                    req_per_s_min=min(rates),
                    req_per_s_max=max(rates),
                    p50_us=_median([r["latency_us"]["p50"] for r in ok]),
                    p99_us=_median([r["latency_us"]["p99"] for r in ok]),
                    cpu_percent={
                        who: _median([r.get("cpu_percent", {}).get(who) for r in ok])
                        for who in ("broker", "client", "worker", "other")
                    },
                    cpu_us_per_request={
                        who: _median([cpu_us_per_request(r, who) for r in ok])
                        for who in ("broker", "client", "worker")
                    },
                )
            out.append(row)
    return out


Ratio = dict[str, float | None]


def ratios(
    summary: list[dict[str, Any]], cfg: Config, runs: list[dict[str, Any]] | None = None
) -> dict[str, dict[str, Ratio | None]]:
    """maitred/majortomo, maitred/proxy (and majortomo/proxy) of the medians per in-flight level,
    and (``per_run``) the median of the ratios of legs measured in the same round: a change in
    the machine's speed between rounds hits both sides of each of those alike."""
    by_round: dict[tuple[int, int], dict[str, float]] = {}
    for r in runs or []:
        if r.get("ok") and r.get("req_per_s"):
            by_round.setdefault((r["inflight"], r["run"]), {})[r["leg"]] = r["req_per_s"]

    def get(leg: str, n: int) -> dict[str, Any] | None:
        for row in summary:
            if row["leg"] == leg and row["inflight"] == n and row.get("req_per_s"):
                return row
        return None

    result: dict[str, dict[str, Ratio | None]] = {}
    for num, den in (
        ("maitred", "majortomo"),
        ("maitred", "proxy"),
        ("maitred-strict", "majortomo"),
        ("maitred-strict", "proxy"),
        ("majortomo", "proxy"),
        ("maitred", "mdbroker"),
        ("maitred-strict", "mdbroker"),
        ("mdbroker", "proxy"),
        ("maitred", "maitred-b"),
        ("maitred-b", "proxy"),
        ("maitred-strict", "maitred-strict-b"),
        ("maitred-strict-b", "proxy"),
    ):
        key = f"{num}/{den}"
        result[key] = {}
        for n in cfg.inflight:
            a, b = get(num, n), get(den, n)
            if a is None or b is None:
                result[key][str(n)] = None
                continue
            paired = [
                legs[num] / legs[den]
                for (inflight, _), legs in by_round.items()
                if inflight == n and num in legs and den in legs
            ]
            result[key][str(n)] = {
                "req_per_s": round(a["req_per_s"] / b["req_per_s"], 3),
                "per_run": round(statistics.median(paired), 3) if paired else None,
                "p50": round(a["p50_us"] / b["p50_us"], 3) if a["p50_us"] and b["p50_us"] else None,
                "p99": round(a["p99_us"] / b["p99_us"], 3) if a["p99_us"] and b["p99_us"] else None,
            }
    return result


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


BUSY_WARNING_PERCENT = 25.0  # median CPU use of other processes above which figures are suspect


def render(summary: list[dict[str, Any]], rat: dict[str, Any], legs: list[Leg], cfg: Config) -> str:
    head = (
        f"{'leg':<14} {'in-flight':>9} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} "
        f"{'req/s min-max':>17}  {'cpu% brk/cli/wrk/other':<22} {'cpu µs/req brk/cli/wrk':<22} "
        f"{'ok':>5}"
    )
    lines = [
        f"MDP echo round trips: 1 client, 1 worker, {cfg.size} B body; median of {cfg.runs} "
        f"run(s) of {cfg.warmup:g} s warm-up + <= {cfg.duration:g} s / {cfg.max_requests:,} "
        "replies",
        "",
        head,
        "-" * len(head),
    ]
    busiest = 0.0
    for row in summary:
        prefix = f"{row['leg']:<14} {row['inflight']:>9}"
        if row.get("skipped"):
            lines.append(f"{prefix} {'skipped':>9}")
            continue
        if not row.get("req_per_s"):
            lines.append(f"{prefix} {'failed':>9} {'':>8} {'':>8} {'':>17}  {'':<22} {'':<22} "
                         f"{row['ok_runs']}/{row['runs']}")  # fmt: skip
            continue
        cpu = row["cpu_percent"]
        busiest = max(busiest, cpu.get("other") or 0.0)
        cpu_s = "/".join(_fmt(cpu.get(k)) for k in ("broker", "client", "worker", "other"))
        us = row["cpu_us_per_request"]
        us_s = "/".join(_fmt(us.get(k), ".1f") for k in ("broker", "client", "worker"))
        spread = f"{_fmt(row['req_per_s_min'])}-{_fmt(row['req_per_s_max'])}"
        lines.append(
            f"{prefix} {_fmt(row['req_per_s']):>9} {_fmt(row['p50_us']):>8} "
            f"{_fmt(row['p99_us']):>8} {spread:>17}  {cpu_s:<22} {us_s:<22} "
            f"{row['ok_runs']}/{row['runs']}"
        )

    def table(title: str, unit: str, cell: Callable[[Ratio], str]) -> None:
        lines.extend(["", f"{title:<26}" + "".join(
            f"{f'in-flight {n}: {unit}':>28}" for n in cfg.inflight)])  # fmt: skip
        for key, per_n in rat.items():
            cells = [per_n.get(str(n)) for n in cfg.inflight]
            lines.append(f"{key:<26}" + "".join(
                f"{'n/a' if r is None else cell(r):>28}" for r in cells))  # fmt: skip

    table("ratio of medians", "req/s (p50)",
          lambda r: f"{r['req_per_s']:.2f}x ({_fmt(r['p50'], '.2f')}x)")  # fmt: skip
    if cfg.runs > 1:
        table("median of per-run", "req/s",
              lambda r: "n/a" if r.get("per_run") is None else f"{r['per_run']:.2f}x")  # fmt: skip
    if busiest > BUSY_WARNING_PERCENT:
        lines.append(
            f"\nWARNING: other processes used up to {busiest:.0f}% of a CPU during the measured "
            f"phases (median per configuration); on {os.cpu_count()} CPUs that skews the figures."
        )
    for leg in legs:
        if leg.skipped:
            lines.append(f"\n{leg.name} leg skipped: {leg.skipped}")
        for failure in leg.failures[:3]:
            lines.append(f"{leg.name} failure: {failure}")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = list(os.getloadavg())
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return info


# --------------------------------------------------------------------------------------------------
# main


#: positive integers, comma separated (``--inflight 1,64``)
_csv_ints = csv_ints


def _csv_legs(text: str) -> list[str]:
    legs = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in legs if x not in ALL_LEGS]
    if bad or not legs:
        raise argparse.ArgumentTypeError(f"legs are {', '.join(ALL_LEGS)}")
    return legs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="maitred vs majortomo vs a bare zmq.proxy, under one load generator.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=5, help="repetitions of each configuration")
    p.add_argument(
        "--inflight", type=_csv_ints, default=[1, 64], help="in-flight levels, e.g. 1,64"
    )
    p.add_argument("--size", type=int, default=1024, help="request body bytes")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    p.add_argument("--warmup-max", type=int, default=200_000, help="warm-up reply cap")
    p.add_argument(
        "--duration", type=float, default=3.0, help="measured seconds per run (upper bound)"
    )
    p.add_argument("--max-requests", type=int, default=500_000, help="measured reply cap per run")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="a reply later than this fails the run"
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=10.0,
        help="seconds for a broker + worker to answer a first round trip",
    )
    p.add_argument(
        "--io",
        choices=("batch", "blocking"),
        default="batch",
        help="client loop: batch = drain with NOBLOCK, then refill; blocking = one by one",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each measurement, wait up to this many seconds for the rest of the machine "
        "to use less than --quiet-below %% of a CPU (0: do not wait; the load is reported anyway)",
    )
    p.add_argument("--quiet-below", type=float, default=20.0, help="see --quiet-wait")
    p.add_argument(
        "--legs", type=_csv_legs, default=list(STANDARD_LEGS), help="which brokers to run"
    )
    p.add_argument(
        "--b-cmd",
        default="",
        help="the maitred-b legs' command (default: the maitred one with MAITRED_PURE=1)",
    )
    p.add_argument(
        "--mdbroker",
        default=os.environ.get("MAITRED_BENCH_MDBROKER"),
        help="zguide's mdbroker.py for the mdbroker leg (skipped without it)",
    )
    p.add_argument(
        "--maitred-cmd",
        default=None,
        help="maitred command, {endpoint} replaced (default: $MAITRED_CMD or "
        f"{peers.DEFAULT_MAITRED_CMD!r})",
    )
    p.add_argument("--majortomo-cmd", default=peers.MAJORTOMO_CMD, help="majortomo command")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="result file (default: bench/results/mdp-<timestamp>.json)",
    )
    p.add_argument("--no-json", action="store_true", help="do not write a result file")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="quick check: 1 run, 0.2 s warm-up, 0.5 s measured, 5 s ready timeout",
    )
    p.add_argument("--strict", action="store_true", help="a skipped leg is a failure (exit 1)")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    if args.smoke:
        args.runs, args.warmup, args.duration = 1, 0.2, 0.5
        args.ready_timeout = min(args.ready_timeout, 5.0)
        args.timeout = min(args.timeout, 3.0)
    if args.runs < 1 or args.size <= loadgen.SEQ.size or args.duration <= 0 or args.warmup < 0:
        raise SystemExit("bench: --runs >= 1, --size >= 9, --duration > 0, --warmup >= 0")
    maitred = peers.maitred_cmd_template(args.maitred_cmd)
    for name, template in (("maitred", maitred), ("majortomo", args.majortomo_cmd)):
        try:
            peers.render_cmd(template, "tcp://127.0.0.1:1")
        except ValueError as exc:
            raise SystemExit(f"bench: {name} command: {exc}") from exc
    return Config(
        runs=args.runs,
        inflight=args.inflight,
        size=args.size,
        warmup=args.warmup,
        warmup_max=args.warmup_max,
        duration=args.duration,
        max_requests=args.max_requests,
        timeout=args.timeout,
        ready_timeout=args.ready_timeout,
        io=args.io,
        quiet_wait=args.quiet_wait,
        quiet_below=args.quiet_below,
        legs=args.legs,
        maitred_cmd=maitred,
        majortomo_cmd=args.majortomo_cmd,
        mdbroker=args.mdbroker,
        b_cmd=args.b_cmd,
    )


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP unwind as KeyboardInterrupt (even if SIGINT was inherited ignored),
    so the ``finally`` blocks end the children."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def machine_busy(sample: float = 0.5) -> float | None:
    """CPU use of the whole machine over ``sample`` seconds, in % of one CPU (None off Linux)."""
    a = loadgen.system_cpu_ticks()
    time.sleep(sample)
    b = loadgen.system_cpu_ticks()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return 100.0 * (os.cpu_count() or 1) * (b[0] - a[0]) / (b[1] - a[1])


def wait_until_quiet(cfg: Config) -> float | None:
    """With --quiet-wait: sample the machine (none of our children run now) until it is quiet or
    the wait is over; returns the last sample (% of one CPU)."""
    if cfg.quiet_wait <= 0:
        return None
    deadline = time.monotonic() + cfg.quiet_wait
    busy = machine_busy()
    while busy is not None and busy > cfg.quiet_below and time.monotonic() < deadline:
        busy = machine_busy(1.0)
    return None if busy is None else round(busy, 1)


#: called after each measurement with (measurements done, of how many, what was measured)
Progress = Callable[[int, int, str], None]


def run(cfg: Config, progress: Progress | None = None) -> tuple[list[dict[str, Any]], list[Leg]]:
    legs = make_legs(cfg)
    say = log if progress is None else (lambda _msg: None)
    runs: list[dict[str, Any]] = []
    children = Children()
    ctx = zmq.Context()
    total = cfg.runs * len(cfg.inflight) * len(legs)
    done = 0
    try:
        for r in range(cfg.runs):
            for n in cfg.inflight:
                order = legs[r % len(legs) :] + legs[: r % len(legs)]
                for leg in order:
                    done += 1
                    if leg.skipped:
                        if progress is not None:
                            progress(done, total, f"{leg.name} skipped")
                        continue
                    tag = f"[{done}/{total}] run {r + 1} in-flight {n:<3} {leg.name:<10}"
                    busy_before = wait_until_quiet(cfg)
                    if busy_before is not None and busy_before > cfg.quiet_below:
                        say(f"{tag} machine still busy ({busy_before:.0f}% of a CPU), going on")
                    try:
                        record = measure(leg, n, cfg, children, ctx)
                    except StartError as exc:
                        if leg.name.startswith("maitred") and not any(
                            x["leg"] == leg.name for x in runs
                        ):
                            leg.skipped = (
                                f"it did not start: {exc}\n    (set the command with "
                                "--maitred-cmd or MAITRED_CMD; {endpoint} is substituted)"
                            )
                            say(f"{tag} SKIPPED (the maitred leg is left out): {exc}")
                            continue
                        record = {"ok": False, "error": f"start failed: {exc}"}
                    record.update(leg=leg.name, run=r + 1, inflight=n)
                    if busy_before is not None:
                        record["machine_busy_before"] = busy_before
                    add_other_cpu(record)
                    runs.append(record)
                    if record.get("ok"):
                        lat = record["latency_us"]
                        say(
                            f"{tag} {record['req_per_s']:>10,.0f} req/s  p50 {lat['p50']:>8,.0f} µs"
                            f"  p99 {lat['p99']:>8,.0f} µs  cpu {record.get('cpu_percent')}"
                        )
                    else:
                        leg.failures.append(str(record.get("error")))
                        say(f"{tag} FAILED: {record.get('error')}")
                    if progress is not None:
                        rate = record.get("req_per_s")
                        progress(done, total, f"{leg.name} {n} in flight: "
                                 + (f"{rate:,.0f} req/s" if rate else "failed"))  # fmt: skip
    finally:
        children.stop_all()
        ctx.destroy(linger=0)
    return runs, legs


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    started = dt.datetime.now().astimezone()
    log(f"bench: legs {', '.join(cfg.legs)}; in-flight {cfg.inflight}; {cfg.runs} run(s)")
    with terminate_on_signals():
        try:
            runs, legs = run(cfg)
        except KeyboardInterrupt:
            log("bench: interrupted; all child processes were stopped")
            return 130
    summary = summarize(runs, legs, cfg)
    rat = ratios(summary, cfg, runs)
    print(render(summary, rat, legs, cfg), flush=True)

    if not args.no_json:
        path: Path = args.json or RESULTS_DIR / f"mdp-{started.strftime('%Y%m%d-%H%M%S')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "benchmark": "mdp",
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine_info(),
            "config": {k: v for k, v in vars(cfg).items()},
            "legs": {
                leg.name: {
                    "command": leg.command,
                    "worker_dialect": leg.dialect,
                    "skipped": leg.skipped,
                }
                for leg in legs
            },
            "summary": summary,
            "ratios": rat,
            "runs": runs,
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        log(f"bench: results written to {path}")

    failed = [
        row for row in summary if not row.get("skipped") and row.get("ok_runs") != row.get("runs")
    ]
    if failed or (args.strict and any(leg.skipped for leg in legs)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
