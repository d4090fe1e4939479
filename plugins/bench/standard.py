"""The standard MDP set: every broker under the same load, in the shapes that matter.

``maitred bench`` runs it (``--quick`` for a short look, the default ``--full`` for the figures
in docs/topics/benchmarks.md). For each scenario below, the legs run in rotation (the order
shifts every run), each measurement on fresh processes (see :mod:`maitred.plugins.bench.mdp`):

- ``1w-fast``: one fast worker (base-class send/recv, body forwarded without a copy), 1, 8 and
  64 requests in flight;
- ``1w-simple``: one simple worker (poll, ``recv_multipart``, one request, ``send_multipart``:
  the way zguide's ``mdwrkapi`` and majortomo's ``Worker`` are written), 1, 8 and 64 in flight;
- ``4w-fast``: four fast workers, 64 in flight;
- ``4w-1slow``: four fast workers, one of which sleeps 1 ms per request, 64 in flight: each
  worker's share of the replies, and the p99 of the requests that the three fast ones answered.

The legs: ``maitred-strict`` (``worker_credit_max = 1``, MDP's one request per worker),
``maitred`` (the defaults: adaptive pipelining), ``majortomo`` (PyPI, at WARNING),
``mdbroker`` (zguide's MDP/0.1 broker, from ``--mdbroker PATH``: not on PyPI, skipped without
it) and ``proxy`` (``zmq.proxy`` in C: the one-hop floor, no MDP; its workers are behind a
DEALER, which deals requests round robin whatever a worker's speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maitred.plugins.bench import mdp, peers
from maitred.plugins.bench.plugin import SCENARIO_NAMES, add_options


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    shape: str
    workers: int
    slow: int
    inflight: tuple[int, ...]


FULL = (
    Scenario("1w-fast", "1 fast worker", "fast", 1, 0, (1, 8, 64)),
    Scenario("1w-simple", "1 simple worker (recv/send_multipart)", "simple", 1, 0, (1, 8, 64)),
    Scenario("4w-fast", "4 fast workers", "fast", 4, 0, (64,)),
    Scenario("4w-1slow", "4 workers, one sleeping 1 ms per request", "fast", 4, 1, (64,)),
)
QUICK = (
    Scenario("1w-fast", "1 fast worker", "fast", 1, 0, (1, 64)),
    Scenario("4w-1slow", "4 workers, one sleeping 1 ms per request", "fast", 4, 1, (64,)),
)


@dataclasses.dataclass
class Plan:
    """What to run: the scenarios and the timing of each measurement."""

    scenarios: tuple[Scenario, ...]
    runs: int
    warmup: float
    duration: float
    legs: list[str]
    mdbroker: str | None
    maitred_cmd: str
    slow_delay_us: int = 1000

    def measurements(self) -> int:
        return sum(len(s.inflight) for s in self.scenarios) * len(self.legs) * self.runs


def base_config(plan: Plan) -> mdp.Config:
    return mdp.Config.measured(
        plan.runs,
        [1],
        1024,
        plan.warmup,
        plan.duration,
        legs=list(plan.legs),
        maitred_cmd=plan.maitred_cmd,
        majortomo_cmd=peers.MAJORTOMO_CMD,
        mdbroker=plan.mdbroker,
        slow_delay_us=plan.slow_delay_us,
    )


class Bar:
    """A progress bar on stderr: redrawn in place on a terminal, a line per step otherwise."""

    def __init__(self, total: int, stream: Any = None, width: int = 30) -> None:
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, label: str) -> None:
        self.done = min(self.total, self.done + 1)
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"[{bar}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + text[:150])
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def run_plan(plan: Plan, bar: Bar | None = None) -> dict[str, Any]:
    """Run every scenario of ``plan``; returns the result document (summary, ratios, runs)."""
    base = base_config(plan)
    started = dt.datetime.now().astimezone()
    document: dict[str, Any] = {
        "benchmark": "mdp-standard",
        "started": started.isoformat(timespec="seconds"),
        "machine": mdp.machine_info(),
        "plan": {
            "runs": plan.runs,
            "warmup": plan.warmup,
            "duration": plan.duration,
            "legs": plan.legs,
            "slow_delay_us": plan.slow_delay_us,
        },
        "scenarios": [],
    }

    def progress(_done: int, _total: int, label: str) -> None:
        if bar is not None:
            bar.step(f"{scenario.name}: {label}")

    for scenario in plan.scenarios:
        cfg = dataclasses.replace(
            base,
            inflight=list(scenario.inflight),
            shape=scenario.shape,
            workers=scenario.workers,
            slow=scenario.slow,
        )
        runs, legs = mdp.run(cfg, progress)
        for record in runs:
            record["scenario"] = scenario.name
        summary = mdp.summarize(runs, legs, cfg)
        if scenario.workers > 1:
            add_fairness(summary, runs)
        document["scenarios"].append(
            {
                "name": scenario.name,
                "what": scenario.what,
                "shape": scenario.shape,
                "workers": scenario.workers,
                "slow": scenario.slow,
                "inflight": list(scenario.inflight),
                "legs": {
                    leg.name: {"command": leg.command, "skipped": leg.skipped} for leg in legs
                },
                "summary": summary,
                "ratios": mdp.ratios(summary, cfg, runs),
                "runs": runs,
            }
        )
    document["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return document


def add_fairness(summary: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    """Median share of each worker and the median p99 of the fast workers' replies, per row."""
    for row in summary:
        mine = [
            r
            for r in runs
            if r.get("ok") and r["leg"] == row["leg"] and r["inflight"] == row["inflight"]
        ]
        tags = sorted({t for r in mine for t in r.get("by_worker", {})})
        shares = {}
        for t in tags:
            values = [r["by_worker"].get(t, {}).get("share", 0.0) for r in mine]
            shares[t] = round(statistics.median(values), 4) if values else None
        fast = [r["by_worker"]["fast"]["p99"] for r in mine if "fast" in r.get("by_worker", {})]
        row["shares"] = {t: v for t, v in shares.items() if t != "fast"}
        row["fast_p99_us"] = statistics.median(fast) if fast else None


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def render(document: dict[str, Any]) -> str:
    """The table: one line per scenario, leg and in-flight level; ratios to the proxy."""
    head = (
        f"{'scenario':<10} {'leg':<15} {'in-fl':>5} {'req/s':>8} {'p50 µs':>8} {'p99 µs':>8} "
        f"{'÷proxy':>7} {'cpu µs/req brk/cli/wrk':<24} {'runs':>5}  shares (fast p99 µs)"
    )
    plan = document["plan"]
    lines = [
        f"MDP standard set: 1 KiB echo, median of {plan['runs']} rotated run(s) of "
        f"{plan['warmup']:g} s warm-up + {plan['duration']:g} s",
        "",
        head,
        "-" * len(head),
    ]
    skipped: dict[str, str] = {}
    for sc in document["scenarios"]:
        proxy = {r["inflight"]: r.get("req_per_s") for r in sc["summary"] if r["leg"] == "proxy"}
        for name, leg in sc["legs"].items():
            if leg["skipped"]:
                skipped[name] = leg["skipped"]
        for row in sc["summary"]:
            if row.get("skipped"):
                continue
            prefix = f"{sc['name']:<10} {row['leg']:<15} {row['inflight']:>5}"
            if not row.get("req_per_s"):
                lines.append(f"{prefix} {'failed':>8}  {row['ok_runs']}/{row['runs']}")
                continue
            p = proxy.get(row["inflight"])
            ratio = f"{row['req_per_s'] / p:.2f}x" if p else "-"
            us = row["cpu_us_per_request"]
            us_s = "/".join(_fmt(us.get(k), ".1f") for k in ("broker", "client", "worker"))
            fair = ""
            if row.get("shares"):
                fair = " ".join(f"{100 * v:.0f}%" for v in row["shares"].values() if v is not None)
                fair += f" ({_fmt(row.get('fast_p99_us'))})"
            lines.append(
                f"{prefix} {_fmt(row['req_per_s']):>8} {_fmt(row['p50_us']):>8} "
                f"{_fmt(row['p99_us']):>8} {ratio:>7} {us_s:<24} "
                f"{row['ok_runs']}/{row['runs']:<3}  {fair}"
            )
    for name, why in skipped.items():
        lines.append(f"\n{name} skipped: {why}")
    loads = [
        r["cpu_percent"].get("other")
        for sc in document["scenarios"]
        for r in sc["summary"]
        if r.get("cpu_percent")
    ]
    others = [x for x in loads if x is not None]
    if others:
        lines.append(
            f"\nother processes on the machine during the measured phases: median "
            f"{statistics.median(others):.0f}% of a CPU (max of the per-row medians "
            f"{max(others):.0f}%), {os.cpu_count()} CPUs"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maitred bench", description=__doc__)
    add_options(parser)
    return parser


def plan_from_args(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    scenarios: tuple[Scenario, ...] = QUICK if quick else FULL
    if [s.name for s in FULL] != list(SCENARIO_NAMES):
        raise AssertionError("the scenario names in plugin.py are out of date")
    if args.scenarios:
        wanted = [x.strip() for x in args.scenarios.split(",") if x.strip()]
        known = {s.name: s for s in FULL}
        bad = [x for x in wanted if x not in known]
        if bad:
            raise SystemExit(f"maitred bench: unknown scenario(s) {', '.join(bad)}")
        scenarios = tuple(known[x] for x in wanted)
    if args.inflight:
        scenarios = tuple(dataclasses.replace(s, inflight=tuple(args.inflight)) for s in scenarios)
    plan = Plan(
        scenarios=scenarios,
        runs=args.runs or (1 if quick else 5),
        warmup=args.warmup if args.warmup is not None else (0.3 if quick else 0.5),
        duration=args.duration if args.duration is not None else (1.0 if quick else 1.5),
        legs=[
            x
            for x in (args.legs or ",".join(mdp.STANDARD_LEGS)).split(",")
            if x in mdp.STANDARD_LEGS
        ],
        mdbroker=args.mdbroker,
        maitred_cmd=peers.maitred_cmd_template(args.maitred_cmd),
    )
    if plan.runs < 1 or plan.duration <= 0 or plan.warmup < 0:
        raise SystemExit("maitred bench: --runs >= 1, --duration > 0, --warmup >= 0")
    if not plan.legs:
        raise SystemExit(f"maitred bench: --legs takes {', '.join(mdp.STANDARD_LEGS)}")
    return plan


def run_command(args: argparse.Namespace) -> int:
    """``maitred bench``: run the plan, print the table, write the JSON (and the table) file."""
    plan = plan_from_args(args)
    print(
        f"maitred bench: {len(plan.scenarios)} scenario(s), legs {', '.join(plan.legs)}, "
        f"{plan.runs} run(s): {plan.measurements()} measurements",
        file=sys.stderr,
        flush=True,
    )
    bar = Bar(plan.measurements())
    with mdp.terminate_on_signals():
        try:
            document = run_plan(plan, bar)
        except KeyboardInterrupt:
            print("\nmaitred bench: interrupted; every child process was stopped", file=sys.stderr)
            return 130
    table = render(document)
    print(table, flush=True)
    out: Path = args.output or mdp.RESULTS_DIR / (
        f"mdp-standard-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    out.with_suffix(".txt").write_text(table + "\n")
    print(f"maitred bench: results in {out} (table: {out.with_suffix('.txt')})", file=sys.stderr)
    failed = [
        row
        for sc in document["scenarios"]
        for row in sc["summary"]
        if not row.get("skipped") and row.get("ok_runs") != row.get("runs")
    ]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
