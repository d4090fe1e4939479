"""A session that closes takes its waiting requests out of the service queues, and a caller
cannot ask for a request with no deadline (so nothing it leaves behind waits forever)."""

from __future__ import annotations

from maitred.core.durable import StoreJournal
from maitred.core.errors import ErrorCode
from maitred.core.routing.model import RequestState, ServicePolicy
from maitred.core.store import MemoryStore
from tests.core.harness import Harness, sink_of


def test_closing_forgets_the_services_only_its_requests_kept() -> None:
    h = Harness(policy=ServicePolicy(request_timeout=30.0))
    client = h.session("client")
    reqs = [h.req(client, f"svc.{i}", timeout=0) for i in range(4000)]
    assert len(h.router.services) == 4000
    assert all(r.deadline == h.now + 30.0 for r in reqs)
    h.close(client)
    assert h.router.services == {}
    assert all(r.state is RequestState.CANCELLED for r in reqs)
    assert h.router.stats["requests.dropped_caller_gone"] == 4000
    assert client.queued == {}
    h.advance(31.0)  # their deadlines are disarmed: nothing fires for them
    assert sink_of(client).errors == []
    assert h.violations() == []


def test_a_full_queue_empties_when_its_caller_leaves() -> None:
    h = Harness(policy=ServicePolicy(max_queue=10))
    flooder = h.session("flooder")
    for _ in range(10):
        h.req(flooder, "svc", timeout=0)
    other = h.session("other")
    assert h.call(other, "svc") is None
    assert sink_of(other).error_codes() == [ErrorCode.QUEUE_FULL]
    h.close(flooder)
    assert h.router.services.get("svc") is None
    mine = h.req(other, "svc")
    w = h.worker("svc")
    assert mine.worker is w  # the flooder's requests are not served first
    assert sink_of(w.session).tokens() == [mine.id]


def test_only_the_closing_sessions_requests_leave_the_queue() -> None:
    h = Harness()
    a = h.session("a")
    b = h.session("b")
    mixed = [h.req(a if i % 3 else b, "svc") for i in range(300)]
    h.close(a)
    service = h.router.services["svc"]
    kept = [r for r in mixed if r.caller is b]
    assert service.queued == len(kept) == 100
    assert len(service.queue) < 300  # compacted, not only skipped later
    w = h.worker("svc", credit=1000)
    assert sink_of(w.session).tokens() == [r.id for r in kept]


def test_a_dispatched_request_of_a_closing_session_stays_with_its_worker() -> None:
    h = Harness()
    client = h.session("client")
    w = h.worker("svc")
    busy = h.req(client, "svc")
    waiting = h.req(client, "svc")
    h.close(client)
    assert busy.state is RequestState.DISPATCHED and busy.worker is w
    assert waiting.state is RequestState.CANCELLED
    h.reply(w, busy)  # answered into the void, the worker's credit comes back
    assert w in h.router.services["svc"].free
    assert h.violations() == []


def test_stored_requests_outlive_their_closing_caller() -> None:
    h = Harness(policies={"jobs": ServicePolicy(on_no_worker="store")})
    journal = StoreJournal(MemoryStore())
    h.router.journal = journal
    journal.recover(h.router, h.now)
    client = h.session("client")
    req = h.req(client, "jobs")
    h.close(client)
    assert req.state is RequestState.QUEUED
    w = h.worker("jobs")
    assert req.worker is w
    h.reply(w, req)
    assert h.violations() == []
