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
``mmi.info``       ignored                          JSON object: version, uptime, transports, ...
any other          -                                ``501``
=================  ===============================  ===============================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec

from maitred.core.routing.model import Body, Service
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
        "queued": svc.queued,
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


class Management:
    """The ``mmi.*`` handler the router calls; ``info`` supplies runtime facts for mmi.info."""

    def __init__(self, info: InfoProvider | None = None, now: Callable[[], float] | None = None):
        self._info = info or (lambda: {})
        self._now = now

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
        rows = [_service_row(s) for _, s in sorted(router.services.items())]
        return _json.encode(rows)

    def _workers(self, router: Router, body: Body) -> bytes:
        wanted = _last(body)
        now = self._now() if self._now else None
        rows = []
        for worker in router.iter_workers():
            if wanted and worker.service.name != wanted:
                continue
            rows.append(
                {
                    "service": worker.service.name,
                    "worker": worker.label,
                    "transport": worker.session.transport,
                    "identity": worker.session.identity.name,
                    "credit": worker.credit,
                    "inflight": len(worker.inflight),
                    "served": worker.served,
                    "idle_for": None if now is None else round(now - worker.touched, 3),
                    "connected_for": None if now is None else round(now - worker.since, 3),
                }
            )
        return _json.encode(rows)

    def _queues(self, router: Router, body: Body) -> bytes:
        return _json.encode(
            {
                name: {"queued": svc.queued, "inflight": svc.inflight()}
                for name, svc in sorted(router.services.items())
            }
        )

    def _topics(self, router: Router, body: Body) -> bytes:
        return _json.encode(dict(sorted(router.topics.patterns().items())))

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
    "mmi.info": Management._info_,
}

#: the names answered (anything else under ``mmi.`` is 501)
MMI_SERVICES = tuple(_HANDLERS)
