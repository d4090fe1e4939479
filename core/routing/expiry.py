"""Deadlines of the router: requests armed in the timing wheel, expired by ``tick``."""

from __future__ import annotations

from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import Request
from maitred.core.routing.state import _DISPATCHED, _EXPIRED, _QUEUED, RouterState, log
from maitred.core.routing.wheel import DeadlineWheel


class ExpiryMixin(RouterState):
    """Request deadlines (see :class:`~maitred.core.routing.wheel.DeadlineWheel`)."""

    # -- deadlines ----------------------------------------------------------------------------

    def _arm(self, request: Request) -> None:
        self._deadlines.arm(request)

    #: take a request out of the wheel (answered, cancelled or gone)
    _disarm = staticmethod(DeadlineWheel.disarm)

    def _tick_deadlines(self, now: float) -> None:
        """Expire every request whose deadline has come at ``now``."""
        wheel = self._deadlines
        while (bucket := wheel.pop_due(now)) is not None:
            for request in list(bucket.values()):
                request.bucket = None
                self._expire(request, now)

    def _expire(self, request: Request, now: float) -> None:
        service = self.services.get(request.service)
        if request.stored >= 0 and request.state in (_QUEUED, _DISPATCHED):
            # the caller's wait ends; the request stays in the store until a worker answers it
            if service is not None:
                service.timeouts += 1
            self.stats["requests.expired_stored"] += 1
            where = "waits for a worker" if request.state is _QUEUED else "is with its worker"
            error = MaitredError(
                f"no answer from {request.service} before the deadline; the request is "
                f"stored and {where}",
                ErrorCode.TIMEOUT,
            )
            self._count_error(service, request, error)
            self._tell_error(request, error)
            self._detach(request)
            return
        if request.state is _QUEUED:
            request.state = _EXPIRED
            request.caller.queued.pop(request.id, None)
            if service is not None:
                self._unqueued(service, request)
                service.timeouts += 1
            self.stats["requests.expired_queued"] += 1
            self._unhandled(request, "deadline passed while waiting for a worker")
            error = MaitredError(
                f"no worker answered {request.service} before the deadline", ErrorCode.TIMEOUT
            )
            self._count_error(service, request, error)
            if service is not None:
                self._maybe_forget(service)
            self._tell_error(request, error)
        elif request.state is _DISPATCHED:
            # stays in the worker's inflight until it answers, so its credit stays taken
            request.state = _EXPIRED
            if service is not None:
                service.timeouts += 1
            self.stats["requests.expired_inflight"] += 1
            error = MaitredError(
                f"{request.service} did not answer before the deadline", ErrorCode.TIMEOUT
            )
            self._count_error(service, request, error)
            self._tell_error(request, error)

    def _tell_error(self, request: Request, error: MaitredError) -> None:
        """Deliver an error from the timer path, where one failing sink must not stop the
        expiry of everything else due (the router's state is already updated)."""
        if request.caller.closed:
            return
        try:
            request.caller.sink.deliver_error(request, error)
        except Exception:
            log.exception("deliver_error failed for %s", request.caller.label)
