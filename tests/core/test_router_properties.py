"""Random sequences of router operations keep the router's invariants.

A hypothesis state machine drives one router on a fake clock with recording sinks: sessions come
and go, workers join, leave and go silent, requests are submitted, answered (partial, final,
error), cancelled, and time moves on. After every step it checks:

- the API raised nothing but :class:`MaitredError` subclasses;
- every request got at most one terminal outcome (final reply or error), nothing after it, and a
  request of an open caller has exactly one outcome once it is DONE/EXPIRED, none while it is
  QUEUED (then it sits in its service's queue), DISPATCHED (then a live worker holds it) or
  CANCELLED; no TIMEOUT arrives before the request's deadline;
- a service's ``queued`` equals the QUEUED requests in its queue; no worker holds more than its
  credit; ``free`` holds exactly the live, unsuspected workers with credit left; never free
  workers and waiting requests at once; each session knows exactly its waiting requests;
- nothing is delivered to a closed session;
- finally ``shutdown`` answers everything still pending and tells every worker.

Nothing is ruled out up front: it submits, subscribes, publishes and adds workers from closed
sessions too (the router must refuse with a MaitredError or do nothing visible), and gives a
session several workers of one service. The runs are random (a new seed each run); hypothesis
prints the seed of a failure, which ``pytest --hypothesis-seed=N`` replays. The settings come
from the profile in tests/conftest.py (``--hypothesis-profile ci`` in CI).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from maitred.core.access import ANONYMOUS
from maitred.core.clock import FakeClock
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.management import Management
from maitred.core.routing.model import (
    Headers,
    ReplyKind,
    Request,
    RequestState,
    ServicePolicy,
    Session,
    Worker,
)
from maitred.core.routing.router import Liveness, Router
from tests.core.harness import FakeSink, Harness

POLICIES = {
    "a": ServicePolicy(
        redeliver=True, max_deliveries=2, request_timeout=1.0, max_queue=3, overflow="drop_oldest"
    ),
    "b": ServicePolicy(on_no_worker="fail", request_timeout=0, max_queue=2),
    "c": ServicePolicy(request_timeout=0.5),
}
SERVICES = ["a", "a", "b", "c", "c", "mmi.service", "mmi.nope"]
PATTERNS = ["t.x", "t.*", "t.>", ">", "$sys.>", "$sys.worker.*"]
TOPICS = ["t.x", "t.y", "t.x.z", "$sys.broadcast"]
LIVENESS = Liveness(heartbeat_interval=1.0, liveness=2, busy_timeout=5.0)


class JournalSink(FakeSink):
    """A FakeSink that also writes every reply and error into one shared journal."""

    def __init__(self, name: str, journal: dict[int, list[str]], machine: RouterMachine) -> None:
        super().__init__(name)
        self.journal = journal
        self.machine = machine

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Any, headers: Headers | None
    ) -> None:
        super().deliver_reply(request, kind, body, headers)
        self.journal.setdefault(request.id, []).append(
            "final" if kind is ReplyKind.FINAL else "partial"
        )

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        super().deliver_error(request, error)
        self.journal.setdefault(request.id, []).append(f"error:{error.code.name}")
        if error.code is ErrorCode.TIMEOUT:
            assert self.machine.h.now >= request.deadline, "a deadline expired early"


def _terminal(entries: list[str]) -> int:
    return sum(1 for e in entries if e != "partial")


class RouterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        clock = FakeClock()
        self.h = Harness(
            policies=POLICIES,
            liveness=LIVENESS,
            resolution=0.05,
            clock=clock,
            mmi=Management(now=clock),
        )
        self.journal: dict[int, list[str]] = {}
        self.sessions: list[Session] = []
        self.workers: list[Worker] = []
        self.requests: dict[int, Request] = {}
        self.refused: dict[int, Session] = {}
        #: requests the caller cancelled while still pending -> journal length at that moment
        self.cancelled: dict[int, int] = {}

    @property
    def router(self) -> Router:
        return self.h.router

    def open_sessions(self) -> list[Session]:
        return [s for s in self.sessions if not s.closed]

    # -- rules ----------------------------------------------------------------------------------

    @initialize(credits=st.tuples(st.integers(1, 3), st.integers(1, 3)))
    def start(self, credits: tuple[int, int]) -> None:
        """Three sessions, with a worker of each service to start with."""
        for _ in range(3):
            self.open_session()
        s0, s1, s2 = self.sessions
        self.workers.append(self.router.add_worker(s0, "a", self.h.now, credit=credits[0]))
        self.workers.append(self.router.add_worker(s1, "c", self.h.now, credit=credits[1]))
        self.workers.append(self.router.add_worker(s2, "b", self.h.now, idle_timeout=0))

    @rule()
    def open_session(self) -> None:
        name = f"s{len(self.sessions)}"
        sink = JournalSink(name, self.journal, self)
        session = self.router.open_session("test", sink, ANONYMOUS, self.h.now, name)
        sink.session = session
        self.h.sinks.append(sink)
        self.sessions.append(session)

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def close_session(self, data: st.DataObject) -> None:
        session = data.draw(st.sampled_from(self.sessions))
        self.router.close_session(session, self.h.now, "bye")

    @precondition(lambda self: self.sessions)
    @rule(
        data=st.data(),
        service=st.sampled_from(["a", "b", "c"]),
        credit=st.integers(1, 3),
        idle=st.sampled_from([None, None, 0, 1.0]),
        busy=st.sampled_from([None, None, 0]),
        extra=st.sampled_from([0, 0, 2]),
    )
    def add_worker(
        self,
        data: st.DataObject,
        service: str,
        credit: int,
        idle: float | None,
        busy: float | None,
        extra: int,
    ) -> None:
        session = data.draw(st.sampled_from(self.sessions))
        try:
            worker = self.router.add_worker(
                session,
                service,
                self.h.now,
                credit=credit,
                idle_timeout=idle,
                busy_timeout=busy,
                max_credit=credit + extra if extra else 0,  # adaptive credit
                pipeline_below=0.5,
            )
        except MaitredError:
            assert session.closed or self.router.draining, "add_worker refused an open session"
            return
        assert not session.closed, "a worker was added to a closed session"
        self.workers.append(worker)

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def remove_worker(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(self.workers))
        self.router.remove_worker(worker, self.h.now, "leaving")

    @precondition(lambda self: self.sessions)
    @rule(
        data=st.data(),
        service=st.sampled_from(SERVICES),
        many=st.sampled_from([1, 1, 3]),
        timeout=st.sampled_from([None, None, 0, 0.3, 3.0]),
    )
    def submit(self, data: st.DataObject, service: str, many: int, timeout: float | None) -> None:
        session = data.draw(st.sampled_from(self.sessions))
        for _ in range(many):
            self._submit(session, service, timeout)

    def _submit(self, session: Session, service: str, timeout: float | None) -> None:
        before = len(sink_errors(session))
        try:
            request = self.router.submit(
                session, service, (b"q", service.encode()), None, self.h.now, timeout=timeout
            )
        except MaitredError:
            return
        if request is None:
            errors = sink_errors(session)
            assert len(errors) == before + 1, "a refused request gets exactly one error at once"
            refused_request, _ = errors[-1]
            self.refused[refused_request.id] = session
        else:
            assert request.id not in self.requests
            self.requests[request.id] = request

    @precondition(lambda self: any(w.inflight for w in self.workers))
    @rule(data=st.data(), final=st.booleans())
    def reply(self, data: st.DataObject, final: bool) -> None:
        worker = data.draw(st.sampled_from([w for w in self.workers if w.inflight]))
        token = data.draw(st.sampled_from(list(worker.inflight)))
        assert self.router.reply(worker, token, (b"r",), self.h.now, final=final) is True

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), final=st.booleans())
    def reply_unknown(self, data: st.DataObject, final: bool) -> None:
        """A token the worker does not hold: another worker's, an old one, or made up."""
        worker = data.draw(st.sampled_from(self.workers))
        token = data.draw(st.sampled_from([*self.requests, 10_000]))
        if token in worker.inflight:
            return
        assert self.router.reply(worker, token, (b"r",), self.h.now, final=final) is False

    @precondition(lambda self: any(w.inflight for w in self.workers))
    @rule(data=st.data())
    def reply_error(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from([w for w in self.workers if w.inflight]))
        token = data.draw(st.sampled_from(list(worker.inflight)))
        error = MaitredError("worker says no", ErrorCode.INTERNAL)
        assert self.router.reply_error(worker, token, error, self.h.now) is True

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        self.router.touch(data.draw(st.sampled_from(self.workers)), self.h.now)

    @rule(dt=st.sampled_from([0.0, 0.01, 0.06, 0.06, 0.3, 0.3, 0.5, 1.5, 3.0, 6.0]))
    def tick(self, dt: float) -> None:
        self.h.advance(dt)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        request = data.draw(st.sampled_from(sorted(self.requests.values(), key=lambda r: r.id)))
        pending = request.state in (RequestState.QUEUED, RequestState.DISPATCHED)
        self.router.cancel(request, self.h.now)
        if pending:
            assert request.state is RequestState.CANCELLED
            self.cancelled[request.id] = len(self.journal.get(request.id, []))

    @precondition(lambda self: self.sessions)
    @rule(
        data=st.data(),
        op=st.sampled_from(["sub", "sub", "unsub", "pub"]),
        pattern=st.sampled_from(PATTERNS),
        topic=st.sampled_from(TOPICS),
    )
    def topics(self, data: st.DataObject, op: str, pattern: str, topic: str) -> None:
        session = data.draw(st.sampled_from(self.sessions))
        try:
            if op == "sub":
                self.router.subscribe(session, pattern)
            elif op == "unsub":
                self.router.unsubscribe(session, pattern)
            else:
                reached = self.router.publish(session, topic, (b"e",))
                assert reached == len(self.router.topics.match(topic))
        except MaitredError:
            assert session.closed or op == "pub", f"{op} refused on an open session"
            return
        assert not session.closed or op == "unsub", f"{op} accepted on a closed session"

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def nothing_to_closed_sessions(self) -> None:
        assert self.h.violations() == []

    @invariant()
    def sessions_are_consistent(self) -> None:
        open_ids = {s.id for s in self.open_sessions()}
        assert set(self.router.sessions) == open_ids
        for session in self.sessions:
            if session.closed:
                assert session.workers == {} and session.patterns == set()

    @invariant()
    def services_are_consistent(self) -> None:
        for name, svc in self.router.services.items():
            assert svc.name == name
            waiting = [r for r in svc.queue if r.state is RequestState.QUEUED]
            assert svc.queued == len(waiting)
            assert len({r.id for r in waiting}) == len(waiting)
            assert all(r.service == name for r in svc.queue)
            free = set()
            for worker in svc.workers:
                assert worker.alive
                assert worker.service is svc
                assert not worker.session.closed
                assert worker in worker.session.workers
                # adaptive credit may drop below what a worker holds (never above its max)
                assert len(worker.inflight) <= max(worker.credit, worker.max_credit)
                assert (
                    worker.base_credit
                    <= worker.credit
                    <= max(worker.base_credit, worker.max_credit)
                )
                if worker.suspect:  # silent past its window while busy: no new requests
                    assert worker.inflight
                    assert worker.credit == worker.base_credit
                elif len(worker.inflight) < worker.credit:
                    free.add(worker)
                for token, request in worker.inflight.items():
                    assert request.id == token
                    assert request.worker is worker
                    assert request.state in (
                        RequestState.DISPATCHED,
                        RequestState.EXPIRED,
                        RequestState.CANCELLED,
                    )
            assert set(svc.free) == free
            assert not (svc.free and svc.queued), "free workers while requests wait"
            for request in waiting:
                if not request.caller.closed:
                    assert request.caller.queued.get(request.id) is request
        for session in self.router.sessions.values():
            for request in session.queued.values():
                assert request.state is RequestState.QUEUED
                assert request.caller is session
        for worker in self.workers:
            if not worker.alive:
                assert worker.inflight == {}
                assert worker not in worker.service.workers
                assert worker not in worker.session.workers
            else:
                assert self.router.services.get(worker.service.name) is worker.service

    @invariant()
    def every_request_has_at_most_one_outcome(self) -> None:
        for rid, entries in self.journal.items():
            assert _terminal(entries) <= 1, (rid, entries)
            if _terminal(entries):
                assert entries[-1] != "partial", (rid, entries)
        for rid in self.refused:
            entries = self.journal.get(rid, [])
            assert len(entries) == 1 and entries[0].startswith("error:"), entries
        for rid, request in self.requests.items():
            entries = self.journal.get(rid, [])
            terminal = _terminal(entries)
            state = request.state
            if request.service.startswith("mmi."):
                assert state is RequestState.DONE and entries == ["final"]
                continue
            policy = POLICIES[request.service]
            assert request.deliveries <= (policy.max_deliveries if policy.redeliver else 1)
            if rid in self.cancelled:
                assert len(entries) == self.cancelled[rid], "delivered after cancel"
                continue
            if request.caller.closed:
                continue
            if state in (RequestState.DONE, RequestState.EXPIRED):
                assert terminal == 1, (request, entries)
            else:
                assert terminal == 0, (request, entries)
            if state is RequestState.QUEUED:
                svc = self.router.services[request.service]
                assert any(r is request for r in svc.queue)
                assert request.worker is None or request.deliveries >= 1
            elif state is RequestState.DISPATCHED:
                worker = request.worker
                assert worker is not None and worker.alive
                assert worker.inflight.get(rid) is request

    def teardown(self) -> None:
        router = self.router
        alive = [w for w in self.workers if w.alive]
        router.shutdown(self.h.now)
        assert self.h.violations() == []
        assert list(router.iter_workers()) == []
        for worker in alive:
            assert ("removed", worker, "shutdown") in sink_calls(worker.session)
        for rid, request in self.requests.items():
            if request.caller.closed or rid in self.cancelled:
                continue
            entries = self.journal.get(rid, [])
            assert _terminal(entries) == 1, (request, entries)
        for rid, entries in self.journal.items():
            assert _terminal(entries) <= 1, (rid, entries)


def sink_errors(session: Session) -> list[tuple[Request, MaitredError]]:
    sink = session.sink
    assert isinstance(sink, FakeSink)
    return sink.errors


def sink_calls(session: Session) -> list[tuple[Any, ...]]:
    sink = session.sink
    assert isinstance(sink, FakeSink)
    return sink.calls


RouterMachine.TestCase.settings = settings(
    settings(),  # the loaded profile (tests/conftest.py): max_examples, database
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRouterMachine = RouterMachine.TestCase
