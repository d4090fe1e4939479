"""The chaos run (see harness.py): short in CI (20 s of blows), long with ``--chaos-long`` or
``--chaos-seconds N`` / ``$MAITRED_CHAOS_SECONDS``; ``--chaos-seed N`` replays a run's blows
(the timing of the load and of the processes differs from run to run: the same seed gives the
same sequence of blows, not the same interleaving). Its time bound is set in conftest.py."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from maitred.plugins.nats_testing import nats_server  # noqa: F401  (fixture)
from tests.chaos.harness import chaos

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


def chaos_seconds(config: pytest.Config) -> float:
    given = config.getoption("--chaos-seconds")
    if given is not None:
        return float(given)
    env = os.environ.get("MAITRED_CHAOS_SECONDS")
    if env:
        return float(env)
    return 300.0 if config.getoption("--chaos-long") else 20.0


@pytest.mark.parametrize("store", ["sqlite", "jetstream"])
def test_guarantees_hold_under_chaos(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    store: str,
) -> None:
    seconds = chaos_seconds(request.config)
    seed = request.config.getoption("--chaos-seed")
    if seed is None:
        seed = random.randrange(1 << 30)
    section = ""
    if store == "jetstream":  # the durable requests on a JetStream stream (its own server)
        pytest.importorskip("nats")
        starter = request.getfixturevalue("nats_server")
        section = (
            f'[store]\nbackend = "jetstream"\njetstream_nats = ["{starter(jetstream=True).url}"]\n'
        )
    with chaos(tmp_path, seconds, seed, section) as run:
        report = run.run()
    with capsys.disabled():
        print("\n" + report.text())
    counts = report.counts
    # the run did what it claims: every protocol carried load, every kind of blow fell
    assert all(counts["amo sent (per protocol)"].get(p, 0) >= 10 for p in ("mdp", "rest", "ws"))
    assert counts["durable accepted"] >= 10
    assert {"kill", "pause", "broker"} <= set(counts["blows"]), counts["blows"]
    assert not report.problems, report.text()
