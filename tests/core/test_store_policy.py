"""Services with ``on_no_worker = "store"``: the router and its journal over a store, without
sockets (a memory store, committed at once since no event loop runs)."""

from __future__ import annotations

import pytest

from maitred.core.durable import KIND, StoreJournal, decode_request
from maitred.core.errors import ErrorCode
from maitred.core.routing.model import ReplyKind, RequestState, ServicePolicy
from maitred.core.store import MemoryStore
from tests.core.harness import Harness, sink_of

STORE = ServicePolicy(on_no_worker="store", request_timeout=1.0, max_deliveries=2, max_queue=3)


def make(store: MemoryStore | None = None) -> tuple[Harness, StoreJournal, MemoryStore]:
    store = store or MemoryStore()
    h = Harness(policies={"jobs": STORE})
    journal = StoreJournal(store)
    h.router.journal = journal
    journal.recover(h.router, h.now)
    return h, journal, store


def stored(store: MemoryStore, service: str = "jobs") -> list[tuple[int, list[bytes], int]]:
    rec = store.recover()
    return [(m.n, decode_request(m.payload)[0], m.deliveries) for m in rec.queues.get(service, [])]


def test_a_request_is_stored_until_its_worker_answers() -> None:
    h, _, store = make()
    c = h.session("c")
    r = h.req(c, "jobs", (b"a", b"\x00b"), headers={"k": "v"})
    assert r.stored == 0
    assert stored(store) == [(0, [b"a", b"\x00b"], 0)]
    w = h.worker("jobs")
    assert r.state is RequestState.DISPATCHED and r.worker is w
    assert stored(store) == [(0, [b"a", b"\x00b"], 0)]  # still there while the worker has it
    h.reply(w, r, (b"done",))
    assert stored(store) == []
    assert sink_of(c).reply_bodies(r) == [(ReplyKind.FINAL, [b"done"])]
    assert KIND == b"maitred.request/1"


def test_services_without_store_policy_write_nothing() -> None:
    h, journal, store = make()
    c = h.session("c")
    h.worker("other")
    h.req(c, "other")
    assert journal.appended == 0 and store.recover().queues == {}


def test_the_deadline_ends_the_callers_wait_not_the_request() -> None:
    h, _, store = make()
    c = h.session("c")
    r = h.req(c, "jobs", (b"x",))
    h.advance(1.5)
    err = sink_of(c).error_for(r)
    assert err is not None
    assert err.code is ErrorCode.TIMEOUT and "stored" in err.reason
    assert r.state is RequestState.QUEUED and stored(store) == [(0, [b"x"], 0)]
    w = h.worker("jobs")  # comes later: still gets it
    assert r.worker is w
    h.reply(w, r)
    assert stored(store) == []
    assert sink_of(c).reply_bodies(r) == []  # the caller had its one outcome: the 504


def test_a_stored_request_outlives_its_callers_session() -> None:
    h, _, store = make()
    c = h.session("c")
    r = h.req(c, "jobs")
    h.close(c)
    w = h.worker("jobs")
    assert r.worker is w and r.caller.label == "store:orphans"
    h.reply(w, r)
    assert stored(store) == []
    assert h.violations() == []


def test_worker_death_redelivers_then_dead_letters() -> None:
    h, _, store = make()
    c = h.session("c")
    r = h.req(c, "jobs", (b"poison",))
    w1 = h.worker("jobs")
    h.close(w1.session)  # first delivery lost: back in the queue (no redeliver flag needed)
    assert r.state is RequestState.QUEUED
    assert stored(store) == [(0, [b"poison"], 1)]
    w2 = h.worker("jobs")
    assert r.worker is w2
    h.close(w2.session)  # max_deliveries = 2: dead
    err = sink_of(c).error_for(r)
    assert err is not None
    assert err.code is ErrorCode.WORKER_DIED
    assert stored(store) == []
    (dead,) = store.dead_letters("jobs")
    assert dead.message.n == 0 and "2 workers" in dead.reason
    assert h.router.stats["requests.dead_lettered"] == 1


def test_restart_brings_requests_back_and_ids_never_repeat() -> None:
    store = MemoryStore()
    h, _, _ = make(store)
    c = h.session("c")
    for i in range(3):
        h.req(c, "jobs", (b"m%d" % i,))
    w = h.worker("jobs")
    assert len(w.inflight) == 1  # one dispatched, two queued: all three stored
    h.router.shutdown(h.now)  # the broker stops: nothing leaves the store
    assert [n for n, _, _ in stored(store)] == [0, 1, 2]

    h2, _, _ = make(store)  # "restart" on the same store
    svc = h2.router.services["jobs"]
    assert svc.queued == 3
    w2 = h2.worker("jobs")
    (first,) = w2.inflight.values()
    assert first.body == [b"m0"] and first.stored == 0
    assert first.deliveries == 1  # (the count recorded before is 0: it died with the broker)
    h2.reply(w2, first)
    assert [n for n, _, _ in stored(store)] == [1, 2]
    new = h2.req(h2.session("c2"), "jobs", (b"later",))
    assert new.stored == 3  # ids go on from the store's counter


def test_a_full_queue_refuses_without_storing() -> None:
    h, journal, store = make()
    c = h.session("c")
    for _ in range(3):
        h.req(c, "jobs")
    assert h.call(c, "jobs") is None
    assert sink_of(c).errors[-1][1].code is ErrorCode.QUEUE_FULL
    assert journal.appended == 3 and len(stored(store)) == 3


def test_cancel_detaches_the_caller_only() -> None:
    h, _, store = make()
    c = h.session("c")
    r = h.req(c, "jobs")
    h.router.cancel(r, h.now)
    assert r.state is RequestState.QUEUED
    w = h.worker("jobs")
    h.reply(w, r)
    assert stored(store) == [] and sink_of(c).reply_bodies(r) == []


@pytest.mark.parametrize("error_reply", [True, False])
def test_an_error_reply_from_the_worker_also_ends_it(error_reply: bool) -> None:
    from maitred.core.errors import MaitredError

    h, _, store = make()
    c = h.session("c")
    r = h.req(c, "jobs")
    w = h.worker("jobs")
    if error_reply:
        h.router.reply_error(w, r.id, MaitredError("no", ErrorCode.BAD_REQUEST), h.now)
    else:
        h.reply(w, r)
    assert stored(store) == []
