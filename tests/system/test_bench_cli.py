"""``maitred bench``: the standard MDP set from the command line, over real sockets, in a tiny
bounded configuration (one short run of two legs, four workers, one slow). No timing is asserted:
the figures belong in docs/topics/benchmarks.md, measured with the full set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_maitred_bench_runs_the_set_and_writes_a_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "set.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maitred.core",
            "bench",
            "--quick",
            "--legs",
            "maitred-strict,mdbroker,proxy",
            "--scenarios",
            "4w-1slow",
            "--inflight",
            "8",
            "--runs",
            "1",
            "--warmup",
            "0.1",
            "--duration",
            "0.3",
            "--maitred-cmd",
            "{python} -m maitred.core serve --mdp {endpoint} --log-level warning",
            "--mdbroker",
            str(tmp_path / "absent" / "mdbroker.py"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the progress bar went to stderr, one step per measurement (2 measured, 1 skipped)
    assert "[" + "#" * 30 + "] 3/3" in result.stderr
    # the table to stdout and beside the JSON file
    assert "maitred-strict" in result.stdout and "proxy" in result.stdout
    assert "mdbroker skipped: no zguide mdbroker.py" in result.stdout
    assert out.with_suffix(".txt").read_text().strip() == result.stdout.strip()
    document = json.loads(out.read_text())
    scenarios = {sc["name"]: sc for sc in document["scenarios"]}
    assert list(scenarios) == ["4w-1slow"]
    for sc in scenarios.values():
        rows = {row["leg"]: row for row in sc["summary"]}
        assert rows["mdbroker"]["skipped"]
        for leg in ("maitred-strict", "proxy"):
            assert rows[leg]["ok_runs"] == 1
            assert rows[leg]["req_per_s"] > 0
            assert rows[leg]["cpu_us_per_request"]["broker"] > 0
    # with four workers, each one's share of the replies (they add up to all of them), and the
    # latency of the replies of the three fast ones
    for leg in ("maitred-strict", "proxy"):
        row = next(r for r in scenarios["4w-1slow"]["summary"] if r["leg"] == leg)
        assert set(row["shares"]) == {"0", "1", "2", "3"}
        assert sum(row["shares"].values()) == pytest.approx(1.0, abs=0.01)
        assert row["fast_p99_us"] > 0
