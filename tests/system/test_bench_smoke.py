"""The benchmark runs end to end (no timing is asserted: figures belong in bench/README.md and
the issue notes, measured on a quiet machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mdp_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run_mdp.py"),
            "--smoke",
            "--legs",
            "maitred,maitred-strict,proxy",
            "--maitred-cmd",
            "{python} -m maitred.core serve --mdp {endpoint} --log-level warning",
            "--json",
            str(out),
            "--strict",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    legs = {row["leg"] for row in report["summary"] if row["ok_runs"]}
    assert legs == {"maitred", "maitred-strict", "proxy"}
    assert all(row["req_per_s"] > 0 for row in report["summary"])
    # CPU per request per role, from each process's CPU time over the replies
    for row in report["summary"]:
        assert row["cpu_us_per_request"]["client"] > 0
    assert "maitred-strict/proxy" in report["ratios"]


@pytest.mark.slow
def test_curve_bench_smoke(tmp_path: Path) -> None:
    """bench/curve.py: the four legs measured in one run, CURVE on maitred's second and the
    proxy's second (their peers connected with the keys, or those legs would get no reply at
    all), with the CPU of the broker's libzmq I/O thread apart."""
    out = tmp_path / "curve.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "curve.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    (row,) = report["summary"]
    legs = ("plain", "curve", "proxy", "proxy-curve")
    assert all(row[f"{leg}_req_per_s"] > 0 for leg in legs)
    assert {r["leg"] for r in report["runs"] if r.get("ok")} == set(legs)
    assert row["ratio_of_medians"] > 0 and row["proxy_ratio_of_medians"] > 0
    assert row["curve_broker_io_cpu_us"] > 0
