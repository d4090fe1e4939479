"""The standard benchmark set's pieces that need no sockets: the verb's lazy import, the
per-worker shares, the progress bar, the table, the soak's sparkline."""

from __future__ import annotations

import io
import subprocess
import sys

from maitred.plugins.bench import loadgen, plugin, standard


def test_the_bench_verb_imports_no_benchmark_until_it_runs() -> None:
    code = (
        "import sys\n"
        "from maitred.core.cli import _plugins\n"
        "from maitred.core.cli_parser import build_parser\n"
        "pm, specs = _plugins()\n"
        "build_parser(specs, pm).parse_args(['bench', '--quick'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('maitred.plugins.bench')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "['maitred.plugins.bench', 'maitred.plugins.bench.plugin']"


def test_the_verb_knows_every_leg_and_scenario() -> None:
    from maitred.plugins.bench import mdp

    assert plugin.LEG_NAMES == mdp.STANDARD_LEGS
    assert tuple(s.name for s in standard.FULL) == plugin.SCENARIO_NAMES


def test_shares_and_the_fast_workers_latency_by_tag() -> None:
    lats = [0.001, 0.002, 0.003, 0.100, 0.004, 0.200]
    tags = [0, 1, 0, 3, 1, 3]
    out = loadgen.by_worker(lats, tags, slow=[3])
    assert {k: v["replies"] for k, v in out.items()} == {"fast": 4, "0": 2, "1": 2, "3": 2}
    assert out["3"]["share"] == round(2 / 6, 4)
    assert out["fast"]["p99"] == 4000.0  # µs: the slow worker's replies are not in it


def test_worker_cpu_is_the_sum_of_the_workers() -> None:
    cpu: dict[str, float | None] = {"client": 10.0, "broker": 50.0, "worker0": 5.0, "worker1": 7.5}
    loadgen._sum_roles(cpu)
    assert cpu["worker"] == 12.5
    cpu = {"worker0": 5.0, "worker1": None}
    loadgen._sum_roles(cpu)
    assert cpu["worker"] is None


def test_the_progress_bar_counts_every_step() -> None:
    stream = io.StringIO()
    bar = standard.Bar(4, stream, width=8)
    for i in range(4):
        bar.step(f"step {i}")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[##------] 1/4 step 0"
    assert lines[-1] == "[########] 4/4 step 3"


def test_the_table_gives_ratios_to_the_proxy_shares_and_skips() -> None:
    row = {
        "leg": "maitred", "inflight": 64, "runs": 1, "ok_runs": 1, "skipped": None,
        "req_per_s": 500.0, "p50_us": 100.0, "p99_us": 900.0,
        "cpu_us_per_request": {"broker": 30.0, "client": 10.0, "worker": 20.0},
        "cpu_percent": {"other": 3.0},
        "shares": {"0": 0.5, "1": 0.5}, "fast_p99_us": 800.0,
    }  # fmt: skip
    proxy = dict(row, leg="proxy", req_per_s=1000.0, shares=None)
    document = {
        "plan": {"runs": 1, "warmup": 0.1, "duration": 0.2},
        "scenarios": [
            {
                "name": "4w-fast",
                "legs": {"maitred": {"skipped": None}, "mdbroker": {"skipped": "no file"}},
                "summary": [row, proxy, {"leg": "mdbroker", "inflight": 64, "skipped": "no"}],
            }
        ],
    }
    table = standard.render(document)
    line = next(ln for ln in table.splitlines() if ln.startswith("4w-fast    maitred"))
    assert "0.50x" in line and "30.0/10.0/20.0" in line and "50% 50% (800)" in line
    assert "mdbroker skipped: no file" in table


def test_the_soak_curve_is_a_sparkline() -> None:
    sys.path.insert(0, ".")
    from bench.soak import sparkline

    assert sparkline([1.0, 1.0, 2.0]) == "▁▁█"
    assert sparkline([]) == ""
