"""The cluster's bookkeeping of peers on a real core (no sockets, no NATS): proxies follow
announcements, a proxy whose service is no longer announced waits for its replies, a node that
is gone takes its proxies (and their requests) with it."""

from __future__ import annotations

from maitred.core.access import ANONYMOUS
from maitred.core.clock import FakeClock
from maitred.core.errors import ErrorCode
from maitred.core.port import CorePort
from maitred.core.routing.model import ReplyKind, Request, Worker
from maitred.core.routing.router import Liveness, Router
from maitred.transports.cluster.codec import Announcement, ServiceState
from maitred.transports.cluster.fabric import CLUSTER
from maitred.transports.cluster.peers import Peers, ProxySink
from tests.core.harness import FakeSink


def _setup() -> tuple[CorePort, Peers, list[tuple[Worker, Request]], FakeSink]:
    port = CorePort(Router(), FakeClock(10.0), Liveness())
    sent: list[tuple[Worker, Request]] = []
    proxies = port.open_session(
        "cluster", ProxySink(lambda w, r: sent.append((w, r))), CLUSTER, 10.0, quiet=True
    )
    sink = FakeSink("caller")
    return port, Peers(port, proxies), sent, sink


def _announce(node: str, *services: tuple[bytes, int]) -> Announcement:
    return Announcement(node, 1, 1, "addr", [ServiceState(n, 1, c, c, 0) for n, c in services])


def test_proxies_follow_announcements_and_wait_for_their_replies() -> None:
    port, peers, sent, sink = _setup()
    caller = port.open_session("t", sink, ANONYMOUS, 10.0)
    peer, new = peers.update(_announce("c", (b"echo", 2)), 10.0)
    assert new and peer.proxies["echo"].credit == 4 and peer.proxies["echo"].remote
    request = port.submit(caller, "echo", [b"x"], None, 10.0)
    assert request is not None and sent == [(peer.proxies["echo"], request)]
    _, new = peers.update(_announce("c", (b"echo", 3)), 10.5)
    assert not new and peer.proxies["echo"].credit == 6
    proxy = peer.proxies["echo"]
    peers.update(_announce("c"), 11.0)  # no longer announced, a request still out
    assert "echo" in peer.retiring and proxy.alive and proxy.credit == 1
    assert port.reply(proxy, request.id, [b"answer"], 11.0)
    assert sink.replies[-1][1] is ReplyKind.FINAL and sink.replies[-1][2] == [b"answer"]
    peers.retire_due(11.1, 1.0)
    assert not proxy.alive and "echo" not in peer.proxies


def test_a_retiring_proxy_that_gets_no_reply_fails_its_request_after_the_grace() -> None:
    port, peers, _sent, sink = _setup()
    caller = port.open_session("t", sink, ANONYMOUS, 10.0)
    peer, _ = peers.update(_announce("c", (b"echo", 1)), 10.0)
    request = port.submit(caller, "echo", [b"x"], None, 10.0)
    assert request is not None
    peers.update(_announce("c"), 10.2)
    peers.retire_due(10.5, 1.0)
    assert peer.proxies  # still waiting
    peers.update(_announce("c", (b"echo", 1)), 10.6)  # announced again: back in service
    assert not peer.retiring and peer.proxies["echo"].credit == 2
    peers.update(_announce("c"), 10.7)
    peers.retire_due(11.8, 1.0)
    assert not peer.proxies
    assert sink.errors[-1][1].code is ErrorCode.WORKER_DIED


def test_a_node_that_is_gone_takes_its_proxies() -> None:
    port, peers, _sent, sink = _setup()
    caller = port.open_session("t", sink, ANONYMOUS, 10.0)
    peers.update(_announce("b", (b"s", 1)), 10.0)
    peers.update(_announce("c", (b"s", 1)), 10.0)
    first = port.submit(caller, "s", [b"1"], None, 10.0)
    assert first is not None
    peers.pending[first.id] = (first.worker.label.split("/")[0], 1, first.worker)  # type: ignore[union-attr]
    assert peers.overdue(14.0, 3.0) == ["b", "c"]
    gone = first.worker.label.split("/")[0]  # type: ignore[union-attr]
    assert peers.remove(gone, 14.0, "missed") is not None
    assert peers.remove(gone, 14.0, "missed") is None
    assert first.id not in peers.pending
    assert sink.errors[-1][1].code is ErrorCode.WORKER_DIED
    rows = peers.rows(14.0)
    assert [r["node"] for r in rows] == [n for n in ("b", "c") if n != gone]


def test_rows_in_detail_give_what_each_peer_announced_and_its_proxies() -> None:
    _port, peers, _sent, _sink = _setup()
    peers.update(_announce("c", (b"echo", 2), (b"b\xffin", 1)), 10.0)
    peers.update(_announce("b"), 10.0)
    assert "service_list" not in peers.rows(10.5)[0]
    b, c = peers.rows(10.5, detail=True)
    assert (b["node"], b["service_list"], b["proxies"]) == ("b", [], [])
    assert c["age"] == 0.5
    assert c["service_list"][1] == {
        "name": "echo",
        "workers": 1,
        "credit": 2,
        "free": 2,
        "queued": 0,
    }
    assert c["proxies"] == sorted(["c/echo", f"c/{c['service_list'][0]['name']}"])
