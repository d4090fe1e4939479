"""``GET /metrics``: the router's counters and per-service gauges in the Prometheus text
format, through prometheus-client with a private registry (no global state).

Per-service series are bounded: the ``metrics_max_services`` busiest services are listed by
name and the others are summed under ``service="(other)"`` (the same for switch queues), so
thousands of services created by clients make neither a huge response nor a long stall."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from maitred.core.routing.model import LATENCY_BOUNDS, Service
from maitred.core.transport import BrokerPort

if TYPE_CHECKING:
    from maitred.transports.http.switch import Switch

_T = TypeVar("_T")


#: the label value under which the services (queues) not listed by name are summed
OTHER = "(other)"
#: services looked at between two yields to the event loop while a scrape is gathered
CHUNK = 1000


class _ServiceRow:
    """One ``service`` label's numbers: a service's own, or the sum of the unlisted ones."""

    __slots__ = (
        "counts",
        "error_codes",
        "errors",
        "free_workers",
        "inflight",
        "lat_count",
        "lat_sum",
        "name",
        "queued",
        "replies",
        "requests",
        "timeouts",
        "workers",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.workers = self.free_workers = self.queued = self.inflight = 0
        self.requests = self.replies = self.errors = self.timeouts = 0
        self.error_codes: dict[int, int] = {}
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.lat_sum = 0.0
        self.lat_count = 0

    def add(self, svc: Service) -> None:
        self.workers += len(svc.workers)
        self.free_workers += len(svc.free)
        self.queued += svc.queued + svc.backlog  # (and what waits in a shared store)
        if svc.workers:
            self.inflight += svc.inflight()
        self.requests += svc.requests
        self.replies += svc.replies
        self.errors += svc.errors
        self.timeouts += svc.timeouts
        if svc.error_codes:
            for code, n in svc.error_codes.items():
                self.error_codes[code] = self.error_codes.get(code, 0) + n
        hist = svc.latency
        if hist.count:
            self.counts = [a + b for a, b in zip(self.counts, hist.counts, strict=True)]
            self.lat_sum += hist.sum
            self.lat_count += hist.count


def _traffic(svc: Service) -> tuple[int, int]:
    return svc.requests, svc.queued


async def _busiest(items: list[_T], limit: int, key: Callable[[_T], Any]) -> list[_T]:
    """The ``limit`` items with the largest ``key``, looked at ``CHUNK`` at a time with a
    yield to the event loop in between."""
    top: list[_T] = []
    for i in range(0, len(items), CHUNK):
        if i:
            await asyncio.sleep(0)
        top = heapq.nlargest(limit, [*top, *items[i : i + CHUNK]], key=key)
    return top


async def gather_services(broker: BrokerPort, max_services: int) -> tuple[list[_ServiceRow], int]:
    """The rows of a scrape: the ``max_services`` busiest services (by requests accepted,
    then queued) by name, sorted, and one :data:`OTHER` row summing the rest (when there is
    a rest); and how many services that row sums. Gathered ``CHUNK`` services at a time."""
    services = broker.services()
    if len(services) <= max_services:
        listed, rest = services, []
    else:
        listed = await _busiest(services, max_services, _traffic)
        chosen = {id(s) for s in listed}
        rest = [s for s in services if id(s) not in chosen]
    rows = []
    for svc in sorted(listed, key=lambda s: s.name):
        row = _ServiceRow(svc.name)
        row.add(svc)
        rows.append(row)
    if rest:
        other = _ServiceRow(OTHER)
        for i in range(0, len(rest), CHUNK):
            await asyncio.sleep(0)
            for svc in rest[i : i + CHUNK]:
                other.add(svc)
        rows.append(other)
    return rows, len(rest)


#: the per-service gauges and counters of a scrape: (name, help); each is a
#: :class:`_ServiceRow` attribute of that name
_SERVICE_GAUGES = (
    ("workers", "Connected workers"),
    ("free_workers", "Workers with credit left"),
    ("queued", "Requests waiting for a worker"),
    ("inflight", "Requests being served"),
)
_SERVICE_COUNTERS = (
    ("requests", "Requests accepted"),
    ("replies", "Final replies delivered"),
    ("errors", "Requests that failed"),
    ("timeouts", "Requests that passed their deadline"),
)

_F = TypeVar("_F", GaugeMetricFamily, CounterMetricFamily)


def _families(
    kind: type[_F], prefix: str, label: str, table: Iterable[tuple[str, ...]]
) -> dict[str, _F]:
    """One family of ``kind`` per row of ``table`` (name, help, …), named ``PREFIX + name``,
    with the one label ``label``."""
    return {row[0]: kind(prefix + row[0], row[1], labels=[label]) for row in table}


def _counter(name: str, help_: str, label: str, items: Iterable[tuple[str, Any]]) -> Metric:
    """A counter family with one sample per (``label`` value, value) of ``items``."""
    family = CounterMetricFamily(name, help_, labels=[label])
    for key, value in items:
        family.add_metric([key], float(value))
    return family


#: the per-transport counters: (name, help), each a key of the broker's ``traffic`` rows
_TRANSPORT_COUNTERS = (
    ("requests", "Requests its sessions submitted"),
    ("replies", "Final replies its callers received"),
    ("errors", "Requests of its callers that failed"),
    ("served", "Requests handed to its workers"),
)


class _Collector:
    """What one scrape shows, copied from the broker on the event loop; :meth:`collect` reads
    only these copies, so the text can be rendered in another thread."""

    def __init__(
        self,
        broker: BrokerPort,
        rows: list[_ServiceRow],
        unlisted: int,
        queues: list[tuple[str, int]],
        switch: Switch | None,
        store: dict[str, Any] | None = None,
    ) -> None:
        snapshot = broker.snapshot()
        self.stats = sorted(snapshot["stats"].items())
        #: the one durable store's counters (the journal's snapshot, as in ``mmi.info``)
        self.store = sorted((store or {}).items())
        self.sessions: int = snapshot["sessions"]
        self.services: int = snapshot["services"]
        self.transports = list(snapshot["traffic"].items())
        self.rows = rows
        self.unlisted = unlisted
        self.queues = queues
        self.switch_sessions = None if switch is None else len(switch.tokens)
        #: on a cluster node: this node's and its peers' rows (``mmi.nodes``)
        self.nodes: list[dict[str, Any]] | None = snapshot.get("nodes")

    def collect(self) -> Iterator[Metric]:
        yield _counter(
            "maitred_router_events",
            "Router and transport counters (router.stats)",
            "event",
            self.stats,
        )
        yield GaugeMetricFamily("maitred_sessions", "Open router sessions", value=self.sessions)
        yield GaugeMetricFamily("maitred_services", "Known services", value=self.services)
        yield GaugeMetricFamily(
            "maitred_services_unlisted",
            f"Services summed under service={OTHER!r} (beyond metrics_max_services)",
            value=self.unlisted,
        )
        gauges = _families(GaugeMetricFamily, "maitred_service_", "service", _SERVICE_GAUGES)
        counters = _families(CounterMetricFamily, "maitred_service_", "service", _SERVICE_COUNTERS)
        for row in self.rows:
            for family in (gauges, counters):
                for key, metric in family.items():
                    metric.add_metric([row.name], getattr(row, key))
        yield from gauges.values()
        yield from counters.values()
        by_code = CounterMetricFamily(
            "maitred_service_errors_by_code",
            "Failed requests by service and maitred error code (docs/reference/errors.md)",
            labels=["service", "code"],
        )
        latency = HistogramMetricFamily(
            "maitred_service_latency_seconds",
            "Acceptance to final reply, per service",
            labels=["service"],
        )
        for row in self.rows:
            for code, n in sorted(row.error_codes.items()):
                by_code.add_metric([row.name, str(code)], float(n))
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip(LATENCY_BOUNDS, row.counts, strict=False):
                cumulative += n
                buckets.append((repr(bound), float(cumulative)))
            buckets.append(("+Inf", float(row.lat_count)))
            latency.add_metric([row.name], buckets, sum_value=row.lat_sum)
        yield by_code
        yield latency
        per_transport = _families(
            CounterMetricFamily, "maitred_transport_", "transport", _TRANSPORT_COUNTERS
        )
        for tname, tstats in self.transports:
            for key, value in tstats.items():
                per_transport[key].add_metric([tname], float(value))
        yield from per_transport.values()
        if self.store:
            yield _counter(
                "maitred_store",
                "The durable store: messages appended and dead-lettered, commits, failures, rows",
                "counter",
                self.store,
            )
        if self.nodes is not None:
            yield from _cluster_metrics(self.nodes)
        if self.switch_sessions is not None:
            depth = GaugeMetricFamily(
                "maitred_switch_queue_messages", "Messages in a switch queue", labels=["queue"]
            )
            for name, n in self.queues:
                depth.add_metric([name], n)
            yield depth
            yield GaugeMetricFamily(
                "maitred_switch_sessions", "Logged-in switch tokens", value=self.switch_sessions
            )


#: the per-peer gauges: (name, help, key of the peer's ``mmi.nodes`` row)
_PEER_GAUGES = (
    ("age_seconds", "Seconds since the peer's last announcement", "age"),
    ("load", "Requests in flight on the peer's workers plus those waiting there", "load"),
    ("services", "Services the peer announces (proxy workers here)", "services"),
    ("inflight", "This node's requests the peer holds now", "inflight"),
)


def _cluster_metrics(nodes: list[dict[str, Any]]) -> Iterator[Metric]:
    """This node and its live peers, as ``mmi.nodes`` lists them."""
    me = GaugeMetricFamily(
        "maitred_cluster_node_info", "This broker's node in the cluster", labels=["node", "epoch"]
    )
    peers = [row for row in nodes if not row.get("self")]
    for row in nodes:
        if row.get("self"):
            me.add_metric([str(row.get("node")), str(row.get("epoch"))], 1)
    yield me
    yield GaugeMetricFamily(
        "maitred_cluster_peers", "Other nodes this node takes for live", value=len(peers)
    )
    per_peer = _families(GaugeMetricFamily, "maitred_cluster_peer_", "peer", _PEER_GAUGES)
    for row in peers:
        peer = [str(row.get("node"))]
        for name, _, key in _PEER_GAUGES:
            per_peer[name].add_metric(peer, float(row.get(key) or 0))
    yield from per_peer.values()


async def _gather_queues(switch: Switch | None, max_queues: int) -> list[tuple[str, int]]:
    """(name, messages) of the ``max_queues`` deepest switch queues, sorted by name, and an
    :data:`OTHER` entry summing the rest."""
    if switch is None:
        return []
    depths = [(name, len(q.messages)) for name, q in switch.queues.items()]
    if len(depths) <= max_queues:
        return sorted(depths)
    top = await _busiest(depths, max_queues, lambda d: d[1])
    listed = {name for name, _ in top}
    return [*sorted(top), (OTHER, sum(n for name, n in depths if name not in listed))]


async def render_metrics(
    broker: BrokerPort,
    switch: Switch | None,
    max_services: int = 100,
    store: dict[str, Any] | None = None,
) -> tuple[bytes, str]:
    """(body, content type) of one scrape. At most ``max_services`` services (and switch
    queues) are listed by name, so the response stays small whatever the broker holds, and
    the state is gathered a chunk at a time and the text rendered in a worker thread, so a
    scrape never holds the event loop long."""
    rows, unlisted = await gather_services(broker, max_services)
    queues = await _gather_queues(switch, max_services)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(broker, rows, unlisted, queues, switch, store))
    body = await asyncio.to_thread(generate_latest, registry)
    return body, CONTENT_TYPE_LATEST
