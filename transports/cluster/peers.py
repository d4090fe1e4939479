"""What a node knows of the others: each peer's epoch, services and proxy workers, and the
requests it forwarded to them (pure bookkeeping on the port: no NATS here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from maitred.core.routing.model import BaseSink, Request, Session, Worker
from maitred.core.transport import BrokerPort
from maitred.transports.cluster.codec import Announcement, ServiceState, service_name

log = logging.getLogger("maitred.transports.cluster")


@dataclass
class Peer:
    """Another node, as its announcements describe it."""

    name: str
    epoch: int
    address: str
    joined: float
    seen: float
    load: int = 0
    #: service name -> the proxy worker that stands for the node's workers of it
    proxies: dict[str, Worker] = field(default_factory=dict)
    #: services the node no longer announces whose proxy still waits for replies: since when
    retiring: dict[str, float] = field(default_factory=dict)
    #: its services as its last announcement gave them (``mmi.*`` with ``cluster: true``)
    announced: list[ServiceState] = field(default_factory=list)


class ProxySink(BaseSink):
    """The sink of the session that holds every proxy worker: a request handed to a proxy is
    forwarded to its node (``forward(peer, worker, request)``)."""

    __slots__ = ("forward",)

    def __init__(self, forward: Any) -> None:
        self.forward = forward

    def deliver_request(self, worker: Worker, request: Request) -> None:
        self.forward(worker, request)


class Peers:
    """The live peers of this node and their proxy workers on the port.

    A proxy's credit is ``window`` times the credit its node announces for the service (at
    least 1): the node's workers always have the next request waiting there, so a round trip
    over NATS does not idle them. ``pending`` maps each forwarded request's token to the node
    and epoch it went to: a reply from anyone else is dropped."""

    def __init__(self, port: BrokerPort, session: Session, window: int = 2) -> None:
        self.port = port
        self.session = session
        self.window = window
        self.peers: dict[str, Peer] = {}
        #: token -> (peer name, epoch, proxy worker)
        self.pending: dict[int, tuple[str, int, Worker]] = {}

    def update(self, a: Announcement, now: float) -> tuple[Peer, bool]:
        """Take in an announcement of a live node (its epoch checked by the caller); the peer
        and whether it is new."""
        peer = self.peers.get(a.node)
        new = peer is None
        if peer is None:
            peer = self.peers[a.node] = Peer(a.node, a.epoch, a.address, now, now)
        peer.seen = now
        peer.address = a.address
        peer.load = a.load
        peer.announced = list(a.services)
        wanted: dict[str, int] = {}
        for s in a.services:
            if s.workers > 0:
                wanted[service_name(s.name)] = max(1, s.credit * self.window)
        for name in [n for n in peer.proxies if n not in wanted and n not in peer.retiring]:
            old = peer.proxies[name]
            if old.inflight:
                # its replies may still be on the way (they travel on another subject than
                # the announcement): it takes no new request and leaves once they are in
                self.port.set_credit(old, 1, now)
                peer.retiring[name] = now
            else:
                self._drop(peer, name, now, f"node {peer.name} no longer serves it")
        for name, credit in wanted.items():
            peer.retiring.pop(name, None)
            proxy = peer.proxies.get(name)
            if proxy is not None and proxy.alive:
                if proxy.credit != credit:
                    self.port.set_credit(proxy, credit, now)
                continue
            try:
                peer.proxies[name] = self.port.register_worker(
                    self.session,
                    name,
                    now,
                    credit=credit,
                    label=f"{peer.name}/{name}",
                    address=f"node {peer.name}",
                    idle_timeout=0,
                    busy_timeout=0,
                    remote=True,
                )
            except Exception as exc:  # a name this node refuses (access, limits): log once
                self.port.stats["cluster.proxy_refused"] += 1
                log.info("no proxy for %s of node %s: %s", name, peer.name, exc)
        return peer, new

    def _drop(self, peer: Peer, name: str, now: float, reason: str) -> None:
        proxy = peer.proxies.pop(name)
        for token in list(proxy.inflight):
            self.pending.pop(token, None)
        # as a worker that died: its requests are redelivered or fail with 502 by policy
        self.port.unregister_worker(proxy, now, reason)

    def retire_due(self, now: float, grace: float) -> None:
        """Drop the retiring proxies whose requests were all answered, or that waited
        ``grace`` seconds (what they still hold fails with 502 or is redelivered)."""
        for peer in self.peers.values():
            for name, since in list(peer.retiring.items()):
                proxy = peer.proxies.get(name)
                if proxy is None or not proxy.inflight or now - since >= grace:
                    del peer.retiring[name]
                    if proxy is not None:
                        self._drop(peer, name, now, f"node {peer.name} no longer serves it")

    def remove(self, name: str, now: float, reason: str) -> Peer | None:
        """The node is gone: its proxies leave (their requests fail or are redelivered)."""
        peer = self.peers.pop(name, None)
        if peer is None:
            return None
        for service in list(peer.proxies):
            self._drop(peer, service, now, reason)
        return peer

    def overdue(self, now: float, window: float) -> list[str]:
        return [name for name, peer in self.peers.items() if now - peer.seen > window]

    def rows(self, now: float, detail: bool = False) -> list[dict[str, Any]]:
        """``mmi.nodes``' rows of the peers; ``detail`` adds each one's ``service_list``
        (what it last announced) and ``proxies`` (label of each of its proxy workers here)."""
        rows = [
            {
                "node": p.name,
                "epoch": p.epoch,
                "address": p.address,
                "age": round(now - p.seen, 3),
                "joined_for": round(now - p.joined, 3),
                "load": p.load,
                "services": len(p.proxies),
                "inflight": sum(len(w.inflight) for w in p.proxies.values()),
                "self": False,
            }
            for p in sorted(self.peers.values(), key=lambda p: p.name)
        ]
        if detail:
            for row, peer in zip(
                rows, sorted(self.peers.values(), key=lambda p: p.name), strict=True
            ):
                row["service_list"] = [
                    {
                        "name": service_name(s.name),
                        "workers": s.workers,
                        "credit": s.credit,
                        "free": s.free,
                        "queued": s.queued,
                    }
                    for s in sorted(peer.announced, key=lambda s: s.name)
                ]
                row["proxies"] = sorted(w.label for w in peer.proxies.values())
        return rows
