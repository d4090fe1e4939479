"""``GET /metrics``: the router's counters and per-service gauges in the Prometheus text
format, through prometheus-client with a private registry (no global state)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from maitred.core.routing.model import LATENCY_BOUNDS
from maitred.core.routing.router import Router

if TYPE_CHECKING:
    from maitred.transports.http.switch import Switch

_BAD = re.compile(r"[^a-zA-Z0-9_]")


class _Collector:
    def __init__(self, router: Router, switch: Switch | None) -> None:
        self.router = router
        self.switch = switch

    def collect(self) -> Iterator[Metric]:
        router = self.router
        events = CounterMetricFamily(
            "maitred_router_events",
            "Router and transport counters (router.stats)",
            labels=["event"],
        )
        for key, value in sorted(router.stats.items()):
            events.add_metric([key], float(value))
        yield events
        yield GaugeMetricFamily(
            "maitred_sessions", "Open router sessions", value=len(router.sessions)
        )
        yield GaugeMetricFamily("maitred_services", "Known services", value=len(router.services))
        gauges = {
            name: GaugeMetricFamily(f"maitred_service_{name}", help_, labels=["service"])
            for name, help_ in (
                ("workers", "Connected workers"),
                ("free_workers", "Workers with credit left"),
                ("queued", "Requests waiting for a worker"),
                ("inflight", "Requests being served"),
            )
        }
        counters = {
            name: CounterMetricFamily(f"maitred_service_{name}", help_, labels=["service"])
            for name, help_ in (
                ("requests", "Requests accepted"),
                ("replies", "Final replies delivered"),
                ("errors", "Requests that failed"),
                ("timeouts", "Requests that passed their deadline"),
            )
        }
        for name, svc in sorted(router.services.items()):
            gauges["workers"].add_metric([name], len(svc.workers))
            gauges["free_workers"].add_metric([name], len(svc.free))
            gauges["queued"].add_metric([name], svc.queued)
            gauges["inflight"].add_metric([name], svc.inflight())
            counters["requests"].add_metric([name], svc.requests)
            counters["replies"].add_metric([name], svc.replies)
            counters["errors"].add_metric([name], svc.errors)
            counters["timeouts"].add_metric([name], svc.timeouts)
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
        for name, svc in sorted(router.services.items()):
            for code, n in sorted(svc.error_codes.items()):
                by_code.add_metric([name, str(code)], float(n))
            hist = svc.latency
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip(LATENCY_BOUNDS, hist.counts, strict=False):
                cumulative += n
                buckets.append((repr(bound), float(cumulative)))
            buckets.append(("+Inf", float(hist.count)))
            latency.add_metric([name], buckets, sum_value=hist.sum)
        yield by_code
        yield latency
        per_transport = {
            name: CounterMetricFamily(f"maitred_transport_{name}", help_, labels=["transport"])
            for name, help_ in (
                ("requests", "Requests its sessions submitted"),
                ("replies", "Final replies its callers received"),
                ("errors", "Requests of its callers that failed"),
                ("served", "Requests handed to its workers"),
            )
        }
        for tname, tstats in sorted(router.transports.items()):
            for key, value in tstats.as_dict().items():
                per_transport[key].add_metric([tname], float(value))
        yield from per_transport.values()
        if self.switch is not None:
            depth = GaugeMetricFamily(
                "maitred_switch_queue_messages", "Messages in a switch queue", labels=["queue"]
            )
            for name, q in sorted(self.switch.queues.items()):
                depth.add_metric([name], len(q.messages))
            yield depth
            yield GaugeMetricFamily(
                "maitred_switch_sessions", "Logged-in switch tokens", value=len(self.switch.tokens)
            )


def render_metrics(router: Router, switch: Switch | None) -> tuple[bytes, str]:
    """(body, content type) of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(router, switch))
    return generate_latest(registry), CONTENT_TYPE_LATEST
