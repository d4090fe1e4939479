"""The management interface (MMI, ZeroMQ RFC 8, plus maitred's extensions).

Every service whose name starts with ``mmi.`` is answered by the broker itself, whatever protocol
asks. The reply echoes the request body with its **last** frame replaced by the answer (a body
with no frames gets a one-frame answer):

=================  ===============================  ===============================================
service            last request frame               answer
=================  ===============================  ===============================================
``mmi.service``    a service name                   ``200`` (a live worker) or ``404`` (none)
``mmi.services``   ignored                          JSON list: name, workers, free, queued, inflight
``mmi.workers``    a service name (empty: all)      JSON list of workers with their state
``mmi.queues``     ignored                          JSON object: name -> {queued, inflight}
``mmi.topics``     ignored                          JSON object: pattern -> subscriber count
``mmi.sessions``   a transport name (empty: all)    JSON list of open sessions (connections)
``mmi.info``       ignored                          JSON object: version, uptime, transports, ...
any other          -                                ``501``
=================  ===============================  ===============================================

Listings are bounded (``[broker] mmi_max_items``). A last frame that is a JSON object asks for
one page: ``{"offset": 0, "limit": 100}`` (``"service"`` narrows ``mmi.services``,
``mmi.queues`` and ``mmi.workers`` to one service); the answer
is then ``{"items": ..., "offset": o, "total": n, "next": o2 or null, "truncated": bool}``, with
``items`` in the listing's usual form, in name order. A listing asked the old way that holds
more than ``mmi_max_items`` entries gets that form too (the first page, ``truncated: true``)
instead of one huge document, so no single MMI call holds the event loop long.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec

from maitred.core.routing.model import Body, Service, Worker
from maitred.core.routing.router import Router

_json = msgspec.json.Encoder()

InfoProvider = Callable[[], dict[str, Any]]


def _answer(body: Body, result: bytes) -> list[bytes]:
    return [*body[:-1], result] if body else [result]


def _last(body: Body) -> str:
    return body[-1].decode("utf-8", "replace") if body else ""


def _ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds for JSON (None stays None; beyond the last bucket: None)."""
    if seconds is None or seconds == math.inf:
        return None
    return round(seconds * 1000.0, 3)


def _service_row(svc: Service) -> dict[str, Any]:
    lat = svc.latency
    return {
        "name": svc.name,
        "workers": len(svc.workers),
        "free": len(svc.free),
        "queued": svc.queued + svc.backlog,  # (and what waits in a shared store)
        "inflight": svc.inflight(),
        "requests": svc.requests,
        "replies": svc.replies,
        "errors": svc.errors,
        "timeouts": svc.timeouts,
        "errors_by_code": {str(code): n for code, n in sorted(svc.error_codes.items())},
        # acceptance to final reply; p50/p99 are the upper bounds of the histogram buckets
        # holding them (docs/reference/mmi.md)
        "latency": {
            "count": lat.count,
            "mean_ms": _ms(lat.sum / lat.count) if lat.count else None,
            "p50_ms": _ms(lat.quantile(0.5)),
            "p99_ms": _ms(lat.quantile(0.99)),
        },
    }


class _Page(msgspec.Struct, forbid_unknown_fields=True):
    """A page query (the last request frame as a JSON object)."""

    offset: int = 0
    limit: int = 0
    service: str = ""
    #: narrows ``mmi.sessions`` to one transport
    transport: str = ""
    #: ``mmi.services``, ``mmi.workers``, ``mmi.queues``: add what the other nodes of the
    #: cluster last announced (``cluster`` in the answer)
    cluster: bool = False


_page_decoder = msgspec.json.Decoder(_Page)


def _page_of(body: Body) -> _Page | None:
    """The page query in the last frame, or None (the frame is not a JSON object)."""
    last = body[-1] if body else b""
    if not last.startswith(b"{"):
        return None
    try:
        page = _page_decoder.decode(last)
    except msgspec.DecodeError:
        return None
    if page.offset < 0 or page.limit < 0:
        return None
    return page


class _Cluster:
    """This node's view of its cluster, from the ``mmi.nodes`` a cluster fabric adds: this
    node's name, the node of each proxy worker (by label) and the other nodes' rows."""

    __slots__ = ("node", "nodes", "peers")

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.node = ""
        self.nodes: dict[str, str] = {}
        self.peers: list[dict[str, Any]] = []
        for row in rows:
            if row.get("self"):
                self.node = row["node"]
                continue
            self.peers.append(row)
            for label in row.get("proxies", ()):
                self.nodes[label] = row["node"]

    def node_of(self, worker: Worker) -> str:
        return self.nodes.get(worker.label, "") if worker.remote else self.node

    def scope(self, wanted: str) -> list[dict[str, Any]]:
        """The other nodes with the services they announced (only ``wanted``, when set)."""
        return [
            {
                "node": row["node"],
                "epoch": row["epoch"],
                "age": row["age"],
                "services": [
                    s for s in row.get("service_list", ()) if not wanted or s["name"] == wanted
                ],
            }
            for row in self.peers
        ]


def _cluster_of(router: Router, detail: bool = True) -> _Cluster | None:
    """The cluster view, or None (no cluster fabric on this broker). ``detail``: with what the
    other nodes announced and their proxies (a listing that shows only this node's name, and
    was not asked for the cluster scope, does without)."""
    rows = router.cluster_nodes(detail=detail)
    return None if rows is None else _Cluster(rows)


class Management:
    """The ``mmi.*`` handler the router calls; ``info`` supplies runtime facts for mmi.info;
    listings hold at most ``max_items`` entries per answer."""

    def __init__(
        self,
        info: InfoProvider | None = None,
        now: Callable[[], float] | None = None,
        max_items: int = 1000,
    ):
        self._info = info or (lambda: {})
        self._now = now
        self.max_items = max(1, max_items)

    def _window(self, page: _Page | None, total: int) -> tuple[int, int]:
        """(start, stop) of the entries to list."""
        if page is None:
            return 0, min(total, self.max_items)
        limit = min(page.limit or self.max_items, self.max_items)
        start = min(page.offset, total)
        return start, min(total, start + limit)

    def _listing(
        self,
        router: Router,
        page: _Page | None,
        total: int,
        start: int,
        items: Any,
        cluster: _Cluster | None = None,
    ) -> bytes:
        """The answer: ``items`` as they are (an old-style query that fits), or the page form
        (with the other nodes' services under ``cluster`` when the page asks for them)."""
        stop = start + len(items)
        if page is None and stop >= total:
            return _json.encode(items)
        if page is None:
            router.stats["mmi.truncated"] += 1
        answer: dict[str, Any] = {
            "items": items,
            "offset": start,
            "total": total,
            "next": stop if stop < total else None,
            "truncated": stop < total,
        }
        if page is not None and page.cluster:
            answer["cluster"] = cluster.scope(page.service) if cluster is not None else []
        return _json.encode(answer)

    def _names(self, router: Router, page: _Page | None) -> tuple[list[str], int, int]:
        """The service names of the page in name order, the total, and the page's start."""
        if page is not None and page.service:
            names = [page.service] if page.service in router.services else []
        else:
            names = sorted(router.services)
        start, stop = self._window(page, len(names))
        return names[start:stop], len(names), start

    def __call__(self, router: Router, name: str, body: Body) -> list[bytes]:
        handler = _HANDLERS.get(name)
        if handler is None:
            router.stats["mmi.not_implemented"] += 1
            return _answer(body, b"501")
        return _answer(body, handler(self, router, body))

    def _service(self, router: Router, body: Body) -> bytes:
        svc = router.services.get(_last(body))
        return b"200" if svc is not None and svc.workers else b"404"

    def _services(self, router: Router, body: Body) -> bytes:
        page = _page_of(body)
        names, total, start = self._names(router, page)
        services = router.services
        rows = [_service_row(services[n]) for n in names]
        cluster = _cluster_of(router, detail=page is not None and page.cluster)
        if cluster is not None:
            for row in rows:
                row["node"] = cluster.node
        return self._listing(router, page, total, start, rows, cluster)

    def _workers(self, router: Router, body: Body) -> bytes:
        page = _page_of(body)
        wanted = page.service if page is not None else _last(body)
        now = self._now() if self._now else None
        workers: list[Worker]
        if wanted:
            svc = router.services.get(wanted)
            workers = list(svc.workers) if svc is not None else []
        else:
            workers = list(router.iter_workers())
        start, stop = self._window(page, len(workers))
        cluster = _cluster_of(router)
        rows = [
            {
                "service": worker.service.name,
                "worker": worker.label,
                "transport": worker.session.transport,
                "address": worker.address,
                "identity": worker.session.identity.name,
                "credit": worker.credit,
                "inflight": len(worker.inflight),
                "served": worker.served,
                "idle_for": None if now is None else round(now - worker.touched, 3),
                "connected_for": None if now is None else round(now - worker.since, 3),
            }
            for worker in workers[start:stop]
        ]
        if cluster is not None:
            for row, worker in zip(rows, workers[start:stop], strict=True):
                row["node"] = cluster.node_of(worker)
        return self._listing(router, page, len(workers), start, rows, cluster)

    def _queues(self, router: Router, body: Body) -> bytes:
        page = _page_of(body)
        names, total, start = self._names(router, page)
        services = router.services
        depths: dict[str, dict[str, Any]] = {
            name: {
                # (``backlog``: what waits in a shared store's stream, not pulled yet)
                "queued": services[name].queued + services[name].backlog,
                "inflight": services[name].inflight(),
            }
            for name in names
        }
        cluster = _cluster_of(router, detail=page is not None and page.cluster)
        if cluster is not None:
            for depth in depths.values():
                depth["node"] = cluster.node
        return self._listing(router, page, total, start, depths, cluster)

    def _topics(self, router: Router, body: Body) -> bytes:
        page = _page_of(body)
        patterns = router.topics.patterns()
        names = sorted(patterns)
        start, stop = self._window(page, len(names))
        counts = {name: patterns[name] for name in names[start:stop]}
        return self._listing(router, page, len(names), start, counts)

    def _sessions(self, router: Router, body: Body) -> bytes:
        page = _page_of(body)
        wanted = page.transport if page is not None else _last(body)
        now = self._now() if self._now else None
        sessions = [
            s
            for s in router.sessions.values()
            if not s.closed and (not wanted or s.transport == wanted)
        ]
        start, stop = self._window(page, len(sessions))
        rows = []
        for session in sessions[start:stop]:
            addresses = sorted({w.address for w in session.workers if w.address})
            rows.append(
                {
                    "id": session.id,
                    "session": session.label,
                    "transport": session.transport,
                    "identity": session.identity.name,
                    "roles": sorted(session.identity.roles),
                    "address": ", ".join(addresses),
                    "shared": session.quiet,
                    "workers": len(session.workers),
                    "subscriptions": len(session.patterns),
                    "queued": len(session.queued),
                    "connected_for": None if now is None else round(now - session.opened, 3),
                }
            )
        return self._listing(router, page, len(sessions), start, rows)

    def _info_(self, router: Router, body: Body) -> bytes:
        info = dict(self._info())
        info.update(router.snapshot())
        return _json.encode(info)


_HANDLERS: dict[str, Callable[[Management, Router, Body], bytes]] = {
    "mmi.service": Management._service,
    "mmi.services": Management._services,
    "mmi.workers": Management._workers,
    "mmi.queues": Management._queues,
    "mmi.topics": Management._topics,
    "mmi.sessions": Management._sessions,
    "mmi.info": Management._info_,
}

#: the names answered (anything else under ``mmi.`` is 501)
MMI_SERVICES = tuple(_HANDLERS)
