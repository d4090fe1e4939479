"""The ``cluster`` scope of ``mmi.services``, ``mmi.workers`` and ``mmi.queues``: each row says
its node, and ``{"cluster": true}`` adds the other nodes' announced services, all from the
``mmi.nodes`` a cluster fabric adds (no cluster: the rows are as they always were)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from maitred.core.management import Management
from tests.core.harness import Harness, sink_of

NODES = [
    {"node": "a", "epoch": 1, "age": 0.0, "self": True},
    {
        "node": "c",
        "epoch": 7,
        "age": 0.25,
        "self": False,
        "service_list": [
            {"name": "echo", "workers": 2, "credit": 4, "free": 3, "queued": 0},
            {"name": "other", "workers": 1, "credit": 1, "free": 0, "queued": 5},
        ],
        "proxies": ["c/echo"],
    },
]


def ask(h: Harness, name: str, last: bytes) -> Any:
    client = h.session("client")
    request = h.call(client, name, (last,))
    assert request is not None
    [(_, body)] = sink_of(client).reply_bodies(request)
    return json.loads(body[-1])


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(mmi=Management())


@pytest.fixture
def clustered(h: Harness) -> Harness:

    def nodes(body: Any) -> bytes:
        return json.dumps(NODES).encode()

    h.router.add_mmi("mmi.nodes", nodes)
    h.worker("echo")
    h.worker("echo", remote=True, label="c/echo")
    return h


def test_workers_say_their_node(clustered: Harness) -> None:
    rows = ask(clustered, "mmi.workers", b"echo")
    assert sorted((r["worker"].startswith("c/"), r["node"]) for r in rows) == [
        (False, "a"),
        (True, "c"),
    ]


def test_services_and_queues_say_this_node(clustered: Harness) -> None:
    [row] = ask(clustered, "mmi.services", b"")
    assert row["name"] == "echo" and row["node"] == "a" and row["workers"] == 2
    assert ask(clustered, "mmi.queues", b"")["echo"]["node"] == "a"


@pytest.mark.parametrize("name", ["mmi.services", "mmi.workers", "mmi.queues"])
def test_the_cluster_scope_adds_what_the_others_announced(clustered: Harness, name: str) -> None:
    answer = ask(clustered, name, b'{"cluster": true}')
    assert answer["total"] >= 1
    assert answer["cluster"] == [
        {"node": "c", "epoch": 7, "age": 0.25, "services": NODES[1]["service_list"]}
    ]
    narrowed = ask(clustered, name, b'{"cluster": true, "service": "other"}')
    assert narrowed["cluster"][0]["services"] == [NODES[1]["service_list"][1]]  # type: ignore[index]
    assert "cluster" not in ask(clustered, name, b'{"offset": 0}')


def test_without_a_cluster_rows_have_no_node_and_the_scope_is_empty(h: Harness) -> None:
    h.worker("echo")
    [row] = ask(h, "mmi.workers", b"")
    assert "node" not in row
    assert ask(h, "mmi.services", b'{"cluster": true}')["cluster"] == []


def test_a_broken_cluster_view_is_counted_and_ignored(h: Harness) -> None:
    h.router.add_mmi("mmi.nodes", lambda body: b"not json")
    h.worker("echo")
    [row] = ask(h, "mmi.services", b"")
    assert "node" not in row
    assert h.router.stats["mmi.bad_cluster_view"] == 1


def test_mmi_info_and_the_snapshot_list_the_nodes(clustered: Harness) -> None:
    assert [n["node"] for n in ask(clustered, "mmi.info", b"")["nodes"]] == ["a", "c"]
    assert "nodes" in clustered.router.snapshot()


def test_without_a_cluster_the_snapshot_has_no_nodes(h: Harness) -> None:
    assert "nodes" not in h.router.snapshot()
    h.router.add_mmi("mmi.nodes", lambda body: b'{"not": "a list"}')
    assert "nodes" not in h.router.snapshot()
    assert h.router.stats["mmi.bad_cluster_view"] == 1
