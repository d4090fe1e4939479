"""Workers of the router: services, their workers, credit and liveness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Unpack

from maitred.core.access import Action
from maitred.core.errors import Denied, ErrorCode, MaitredError
from maitred.core.routing.model import (
    Request,
    Service,
    ServicePolicy,
    Session,
    Worker,
    WorkerOptions,
)
from maitred.core.routing.state import (
    _CANCELLED,
    _DISPATCHED,
    _QUEUED,
    MMI_PREFIX,
    RouterState,
    log,
)


class WorkersMixin(RouterState):
    """Services and their workers, and their liveness (see
    :class:`~maitred.core.routing.liveness.LivenessLists`)."""

    # -- services and workers -----------------------------------------------------------------

    def service(self, name: str) -> Service:
        """The service called ``name``, created with its configured policy on first use."""
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = Service(name, self._policy_for(name))
        return service

    def policy_for(self, name: str) -> ServicePolicy:
        """The configured policy of ``name``, whether or not the service exists now."""
        return self._policy_for(name)

    def set_policies(self, policy_for: Callable[[str], ServicePolicy]) -> None:
        """Replace the service policies (e.g. on reload): services that exist take theirs at
        once, services to come take theirs when they are first used."""
        self._policy_for = policy_for
        for name, service in self.services.items():
            service.policy = policy_for(name)

    def add_worker(
        self, session: Session, service_name: str, now: float, **options: Unpack[WorkerOptions]
    ) -> Worker:
        """Make ``session`` a worker of ``service_name`` with ``credit`` requests at a time
        (the options and their defaults: :class:`~maitred.core.routing.model.WorkerOptions`).

        Adaptive credit (``max_credit`` > ``credit``): fast services get pipelining, slow ones
        keep one request per worker (no request waits long behind another). Raises
        :class:`~maitred.core.errors.Denied` or a ``BAD_REQUEST`` error (a ``TypeError`` for an
        option it does not know, as for any unknown keyword argument).
        """
        if not options.keys() <= WorkerOptions.__optional_keys__:
            unknown = sorted(options.keys() - WorkerOptions.__optional_keys__)
            raise TypeError(f"add_worker() got an unexpected keyword argument {unknown[0]!r}")
        credit = options.get("credit", 1)
        max_credit = options.get("max_credit", 0)
        remote = options.get("remote", False)
        idle_timeout = options.get("idle_timeout")
        busy_timeout = options.get("busy_timeout")
        if session.closed:
            raise MaitredError("session is closed", ErrorCode.BAD_REQUEST)
        if self.draining:
            raise MaitredError("broker is shutting down", ErrorCode.SHUTTING_DOWN)
        if not service_name or service_name.startswith(MMI_PREFIX):
            raise MaitredError(f"cannot serve {service_name!r}", ErrorCode.BAD_REQUEST)
        if credit < 1:
            raise MaitredError("credit must be >= 1", ErrorCode.BAD_REQUEST)
        if max_credit and max_credit < credit:
            raise MaitredError("max_credit must be >= credit", ErrorCode.BAD_REQUEST)
        if self.name_too_long(service_name):
            raise MaitredError(
                f"service name longer than {self.max_name_length} bytes", ErrorCode.BAD_REQUEST
            )
        if not self.allowed(session, Action.SERVE, service_name):
            raise Denied(f"{session.identity.name} may not serve {service_name}")
        if service_name not in self.services and len(self.services) >= self.max_services:
            self.stats["workers.too_many_services"] += 1
            raise MaitredError(
                f"too many services (at most {self.max_services})", ErrorCode.QUEUE_FULL
            )
        service = self.service(service_name)
        self._next_worker += 1
        worker = Worker(
            self._next_worker,
            session,
            service,
            credit,
            options.get("tag"),
            options.get("label", ""),
            now,
            self.liveness.idle_timeout if idle_timeout is None else idle_timeout,
            self.liveness.busy_timeout if busy_timeout is None else busy_timeout,
            options.get("address", ""),
        )
        if max_credit > credit:
            worker.max_credit = max_credit
            worker.pipeline_below = options.get("pipeline_below", 0.002)
        worker.remote = remote
        first = not service.workers
        service.workers[worker] = None
        service.free[worker] = None
        session.workers[worker] = None
        self._lists.put(worker, worker.idle_timeout)
        if first:
            self._emit("$sys.service.online", {"service": service_name})
        if not remote:
            self._emit(
                "$sys.worker.ready",
                {
                    "service": service_name,
                    "worker": worker.label,
                    "transport": session.transport,
                    "identity": session.identity.name,
                },
            )
        self._dispatch(service, now)
        return worker

    def set_credit(self, worker: Worker, credit: int, now: float) -> None:
        """Change how many requests ``worker`` may hold at once (at least 1): a cluster
        fabric's proxy follows the free credit its node announces. Lowered below what it holds,
        it keeps them and gets no new one until it is back under."""
        if not worker.alive:
            return
        credit = max(1, credit)
        worker.credit = worker.base_credit = credit
        free = worker.service.free
        if len(worker.inflight) >= credit or worker.suspect:
            free.pop(worker, None)
        elif worker not in free:
            free[worker] = None
            self._dispatch(worker.service, now)

    def remove_worker(self, worker: Worker, now: float, reason: str = "disconnect") -> None:
        """The peer said it leaves (e.g. MDP DISCONNECT). Its requests are redelivered or failed."""
        self._drop_worker(worker, now, reason, notify=False)

    def touch(self, worker: Worker, now: float) -> None:
        """The worker showed a sign of life (a heartbeat, any command)."""
        if worker.alive:
            worker.touched = now
            if worker.suspect:
                self._revive(worker, now, dispatch=True)
                return
            self._lists.seen(worker)

    def _suspect(self, worker: Worker, now: float) -> None:
        """A busy worker fell silent for its liveness window: no new request goes to it and its
        pipelined credit falls back, until it speaks again or ``busy_timeout`` drops it."""
        worker.suspect = True
        worker.service.free.pop(worker, None)
        self._unpipeline(worker)
        self._lists.add_suspect(worker)
        self.stats["workers.suspected"] += 1
        log.info(
            "worker %s of %s silent for %.1fs while holding %d request(s): no new requests",
            worker.label,
            worker.service.name,
            now - worker.touched,
            len(worker.inflight),
        )

    def _revive(self, worker: Worker, now: float, *, dispatch: bool) -> None:
        """A suspect worker spoke again: back in its liveness list and in dispatch."""
        worker.suspect = False
        self._lists.drop_suspect(worker)
        self._lists.put(worker, worker.idle_timeout)
        self.stats["workers.revived"] += 1
        if dispatch and len(worker.inflight) < worker.credit:
            worker.service.free[worker] = None
            self._dispatch(worker.service, now)

    def _unpipeline(self, worker: Worker) -> None:
        """Set an adaptive worker's credit back to its base credit."""
        if worker.credit > worker.base_credit:
            worker.credit = worker.base_credit
            if len(worker.inflight) >= worker.credit:
                worker.service.free.pop(worker, None)
        self._lists.pipelined.pop(worker, None)

    def _live_move(self, worker: Worker, timeout: float) -> None:
        self._lists.move(worker, timeout)

    def _drop_worker(self, worker: Worker, now: float, reason: str, notify: bool) -> None:
        if not worker.alive:
            return
        worker.alive = False
        service = worker.service
        self._lists.unwatch(worker)
        if worker.suspect:
            self._lists.drop_suspect(worker)
        self._unpipeline(worker)
        del service.workers[worker]
        service.free.pop(worker, None)
        worker.session.workers.pop(worker, None)
        requeue: list[Request] = []
        # a worker works on at most its base credit of requests at once, oldest first: those
        # it was sent beyond them (pipelined) were never started, so they go to another
        # worker whatever the redeliver policy says, and the delivery does not count
        started = worker.base_credit
        for request in worker.inflight.values():
            if request.state is not _DISPATCHED:
                started -= 1
                continue  # expired or cancelled while in flight: already answered
            request.worker = None
            journal = self.journal if request.stored >= 0 else None
            started -= 1
            if started < 0:
                request.deliveries -= 1
                if request.caller.closed and journal is None:
                    request.state = _CANCELLED
                    self._disarm(request)
                    continue
                request.state = _QUEUED
                requeue.append(request)
                self.stats["requests.handed_back"] += 1
                if journal is not None:
                    journal.redelivered(request)
            elif (journal is not None or service.policy.redeliver) and (
                request.deliveries < service.policy.max_deliveries
            ):
                request.state = _QUEUED
                requeue.append(request)
                self.stats["requests.redelivered"] += 1
                if journal is not None:
                    journal.redelivered(request)
            else:
                if journal is not None:
                    self.stats["requests.dead_lettered"] += 1
                    journal.dead(
                        request,
                        f"handed to {request.deliveries} workers, none answered ({reason})",
                    )
                self._fail(request, MaitredError(f"worker died ({reason})", ErrorCode.WORKER_DIED))
        worker.inflight.clear()
        if requeue:
            service.queue.extendleft(reversed(requeue))
            service.queued += len(requeue)
            self._queued(service, sum(map(self._size, requeue)))
            for request in requeue:
                if not request.caller.closed:
                    request.caller.queued[request.id] = request
        if notify:
            try:
                worker.session.sink.worker_removed(worker, reason)
            except Exception:  # a transport bug must not corrupt the router's state
                log.exception("worker_removed failed for %s", worker.label)
        if not worker.remote:
            self._emit(
                "$sys.worker.expired" if reason == "expired" else "$sys.worker.gone",
                {"service": service.name, "worker": worker.label, "reason": reason},
            )
        if not service.workers:
            self._emit("$sys.service.offline", {"service": service.name})
            if service.queued and service.policy.on_no_worker == "fail":
                self._fail_queue(service, ErrorCode.NO_WORKER, "no worker left for the service")
        self._dispatch(service, now)
        self._maybe_forget(service)

    def _maybe_forget(self, service: Service) -> None:
        if not service.workers and not service.queued and not service.backlog:
            service.queue.clear()
            if self.services.get(service.name) is service:
                del self.services[service.name]

    def _tick_workers(self, now: float) -> None:
        """Deal with the workers that fell silent by ``now`` (see :meth:`Router.tick`)."""
        lists = self._lists
        # pipelined workers that stopped answering for their window: back to base credit
        # (looked at a few times per heartbeat interval: windows are seconds long)
        if lists.pipelined and now >= lists.next_pipeline_check:
            lists.next_pipeline_check = now + self.liveness.heartbeat_interval / 4
            for worker in [w for w in lists.pipelined if now - w.progress >= w.idle_timeout]:
                self._unpipeline(worker)  # takes it out of ``pipelined``
                self.stats["workers.pipeline_stalled"] += 1
        # collect every overdue worker and take it out of dispatch before dropping any, so a
        # request redelivered from one cannot land on another that is overdue too. A busy
        # worker silent for its window is suspected first (no new requests) and dropped only
        # after its busy_timeout of silence, unless that is no longer than its window.
        due = lists.overdue(now)
        suspected: list[Worker] = []
        for worker in due:
            if (
                worker.inflight
                and not worker.suspect
                and worker.live_key == worker.idle_timeout > 0
                and not 0 < worker.busy_timeout <= now - worker.touched
            ):
                suspected.append(worker)
            else:
                worker.service.free.pop(worker, None)
        if suspected:
            for worker in suspected:
                self._suspect(worker, now)
            just = {id(w) for w in suspected}
            due = [w for w in due if id(w) not in just]
        for worker in due:
            if not worker.alive:
                continue
            self.stats["workers.expired"] += 1
            log.info(
                "worker %s of %s expired after %.1fs of silence",
                worker.label,
                worker.service.name,
                now - worker.touched,
            )
            self._drop_worker(worker, now, "expired", notify=True)
        lists.prune()
