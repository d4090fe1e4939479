"""Management, /metrics and the dashboard see the cluster: on two ``maitred serve`` nodes over
a real ``nats-server``, each ``mmi.workers`` row says its node, ``{"cluster": true}`` adds what
the other node announced, /metrics has the node and peer gauges, the header shows both."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zmq

from maitred.plugins import nats_testing
from maitred.plugins.nats_testing import NatsStarter
from maitred.plugins.testing import ServeStarter
from tests.e2e import cluster_helpers
from tests.e2e.chromium import DevTools, chromium_fixture  # noqa: F401 (the fixture)
from tests.e2e.cluster_helpers import http, mdp, mmi, start_node, wait_service, worker_on_c
from tests.e2e.helpers import RawWorker

pytestmark = pytest.mark.slow

nats_server = nats_testing.nats_server
maitred_serve = cluster_helpers.graceful_serve

Ctx = zmq.Context[Any]


def test_mmi_listings_show_the_node_of_each_entry_and_the_cluster_scope(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    url = nats_server().url
    a = start_node(maitred_serve, tmp_path, url, "a")
    c = start_node(maitred_serve, tmp_path, url, "c")
    local = RawWorker(ctx, mdp(a), "rfc", b"echo")
    remote = RawWorker(ctx, mdp(c), "rfc", b"echo")
    only_c = RawWorker(ctx, mdp(c), "rfc", b"only.c")
    for worker in (local, remote, only_c):
        worker.ready()
    wait_service(ctx, a, "only.c")
    try:
        rows = json.loads(mmi(ctx, a, "mmi.workers", b"echo"))
        assert sorted(r["node"] for r in rows) == ["a", "c"]
        assert {r["node"]: r["transport"] for r in rows}["c"] == "cluster"
        services = json.loads(mmi(ctx, a, "mmi.services", b'{"cluster": true}'))
        assert {r["name"]: r["node"] for r in services["items"]} == {"echo": "a", "only.c": "a"}
        [peer] = services["cluster"]
        assert peer["node"] == "c" and peer["age"] < 3.0
        announced = {s["name"]: s for s in peer["services"]}
        assert set(announced) == {"echo", "only.c"}
        echo = announced["echo"]
        assert echo["workers"] == 1 and echo["queued"] == 0
        assert echo["free"] == echo["credit"] >= 1  # idle: all its credit is free
        queues = json.loads(mmi(ctx, a, "mmi.queues", b'{"cluster": true, "service": "only.c"}'))
        assert queues["items"] == {"only.c": {"queued": 0, "inflight": 0, "node": "a"}}
        assert [s["name"] for s in queues["cluster"][0]["services"]] == ["only.c"]
        # the other way round: c sees its own worker as its own and a's through a proxy
        rows = json.loads(mmi(ctx, c, "mmi.workers", b'{"service": "echo", "cluster": true}'))
        assert sorted(r["node"] for r in rows["items"]) == ["a", "c"]
        assert [p["node"] for p in rows["cluster"]] == ["a"]
    finally:
        for worker in (local, remote, only_c):
            worker.close()


def test_metrics_show_the_node_and_its_peers(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, ctx: Ctx
) -> None:
    a, _c, worker = worker_on_c(nats_server().url, maitred_serve, tmp_path, ctx, "only.c")
    try:
        epoch = json.loads(mmi(ctx, a, "mmi.nodes"))[0]["epoch"]
        with urllib.request.urlopen(f"{http(a)}/metrics", timeout=5.0) as response:
            text = response.read().decode()
        assert f'maitred_cluster_node_info{{epoch="{epoch}",node="a"}} 1.0' in text
        assert "maitred_cluster_peers 1.0" in text
        [age] = re.findall(r'maitred_cluster_peer_age_seconds\{peer="c"\} (\S+)', text)
        assert 0.0 <= float(age) < 3.0
        assert 'maitred_cluster_peer_services{peer="c"} 1.0' in text
        assert 'maitred_cluster_peer_inflight{peer="c"} 0.0' in text
        info = json.loads(mmi(ctx, a, "mmi.info"))
        assert [n["node"] for n in info["nodes"]] == ["a", "c"]
    finally:
        worker.close()


def test_dashboard_shows_the_node_and_its_peers(
    nats_server: NatsStarter, maitred_serve: ServeStarter, tmp_path: Path, chromium: DevTools
) -> None:
    url = nats_server().url
    a = start_node(maitred_serve, tmp_path, url, "a")
    start_node(maitred_serve, tmp_path, url, "c")
    chromium.open(f"{http(a)}/admin/?refresh=0.25", width=1280, height=800)
    chromium.wait_js(
        "!document.getElementById('cluster-meta').hidden"
        " && document.getElementById('cluster-node').textContent === 'a'"
        " && document.getElementById('cluster-peers').textContent.startsWith('c (')",
        timeout=10,
        what="the node and its peer c in the header",
    )
