"""The journal of ``store`` services (core/durable.py) around its store: start-up with a row
it does not know, commits grouped per loop turn, a commit or a close that fails, the snapshot."""

from __future__ import annotations

import asyncio

import pytest

from maitred.core.durable import KIND, StoreJournal
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import ServicePolicy
from maitred.core.store import MemoryStore, StoredMessage
from tests.core.harness import Harness, sink_of

STORE = ServicePolicy(on_no_worker="store", request_timeout=0)


class FailingStore(MemoryStore):
    """A memory store whose flush/close fail while ``broken`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.closed = False

    def flush(self) -> int:
        if self.broken:
            raise OSError("disk full")
        return super().flush()

    def close(self) -> None:
        self.closed = True
        if self.broken:
            raise OSError("cannot close")


def test_recover_leaves_rows_of_another_kind_alone() -> None:
    store = MemoryStore()
    store.append(StoredMessage("jobs", 0, b"?", b"not-ours", "x", 0))
    h = Harness(policies={"jobs": STORE})
    journal = StoreJournal(store)
    assert journal.recover(h.router, h.now) == 0
    assert "jobs" not in h.router.services or h.router.services["jobs"].queued == 0
    assert journal.counters == {"jobs": 1}  # ids still never repeat


@pytest.mark.allow_error_logs("store: commit failed")
def test_commits_wake_their_waiters_and_a_failed_commit_fails_them() -> None:
    async def main() -> None:
        store = FailingStore()
        h = Harness(policies={"jobs": STORE})
        journal = StoreJournal(store)
        h.router.journal = journal
        client = h.session("c")
        assert h.req(client, "jobs").stored == 0
        await journal.committed()  # one commit, at the next loop turn
        assert store.flushed == 1 and not store.dirty
        await journal.committed()  # nothing buffered: at once
        assert journal.snapshot() == {
            "appended": 1,
            "commits": 1,
            "failures": 0,
            "dead_lettered": 0,
        }

        store.broken = True
        h.req(client, "jobs")
        with pytest.raises(OSError, match="disk full"):
            await journal.committed()
        assert journal.failures == 1
        store.broken = False
        h.req(client, "jobs")
        await journal.committed()  # the next commit takes what the failed one had too
        assert store.flushed == 2 and not store.dirty

    asyncio.run(main())


def waiting(journal: StoreJournal, h: Harness) -> asyncio.Future[None]:
    """A request journaled and a task waiting for its commit, which has not run yet (as when
    the broker closes the journal between the two)."""
    journal._scheduled = True  # the commit is "scheduled": nothing else schedules it
    h.req(h.session("c"), "jobs")
    return asyncio.ensure_future(journal.committed())


@pytest.mark.allow_error_logs("store: closing failed")
def test_a_failed_close_fails_the_waiters() -> None:
    async def main() -> None:
        store = FailingStore()
        h = Harness(policies={"jobs": STORE})
        journal = StoreJournal(store)
        h.router.journal = journal
        waiter = waiting(journal, h)
        await asyncio.sleep(0)
        assert not waiter.done()
        store.broken = True
        journal.close()
        with pytest.raises(OSError, match="cannot close"):
            await waiter
        journal.close()  # again: nothing
        assert store.closed

    asyncio.run(main())


def test_close_tells_waiters_the_store_is_closed() -> None:
    async def main() -> None:
        h = Harness(policies={"jobs": STORE})
        journal = StoreJournal(MemoryStore())
        h.router.journal = journal
        waiter = waiting(journal, h)
        await asyncio.sleep(0)
        journal.close()
        with pytest.raises(RuntimeError, match="the store is closed"):
            await waiter

    asyncio.run(main())


def test_committed_after_close_does_not_wait_forever() -> None:
    """A memory store still holds an uncommitted write when the journal closes: asking for the
    commit afterwards is an error at once, not a wait on a commit that will never run."""

    async def main() -> None:
        h = Harness(policies={"jobs": STORE})
        store = MemoryStore()
        journal = StoreJournal(store)
        h.router.journal = journal
        journal._scheduled = True
        h.req(h.session("c"), "jobs")
        journal.close()
        assert store.dirty
        with pytest.raises(RuntimeError, match="the store is closed"):
            await asyncio.wait_for(journal.committed(), 5)

    asyncio.run(main())


def test_dead_letter_keeps_the_request() -> None:
    store = MemoryStore()
    journal = StoreJournal(store)
    h = Harness(policies={"jobs": STORE})
    h.router.journal = journal
    r = h.req(h.session("c"), "jobs", (b"x",))
    journal.dead(r, "no worker would take it")
    [dead] = store.dead_letters("jobs")
    assert dead.reason == "no worker would take it" and dead.message.kind == KIND


class RefusingStore(MemoryStore):
    """A memory store that refuses new messages while ``refuse`` is set (as the JetStream store
    does while JetStream is unavailable, or for a message past its size limit)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: MaitredError | None = None
        self.sizes: list[int] = []

    def refusal(self, size: int) -> MaitredError | None:
        self.sizes.append(size)
        return self.refuse


def test_a_store_that_cannot_take_a_request_refuses_it_before_it_is_accepted() -> None:
    store = RefusingStore()
    h = Harness(policies={"jobs": STORE})
    journal = StoreJournal(store)
    h.router.journal = journal
    client = h.session("c")
    assert h.req(client, "jobs", (b"abc",)).stored == 0
    store.refuse = MaitredError("the durable store is unavailable", ErrorCode.NO_WORKER)
    h.worker("jobs")  # even with a free worker: it would be stored first
    assert h.call(client, "jobs", (b"abcd",)) is None
    store.refuse = MaitredError("too large", ErrorCode.TOO_LARGE)
    assert h.call(client, "jobs", (b"abcd",)) is None
    assert sink_of(client).error_codes() == [ErrorCode.NO_WORKER, ErrorCode.TOO_LARGE]
    assert journal.appended == 1 and store.sizes[-1] == len("jobs") + 4
    assert h.router.stats["requests.store_refused"] == 2
    store.refuse = None
    assert h.req(client, "jobs").stored == 1  # ids go on: none was taken by a refusal
