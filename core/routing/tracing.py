"""The router's debug log, as a tracer: one DEBUG line per step of every request.

The router calls :func:`log_trace` like the tracers of ``Router.tracers`` (same arguments, see
:data:`~maitred.core.routing.state.Tracer`), whenever its logger (``maitred.core.router``) is
enabled for DEBUG. Each line carries ``req``, ``service``, ``transport`` and ``worker`` or
``code`` as log record extras (the JSON log format shows them).
"""

from __future__ import annotations

from maitred.core.routing.model import Request
from maitred.core.routing.state import log


def log_trace(event: str, request: Request, detail: str, now: float) -> None:
    """Log one step of ``request`` at DEBUG: ``accepted`` (detail: the caller's label),
    ``dispatched`` and ``replied`` (the worker's label), ``failed`` (the code and reason)."""
    if event == "accepted":
        log.debug(
            "req %d: %s called %s",
            request.id,
            detail,
            request.service,
            extra={
                "req": request.id,
                "service": request.service,
                "transport": request.caller.transport,
            },
        )
    elif event == "dispatched":
        worker = request.worker
        log.debug(
            "req %d: %s -> worker %s (delivery %d)",
            request.id,
            request.service,
            detail,
            request.deliveries,
            extra={
                "req": request.id,
                "service": request.service,
                "transport": worker.session.transport if worker else "",
                "worker": detail,
            },
        )
    elif event == "replied":
        log.debug(
            "req %d: %s answered by %s in %.1f ms",
            request.id,
            request.service,
            detail,
            (now - request.accepted) * 1000.0,
            extra={
                "req": request.id,
                "service": request.service,
                "transport": request.caller.transport,
                "worker": detail,
            },
        )
    elif event == "failed":
        code, _, _reason = detail.partition(" ")
        log.debug(
            "req %d: %s failed: %s",
            request.id,
            request.service,
            detail,
            extra={
                "req": request.id,
                "service": request.service,
                "transport": request.caller.transport,
                "code": int(code) if code.isdigit() else 0,
            },
        )
