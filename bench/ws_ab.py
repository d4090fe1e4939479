"""Same-run A/B of the WebSocket front end: checkouts of maitred in rotation, one load generator.

    git worktree add --detach /tmp/base main && (cd /tmp/base && python3 -m venv .venv &&
        .venv/bin/pip install -q -e '.[test,fast]')
    .venv/bin/python bench/ws_ab.py --rounds 5 main=/tmp/base branch=.

Each round runs ``bench/ws.py --legs raw,ws-mdp,ws-ws --runs 1`` once per checkout (the first one
also the ``raw-uvloop`` leg), the order rotating from round to round. Every side runs *this*
``bench/ws.py`` (the same client, echo server and middleman responder) with its checkout's
``.venv/bin/python``, so only the broker (``.venv/bin/maitred``) differs. The table gives, per leg
and side, the medians (and ranges) of req/s, the server's CPU µs per request and the ratio to the
raw echo of the same invocation, then the broker CPU per request of each side against the first,
as the median of the rounds' ratios. ``--log PATH`` keeps every run (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

WS = Path(__file__).resolve().parent / "ws.py"


def run_side(checkout: Path, legs: str, duration: float) -> dict[str, dict[str, float]]:
    python = checkout / ".venv" / "bin" / "python"
    argv = [str(python), str(WS), "--legs", legs, "--runs", "1", "--duration", str(duration)]
    done = subprocess.run(
        argv, cwd=checkout, capture_output=True, text=True, timeout=170, check=True
    )
    out: dict[str, dict[str, float]] = {}
    for line in done.stderr.splitlines():
        leg, sep, data = line.partition(" run 1: ")
        if sep:
            out[leg] = json.loads(data)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sides", nargs="+", help="NAME=CHECKOUT (a directory with .venv/)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--log", type=Path, default=None)
    args = ap.parse_args()
    sides = [(s.partition("=")[0], Path(s.partition("=")[2]).resolve()) for s in args.sides]
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for k in range(len(sides)):
            name, checkout = sides[(k + r) % len(sides)]
            legs = "raw,ws-mdp,ws-ws" + (",raw-uvloop" if name == sides[0][0] else "")
            load = os.getloadavg()[0]
            for leg, result in run_side(checkout, legs, args.duration).items():
                runs.append({"side": name, "round": r + 1, "leg": leg, "load": load, **result})
                print(f"round {r + 1} {name} {leg}: {json.dumps(result)}", file=sys.stderr)
    if args.log:
        args.log.write_text("".join(json.dumps(x) + "\n" for x in runs))
    report(runs, [name for name, _ in sides])
    return 0


def report(runs: list[dict[str, Any]], names: list[str]) -> None:
    raw = {(x["side"], x["round"]): float(x["req_s"]) for x in runs if x["leg"] == "raw"}
    loads = [float(x["load"]) for x in runs]
    print(f"{len(runs)} runs, load average {min(loads):.1f}-{max(loads):.1f}")
    print("| leg | broker | req/s | server CPU µs/request | ÷ raw echo of the same invocation |")
    print("|---|---|---:|---:|---:|")
    for leg in ("raw", "raw-uvloop", "ws-mdp", "ws-ws"):
        for name in names:
            mine = [x for x in runs if x["side"] == name and x["leg"] == leg]
            if not mine:
                continue

            def med(key: str, rows: list[dict[str, Any]] = mine) -> str:
                v = [float(x[key]) for x in rows]
                return f"{statistics.median(v):,.1f} ({min(v):,.1f}–{max(v):,.1f})"

            ratios = [float(x["req_s"]) / raw[(name, x["round"])] for x in mine]
            ratio = "" if leg == "raw" else f"{statistics.median(ratios):.2f}×"
            who = "—" if leg == "raw-uvloop" else name
            print(f"| {leg} | {who} | {med('req_s')} | {med('cpu_us_req')} | {ratio} |")
    for leg in ("ws-mdp", "ws-ws"):
        base = {
            x["round"]: float(x["cpu_us_req"])
            for x in runs
            if x["side"] == names[0] and x["leg"] == leg
        }
        for name in names[1:]:
            pairs = [
                float(x["cpu_us_req"]) / base[x["round"]]
                for x in runs
                if x["side"] == name and x["leg"] == leg and x["round"] in base
            ]
            if pairs:
                print(
                    f"{leg}: {name} / {names[0]} broker CPU per request, median of the rounds' "
                    f"ratios {statistics.median(pairs):.3f} ({min(pairs):.2f}-{max(pairs):.2f})"
                )


if __name__ == "__main__":
    raise SystemExit(main())
