"""Requests of the router: submit, queue, dispatch, reply, cancel, fail (and their traces)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from logging import DEBUG
from typing import Any, Literal

from maitred.core.access import ANONYMOUS, Action
from maitred.core.errors import Denied, ErrorCode, MaitredError
from maitred.core.routing.headers import client_headers
from maitred.core.routing.model import (
    NO_DEADLINE,
    BaseSink,
    Body,
    Headers,
    Journal,
    Request,
    Service,
    Session,
    Worker,
)
from maitred.core.routing.state import (
    _CANCELLED,
    _DISPATCHED,
    _DONE,
    _FINAL,
    _PARTIAL,
    _QUEUED,
    MMI_PREFIX,
    RouterState,
    log,
)
from maitred.core.routing.tracing import log_trace

#: the sink of the orphan session (stored requests whose caller is gone): drops all
_DROP = BaseSink()


class RequestsMixin(RouterState):
    """The life of a request, from ``submit`` to its reply or error."""

    def _refuse_new(
        self, session: Session, name: str, correlation: Any, now: float, error: MaitredError
    ) -> None:
        """Refuse a request before any service object exists for it."""
        request = self._new_request(session, name, (), correlation, now, state=_DONE)
        session.counters.requests += 1
        self._count_error(None, request, error)
        session.sink.deliver_error(request, error)

    # -- requests ---------------------------------------------------------------------------

    def submit(
        self,
        session: Session,
        service_name: str,
        body: Body,
        correlation: Any,
        now: float,
        *,
        timeout: float | None = None,
        headers: Headers | None = None,
        on_no_worker: Literal["wait", "fail"] | None = None,
        stamp: Iterable[tuple[str, str]] = (),
    ) -> Request | None:
        """Accept a request from ``session``. Replies and errors come back through its sink
        (an error may come back before this returns); returns the request, or None when it was
        refused at once. ``timeout`` and ``on_no_worker`` override the service's policy for
        this request (e.g. a protocol whose clients expect "no responder" at once).
        ``headers`` are the caller's (broker-owned names dropped, see :meth:`publish`),
        ``stamp`` the transport's own values.

        ``timeout`` is the caller's wish: None, 0, a negative number or NaN mean the service's
        ``request_timeout``; a larger one than the service's ``max_request_timeout`` is cut to
        it. Only ``math.inf`` (never a value read from a client) means no deadline at all, for
        a transport's own queues whose entries live as long as it keeps them."""
        if session.closed:
            raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
        if headers is not None or stamp:
            headers = client_headers(headers, stamp)
        self._next_request += 1
        if service_name.startswith(MMI_PREFIX):
            return self._submit_mmi(
                self._new_request(
                    session, service_name, body, correlation, now, headers, state=_DONE
                )
            )
        service = self.services.get(service_name)
        if service is None:
            if self.name_too_long(service_name):
                self.stats["requests.name_too_long"] += 1
                error = MaitredError(
                    f"service name longer than {self.max_name_length} bytes",
                    ErrorCode.BAD_REQUEST,
                )
                self._refuse_new(session, service_name[:64], correlation, now, error)
                return None
            if len(self.services) >= self.max_services:
                self.stats["requests.too_many_services"] += 1
                error = MaitredError(
                    f"too many services (at most {self.max_services})", ErrorCode.QUEUE_FULL
                )
                self._refuse_new(session, service_name, correlation, now, error)
                return None
            service = self.services[service_name] = Service(
                service_name, self._policy_for(service_name)
            )
        policy = service.policy
        if timeout is None or not timeout > 0:
            timeout = policy.request_timeout
        elif timeout != NO_DEADLINE and policy.max_request_timeout:
            timeout = min(timeout, policy.max_request_timeout)
        deadline = now + timeout if 0 < timeout < NO_DEADLINE else NO_DEADLINE
        request = self._new_request(
            session, service_name, body, correlation, now, headers, deadline
        )
        service.requests += 1
        session.counters.requests += 1
        if self.tracers or log.isEnabledFor(DEBUG):
            self._trace("accepted", request, session.label, now)
        if (not self._access_open or session.identity.restricted) and not self.allowed(
            session, Action.CALL, service_name
        ):
            self._refuse(
                service, request, Denied(f"{session.identity.name} may not call {service_name}")
            )
            return None
        if self.draining:
            self._refuse(
                service, request, MaitredError("broker is shutting down", ErrorCode.SHUTTING_DOWN)
            )
            return None
        if self.overloaded:
            self._overloaded(service, request)
            return None
        journal = self.journal if policy.on_no_worker == "store" else None
        if journal is not None and (refused := journal.refusal(self._size(request))) is not None:
            self.stats["requests.store_refused"] += 1
            self._refuse(service, request, refused)
            return None
        free = service.free
        if free and not service.queued and (journal is None or not journal.pulls):
            worker: Worker | None = next(iter(free))
            if worker is not None and worker.remote:
                worker = self._pick(service, request)
            if worker is not None:
                if journal is not None:
                    journal.append(request)
                if request.deadline != NO_DEADLINE:
                    self._deadlines.arm(request)
                self._assign(worker, request, now)
                return request
        if journal is not None:
            return self._store(service, request, journal, now)
        if not service.workers and (on_no_worker or policy.on_no_worker) == "fail":
            self._unhandled(request, "no worker")
            self._refuse(
                service, request, MaitredError(f"no worker for {service_name}", ErrorCode.NO_WORKER)
            )
            return None
        # only a request that waits is held: its bytes are counted from here on
        size = request.size = len(service_name) + (
            len(body[0]) if len(body) == 1 else sum(map(len, body))
        )
        if self.held + size > self._cap:
            self._overloaded(service, request)
            return None
        # ``_no_room``, inline: once per waiting request
        if (
            service.queued >= policy.max_queue
            or service.queued_bytes + size > policy.max_queue_bytes
        ):
            if (
                policy.overflow == "reject"
                or policy.max_queue == 0
                or size > policy.max_queue_bytes
            ):
                self._queue_full(service, request)
                return None
            while self._no_room(service, size):
                oldest = self._pop_queued(service)
                if oldest is None:
                    break
                self.stats["requests.dropped_oldest"] += 1
                self._fail(oldest, MaitredError("dropped: queue full", ErrorCode.QUEUE_FULL))
        if request.deadline != NO_DEADLINE:
            self._deadlines.arm(request)
        return self._enqueue(service, request, now)

    def _overloaded(self, service: Service, request: Request) -> None:
        """Refuse ``request`` with 503: the broker holds ``max_memory`` bytes (or would)."""
        self.stats["requests.overload"] += 1
        if not self.overloaded:
            self._overload()
        reason = f"broker overloaded: {self.held} bytes held (max_memory {self.max_memory})"
        self._refuse(service, request, MaitredError(reason, ErrorCode.NO_WORKER))

    @staticmethod
    def _size(request: Request) -> int:
        """The bytes ``request`` holds while it waits (computed once)."""
        size = request.size
        if not size:
            size = request.size = len(request.service) + sum(map(len, request.body))
        return size

    def _queue_full(self, service: Service, request: Request) -> None:
        self.stats["requests.queue_full"] += 1
        policy = service.policy
        if service.queued >= policy.max_queue:
            reason = f"queue is full ({service.queued} requests, max_queue {policy.max_queue})"
        else:
            reason = (
                f"queue is full ({service.queued_bytes} + {request.size} bytes > "
                f"max_queue_bytes {policy.max_queue_bytes})"
            )
        self._refuse(service, request, MaitredError(reason, ErrorCode.QUEUE_FULL))

    def _enqueue(self, service: Service, request: Request, now: float) -> Request:
        """Put ``request`` at the back of ``service``'s queue (counted in requests and bytes
        there and among its caller's waiting requests), then dispatch."""
        service.queue.append(request)
        service.queued += 1
        size = request.size
        service.queued_bytes += size
        self.held += size  # (``_queued``, inline: once per waiting request)
        if self.held > self._cap and not self.overloaded:
            self._overload()
        request.caller.queued[request.id] = request
        if service.free:  # none when it waits for a busy worker (strict MDP, mostly)
            self._dispatch(service, now)
        return request

    @staticmethod
    def _no_room(service: Service, size: int) -> bool:
        """True when one more waiting request of ``size`` bytes would pass ``service``'s
        ``max_queue`` or ``max_queue_bytes``."""
        policy = service.policy
        return (
            service.queued >= policy.max_queue
            or service.queued_bytes + size > policy.max_queue_bytes
        )

    def _store(
        self, service: Service, request: Request, journal: Journal, now: float
    ) -> Request | None:
        """Queue a request of a ``store`` service: kept in the journal until a worker answers
        it; never dropped for room (a full queue refuses the new request instead)."""
        size = self._size(request)
        if self.held + size > self._cap:
            self._overloaded(service, request)
            return None
        if self._no_room(service, size):
            self._queue_full(service, request)
            return None
        journal.append(request)
        if request.deadline != NO_DEADLINE:
            self._deadlines.arm(request)
        if journal.pulls:  # it waits in the shared store until this node pulls it
            return request
        return self._enqueue(service, request, now)

    def _orphan_session(self, now: float = 0.0) -> Session:
        """The session of stored requests whose caller is gone: it drops what it is sent."""
        session = self._orphans
        if session is None or session.closed:
            session = self._orphans = self.open_session(
                "store", _DROP, ANONYMOUS, now, label="store:orphans", quiet=True
            )
        return session

    def _detach(self, request: Request) -> None:
        """A stored request outlives its caller's wait: hand it to the orphan session, so it
        stays queued or with its worker and what comes for it is dropped."""
        self._disarm(request)
        request.deadline = NO_DEADLINE
        request.caller.queued.pop(request.id, None)
        request.caller = self._orphan_session()

    def _refuse(self, service: Service, request: Request, error: MaitredError) -> None:
        request.state = _DONE
        service.errors += 1
        self._count_error(service, request, error)
        self._maybe_forget(service)
        request.caller.sink.deliver_error(request, error)

    def _pop_queued(self, service: Service) -> Request | None:
        queue = service.queue
        while queue:
            request = queue.popleft()
            if request.state is _QUEUED:
                self._unqueued(service, request)
                request.caller.queued.pop(request.id, None)
                return request
        return None

    @staticmethod
    def _pick(service: Service, request: Request) -> Worker | None:
        """The worker for ``request`` among the free ones: local first (least recently used),
        else the remote one (a cluster node) with the most free credit; None when only remote
        workers are free and the request may not leave this node."""
        best: Worker | None = None
        room = 0
        for worker in service.free:
            if not worker.remote:
                return worker
            left = worker.credit - len(worker.inflight)
            if left > room:
                best, room = worker, left
        return None if request.caller.local_only else best

    def _dispatch(self, service: Service, now: float) -> None:
        free = service.free
        queue = service.queue
        while free and service.queued:
            request = queue[0]
            if request.state is not _QUEUED:
                queue.popleft()
                continue
            worker = next(iter(free))
            if worker.remote:
                found = self._pick(service, request)
                if found is None:
                    break  # only remote workers are free: it waits for a local one, in order
                worker = found
            queue.popleft()
            self._unqueued(service, request)
            caller = request.caller
            caller.queued.pop(request.id, None)
            if caller.closed:
                if request.stored < 0:
                    request.state = _CANCELLED
                    self._disarm(request)
                    continue
                self._detach(request)
            self._assign(worker, request, now)
        if not service.queued and queue:
            queue.clear()

    def _assign(self, worker: Worker, request: Request, now: float) -> None:
        inflight = worker.inflight
        was_idle = not inflight
        inflight[request.id] = request
        request.worker = worker
        request.state = _DISPATCHED
        request.deliveries += 1
        request.dispatched = now
        free = worker.service.free
        if len(inflight) >= worker.credit:
            del free[worker]
        else:
            free.move_to_end(worker)
        if was_idle:
            worker.progress = now
            if not worker.idle_timeout:
                # the transport watches this worker while idle; busy, busy_timeout bounds it
                worker.touched = now
                self._live_move(worker, worker.busy_timeout)
        worker.session.counters.served += 1
        if self.tracers or log.isEnabledFor(DEBUG):
            self._trace("dispatched", request, worker.label, now)
        worker.session.sink.deliver_request(worker, request)

    def reply(
        self,
        worker: Worker,
        token: int,
        body: Body,
        now: float,
        final: bool = True,
        headers: Headers | None = None,
        *,
        stamp: Iterable[tuple[str, str]] = (),
    ) -> bool:
        """A reply from ``worker`` to the request whose id is ``token`` (``headers``, if any,
        reach the caller's sink with this reply, broker-owned names dropped and ``stamp``
        added, as for :meth:`publish`). False (and counted) when the worker
        holds no such request."""
        request = worker.inflight.get(token)
        if request is None:
            self.stats["replies.unknown"] += 1
            return False
        if headers is not None:
            headers = client_headers(headers, stamp)
        worker.touched = now
        if worker.suspect:  # it speaks again: back in dispatch (below for a final reply)
            self._revive(worker, now, dispatch=not final)
        if final:
            del worker.inflight[token]
            worker.served += 1
            worker.progress = now
            if request.stored >= 0 and self.journal is not None:
                self.journal.done(request)
            service = worker.service
            free = service.free
            if worker.max_credit:
                if now - request.dispatched < worker.pipeline_below:
                    if (service.queued or service.backlog) and worker.credit < worker.max_credit:
                        worker.credit += 1
                        if worker.idle_timeout > 0:  # watched for the moment it stops answering
                            self._lists.pipelined[worker] = None
                elif worker.credit > worker.base_credit:
                    self._unpipeline(worker)
            if worker.alive:
                if len(worker.inflight) < worker.credit:
                    if worker not in free:
                        free[worker] = None
                else:  # its credit was just lowered below what it holds
                    free.pop(worker, None)
            if not worker.inflight:
                self._lists.move(worker, worker.idle_timeout)  # (``_live_move``)
            elif worker.alive:  # ``touch`` (touched is set, a suspect revived above)
                live = self._lists.live.get(worker.live_key)
                if live is not None:
                    live.move_to_end(worker)
            state = request.state
            request.state = _DONE
            # hand the worker its next request before answering the caller: on a busy service
            # the worker's round trip is the critical path, the caller's reply is not
            if service.queued:
                self._dispatch(service, now)
            if state is _DISPATCHED:
                service.replies += 1
                service.latency.observe(now - request.accepted)
                caller = request.caller
                caller.counters.replies += 1
                if self.tracers or log.isEnabledFor(DEBUG):
                    self._trace("replied", request, worker.label, now)
                if request.bucket is not None:
                    del request.bucket[request.id]
                    request.bucket = None
                if not caller.closed:
                    caller.sink.deliver_reply(request, _FINAL, body, headers)
            return True
        self.touch(worker, now)
        if request.state is _DISPATCHED and not request.caller.closed:
            request.caller.sink.deliver_reply(request, _PARTIAL, body, headers)
        return True

    def reply_error(self, worker: Worker, token: int, error: MaitredError, now: float) -> bool:
        """The worker answers ``token`` with an error (for protocols that have error replies)."""
        request = worker.inflight.get(token)
        if request is None:
            self.stats["replies.unknown"] += 1
            return False
        if request.state is _DISPATCHED:
            request.state = _DONE  # so reply() below delivers nothing
            self._disarm(request)
            worker.service.errors += 1
            self._count_error(worker.service, request, error)
            if not request.caller.closed:
                request.caller.sink.deliver_error(request, error)
        return self.reply(worker, token, (), now, final=True)

    def held_by_worker(self, request: Request) -> Worker | None:
        """The worker that still holds ``request`` (its reply token is open), else None."""
        worker = request.worker
        if worker is not None and worker.alive and request.id in worker.inflight:
            return worker
        return None

    def can_accept(self, service_name: str) -> bool:
        """Whether a request to ``service_name`` would be taken now (a free worker, or room in
        its queue) rather than refused as QUEUE_FULL."""
        if self.overloaded:
            return False
        service = self.services.get(service_name)
        if service is None:
            return len(self.services) < self.max_services
        policy = service.policy
        return bool(service.free) or (
            service.queued < policy.max_queue and service.queued_bytes < policy.max_queue_bytes
        )

    def cancel(self, request: Request, now: float) -> None:
        """The caller gave up on ``request``: nothing more is delivered for it. A worker serving
        it keeps its credit until it answers. A stored request stays queued or with its worker
        (it is only detached from the caller)."""
        if request.stored >= 0 and request.state in (_QUEUED, _DISPATCHED):
            self._detach(request)
            return
        if request.state is _QUEUED:
            request.state = _CANCELLED
            request.caller.queued.pop(request.id, None)
            service = self.services.get(request.service)
            if service is not None:
                self._unqueued(service, request)
                self._maybe_forget(service)
        elif request.state is _DISPATCHED:
            request.state = _CANCELLED
            for watcher in list(self._cancel_watchers):
                watcher(request, now)
        else:
            self._disarm(request)
            return
        self._disarm(request)
        if self.tracers:
            self._trace("cancelled", request, "", now)

    def watch_cancels(self, watcher: Callable[[Request, float], None]) -> Callable[[], None]:
        """Call ``watcher(request, now)`` when a caller cancels a request a worker holds (a
        cluster's proxy tells the serving node). The result stops it (twice is harmless)."""
        self._cancel_watchers.append(watcher)

        def stop() -> None:
            if watcher in self._cancel_watchers:
                self._cancel_watchers.remove(watcher)

        return stop

    def _fail(self, request: Request, error: MaitredError) -> None:
        request.state = _DONE
        self._disarm(request)
        service = self.services.get(request.service)
        if service is not None:
            service.errors += 1
        self._count_error(service, request, error)
        if not request.caller.closed:
            request.caller.sink.deliver_error(request, error)

    def _fail_queue(self, service: Service, code: ErrorCode, reason: str) -> None:
        while service.queued:
            request = self._pop_queued(service)
            if request is None:
                break
            self._unhandled(request, reason)
            self._fail(request, MaitredError(reason, code))
        service.queue.clear()

    def _count_error(self, service: Service | None, request: Request, error: MaitredError) -> None:
        """Count a failed request by code (service and caller's transport), trace and log it."""
        code = int(error.code)
        if service is not None:
            service.error_codes[code] += 1
        request.caller.counters.errors += 1
        if self.tracers or log.isEnabledFor(DEBUG):
            self._trace("failed", request, f"{code} {error}", math.nan)

    def _trace(self, event: str, request: Request, detail: str, now: float) -> None:
        """Hand a step of ``request`` to every tracer, and to the debug log when it is on."""
        for tracer in self.tracers:
            try:
                tracer(event, request, detail, now)
            except Exception:  # a tracer must never break routing
                log.exception("tracer %r failed", tracer)
        if log.isEnabledFor(DEBUG):
            log_trace(event, request, detail, now)

    def _unhandled(self, request: Request, reason: str) -> None:
        self.stats["requests.unhandled"] += 1
        self._emit(
            "$sys.message.unhandled",
            {"service": request.service, "reason": reason, "caller": request.caller.label},
        )
