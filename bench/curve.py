"""What CURVE costs MDP: maitred's throughput with and without CURVE, in the same run.

    .venv/bin/python bench/curve.py                  # 3 runs × 64 in flight × {plain, curve}
    .venv/bin/python bench/curve.py --runs 5 --inflight 1,64
    .venv/bin/python bench/curve.py --smoke          # one short run of each, ~10 s

Two legs, each a fresh ``maitred serve`` (``{python} -m maitred.core serve -c FILE --mdp
ENDPOINT``) with one echo worker and one client from ``bench/loadgen.py`` (the machinery of
``bench/run_mdp.py``: the same processes, probe, guard and measurement):

- ``plain``: no CURVE;
- ``curve``: ``curve_secret_key_file`` set and the worker's and the client's public keys in
  ``[[transports.mdp.keys]]``; the worker, the client and the readiness probe connect with
  CURVE (``$MAITRED_BENCH_CURVE``, read by loadgen), so every message is encrypted twice on its
  way (client → broker → worker) and twice back, and each is handled as its key's identity.

The legs alternate (the order rotates every run) so drift on the machine spreads over both.
Printed: the median req/s of each leg, their ratio (curve / plain), and the median of the
per-run ratios; every run goes to ``bench/results/curve-<timestamp>.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a plain script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq

from bench import loadgen, run_mdp
from maitred.transports.mdp.curve import write_certificate

#: maitred without and with CURVE, then the same load through a bare ``zmq.proxy`` hop without
#: and with CURVE (``bench/peers.py proxy``): the cost of libzmq's per-frame crypto on any broker
LEGS = ("plain", "curve", "proxy", "proxy-curve")


def _keys(directory: Path) -> tuple[str, str]:
    """Write the broker's key and two peers' keys; the CURVE config's extra lines and the
    client-side ``$MAITRED_BENCH_CURVE`` value (all peers share the client key)."""
    _, broker_secret, broker_public = write_certificate(directory, "broker")
    _, peer_secret, peer_public = write_certificate(directory, "peer")
    from maitred.transports.mdp.curve import client_keys

    public, secret = client_keys(str(peer_secret))
    toml = (
        f'curve_secret_key_file = "{broker_secret}"\n\n'
        "[[transports.mdp.keys]]\n"
        f'public_key = "{peer_public}"\n'
        'identity = "bench"\n'
    )
    return toml, str(broker_secret), f"{broker_public} {public.decode()} {secret.decode()}"


def _legs(text: str) -> list[str]:
    legs = [x.strip() for x in text.split(",") if x.strip()]
    if not legs or any(x not in LEGS for x in legs):
        raise argparse.ArgumentTypeError(f"legs are {', '.join(LEGS)}")
    return legs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="maitred MDP throughput with and without CURVE")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--inflight", type=run_mdp._csv_ints, default=[64])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument(
        "--legs",
        type=_legs,
        default=list(LEGS),
        help=f"a subset of {','.join(LEGS)} (default: all four)",
    )
    p.add_argument("--smoke", action="store_true", help="1 run, 0.2 s warm-up, 0.5 s measured")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--mdp-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='a [transports.mdp] line for both legs, e.g. io_thread_sched="default"',
    )
    p.add_argument(
        "--broker-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [broker] line for both legs, e.g. uvloop=false",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.warmup, args.duration = 1, 0.2, 0.5
    with tempfile.TemporaryDirectory(prefix="maitred-curve-bench-") as tmp:
        directory = Path(tmp)
        curve_toml, broker_secret, curve_env = _keys(directory)
        files = {}
        for leg in ("plain", "curve"):
            path = directory / f"{leg}.toml"
            extra = "".join(f"{line}\n" for line in args.mdp_option)
            broker = "".join(f"{line}\n" for line in args.broker_option)
            path.write_text(
                f"[broker]\n{broker}[transports.mdp]\n{extra}"
                + (curve_toml if leg == "curve" else "")
            )
            files[leg] = path
        cfg = run_mdp.Config.measured(
            args.runs, args.inflight, args.size, args.warmup, args.duration
        )
        legs = {
            leg: run_mdp.Leg(
                leg,
                "mdp",
                run_mdp.start_command_broker(
                    "maitred",
                    f"{{python}} -m maitred.core serve -c {files[leg]} --mdp {{endpoint}}",
                ),
                2.0,
                f"maitred serve -c {leg}.toml",
            )
            for leg in ("plain", "curve")
        }
        legs["proxy"] = run_mdp.Leg(
            "proxy", "raw", run_mdp.proxy_starter(), 0.5, "bench/peers.py proxy"
        )
        legs["proxy-curve"] = run_mdp.Leg(
            "proxy-curve",
            "raw",
            run_mdp.proxy_starter("--curve-secret-key-file", broker_secret),
            0.5,
            "bench/peers.py proxy --curve-secret-key-file broker.key_secret",
        )
        runs: list[dict[str, Any]] = []
        ctx: zmq.Context[Any] = zmq.Context()
        children = run_mdp.Children()
        try:
            with run_mdp.terminate_on_signals():
                for n in args.inflight:
                    for i in range(args.runs):
                        # rotate the order every run, so drift spreads over every leg
                        chosen = [leg for leg in LEGS if leg in args.legs]
                        order = chosen[i % len(chosen) :] + chosen[: i % len(chosen)]
                        for leg in order:
                            if leg.endswith("curve"):
                                os.environ[loadgen.CURVE_ENV] = curve_env
                            else:
                                os.environ.pop(loadgen.CURVE_ENV, None)
                            busy = run_mdp.machine_busy()
                            record = run_mdp.measure(legs[leg], n, cfg, children, ctx)
                            record.update(leg=leg, inflight=n, run=i, machine_busy=busy)
                            runs.append(record)
                            run_mdp.log(
                                f"run {i + 1}/{args.runs} {leg:11} x{n}: "
                                f"{record.get('req_per_s') or record.get('error')}"
                            )
        finally:
            os.environ.pop(loadgen.CURVE_ENV, None)
            children.stop_all()
            ctx.destroy(0)
    summary = [_summary(runs, n, args.runs) for n in args.inflight]
    for s in summary:
        print(_render(s))
    out = args.json or run_mdp.RESULTS_DIR / f"curve-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"summary": summary, "runs": runs, "machine": run_mdp.machine_info()}, indent=1)
    )
    run_mdp.log(f"results: {out}")
    return 0 if all(s["ratio_of_medians"] for s in summary) else 1


ROLES = ("broker", "client", "worker")


def _summary(runs: list[dict[str, Any]], n: int, count: int) -> dict[str, Any]:
    """The medians of one in-flight level: req/s per leg, the CURVE/plain ratio of maitred and
    of the proxy (of the medians, and the median of the per-run ratios), and the CPU µs per
    request of each role (broker or proxy, client, worker, all three) per leg."""
    ok = [r for r in runs if r["inflight"] == n and r.get("ok") and r.get("req_per_s")]
    out: dict[str, Any] = {"inflight": n}
    for leg in LEGS:
        rates = [r["req_per_s"] for r in ok if r["leg"] == leg]
        out[f"{leg}_req_per_s"] = statistics.median(rates) if rates else None
        for role in (*ROLES, "all"):
            per = [
                sum(r["cpu_percent"].get(p) or 0 for p in (ROLES if role == "all" else (role,)))
                * 1e4
                / r["req_per_s"]
                for r in ok
                if r["leg"] == leg
            ]
            out[f"{leg}_{role}_cpu_us"] = statistics.median(per) if per else None
        # the broker's (or proxy's) libzmq I/O threads, where CURVE encrypts and decrypts
        io = [
            sum(
                v
                for k, v in r.get("cpu_threads_percent", {}).get("broker", {}).items()
                if k.startswith("ZMQbg/IO")
            )
            * 1e4
            / r["req_per_s"]
            for r in ok
            if r["leg"] == leg and r.get("cpu_threads_percent")
        ]
        out[f"{leg}_broker_io_cpu_us"] = statistics.median(io) if io else None
    for secure, base, name in (
        ("curve", "plain", "ratio"),
        ("proxy-curve", "proxy", "proxy_ratio"),
    ):
        a, b = out[f"{secure}_req_per_s"], out[f"{base}_req_per_s"]
        pairs = []
        for i in range(count):
            got = {r["leg"]: r["req_per_s"] for r in ok if r["run"] == i}
            if secure in got and base in got:
                pairs.append(got[secure] / got[base])
        out[f"{name}_of_medians"] = a / b if a and b else None
        out[f"{name}_median_of_runs"] = statistics.median(pairs) if pairs else None
        out[f"{name}_runs"] = pairs
    return out


def _render(s: dict[str, Any]) -> str:
    def rate(leg: str) -> str:
        return f"{s[f'{leg}_req_per_s'] or 0:,.0f}"

    def ratio(name: str) -> str:
        runs = ", ".join(f"{r:.3f}" for r in s[f"{name}_runs"])
        return (
            f"{s[f'{name}_of_medians'] or 0:.3f} (median of per-run ratios "
            f"{s[f'{name}_median_of_runs'] or 0:.3f}; runs {runs})"
        )

    lines = [
        f"x{s['inflight']}: req/s: maitred plain {rate('plain')}, curve {rate('curve')}; "
        f"proxy plain {rate('proxy')}, curve {rate('proxy-curve')}",
        f"  curve/plain: maitred {ratio('ratio')}",
        f"  curve/plain: proxy   {ratio('proxy_ratio')}",
        "  CPU µs per request (broker or proxy [its libzmq I/O thread] / client / worker / all):",
    ]
    for leg in LEGS:
        if s[f"{leg}_req_per_s"] is None:
            continue  # not run (--legs)
        cells = " / ".join(f"{s[f'{leg}_{role}_cpu_us'] or 0:.1f}" for role in (*ROLES, "all"))
        cells = cells.replace(" /", f" [{s[f'{leg}_broker_io_cpu_us'] or 0:.1f}] /", 1)
        lines.append(f"    {leg:11} {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
