"""The ``maitred bench`` verb (registered through the ``maitred`` entry-point group).

Only the verb's parser is built when ``maitred`` starts: the benchmark itself
(:mod:`maitred.plugins.bench.standard`, pyzmq, the load generator) is imported when the verb runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from maitred.plugins.hookspecs import hookimpl

DESCRIPTION = (
    "Run the standard MDP benchmark set (maitred strict and pipelined, majortomo, zguide's "
    "mdbroker.py, a zmq.proxy hop; 1 and 4 workers, one of them slow; 1, 8 and 64 in flight) "
    "with a progress bar on stderr; print a table and write it with a JSON file."
)

EXAMPLES = """examples:
  maitred bench --quick
  maitred bench --full --mdbroker ~/zguide/examples/Python/mdbroker.py -o set.json
  maitred bench --legs maitred-strict,maitred,proxy --scenarios 1w-fast --inflight 64 --runs 5
"""


def _run(args: argparse.Namespace) -> int:
    from maitred.plugins.bench import standard

    return standard.run_command(args)


#: the legs and the scenarios (kept equal to ``mdp.STANDARD_LEGS`` and ``standard.FULL``, which
#: cannot be imported here without pyzmq)
LEG_NAMES = ("maitred-strict", "maitred", "majortomo", "mdbroker", "proxy")
SCENARIO_NAMES = ("1w-fast", "1w-simple", "4w-fast", "4w-1slow")


def _legs(text: str) -> str:
    legs = [x.strip() for x in text.split(",") if x.strip()]
    if not legs or any(x not in LEG_NAMES for x in legs):
        raise argparse.ArgumentTypeError(f"legs are {', '.join(LEG_NAMES)}")
    return ",".join(legs)


def csv_ints(text: str) -> list[int]:
    """Positive integers, comma separated (an ``argparse`` type)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, comma separated")
    return values


def add_options(p: argparse.ArgumentParser) -> None:
    """The options of ``maitred bench``."""
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="a short look: 2 scenarios, 1 run, 0.3 s warm-up + 1 s per measurement (~1 min)",
    )
    size.add_argument(
        "--full",
        action="store_true",
        help="the standard set (default): 4 scenarios, 5 runs, 0.5 s + 1.5 s each (~10 min)",
    )
    p.add_argument("--runs", type=int, default=None, help="runs of each measurement")
    p.add_argument("--duration", type=float, default=None, help="measured seconds")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds")
    p.add_argument("--legs", type=_legs, default=None, help=f"of {','.join(LEG_NAMES)}")
    p.add_argument("--scenarios", default=None, help=f"of {','.join(SCENARIO_NAMES)}")
    p.add_argument("--inflight", type=csv_ints, default=None, help="in-flight levels, e.g. 1,64")
    p.add_argument(
        "--mdbroker",
        default=os.environ.get("MAITRED_BENCH_MDBROKER"),
        help="zguide's mdbroker.py, with MDP.py and zhelpers.py beside it "
        "(default $MAITRED_BENCH_MDBROKER); without it that leg is skipped",
    )
    p.add_argument(
        "--maitred-cmd",
        default=None,
        help="maitred command, {endpoint} replaced (default: $MAITRED_CMD or this maitred)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="the JSON result file (default: bench-results/mdp-standard-TIME.json, or "
        "bench/results/ in a source checkout); the table is written beside it as .txt",
    )


@hookimpl
def maitred_add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the standard MDP benchmark set",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser)
    parser.set_defaults(run=_run)
