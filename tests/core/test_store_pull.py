"""A journal that pulls (the JetStream store shared by several brokers), without sockets: the
router holds back what it accepts for such a journal, serves what it is handed back with its
caller, and the pulling journal asks only for its free credit, hands pulled messages to the
router, acknowledges answers and sends dead letters through the store."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from maitred.core.durable import KIND, StoreJournal, encode_request
from maitred.core.jetstream_layout import packed, subject_token
from maitred.core.jetstream_pull import (
    PullingJournal,
    consumer_config,
    consumer_name,
)
from maitred.core.management import Management
from maitred.core.routing.model import ReplyKind, Request, RequestState, ServicePolicy
from maitred.core.store import MemoryStore, StoredMessage
from tests.core.harness import Harness, sink_of

STORE = ServicePolicy(on_no_worker="store", request_timeout=5.0, max_deliveries=2)


class Pulling(StoreJournal):
    """The router's side only: it holds what it is given."""

    pulls = True

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.held: list[Request] = []

    def append(self, request: Request) -> None:
        super().append(request)
        self.held.append(request)


def test_the_router_holds_back_what_a_pulling_journal_takes_and_serves_it_when_handed_back() -> (
    None
):
    h = Harness(policies={"jobs": STORE})
    journal = Pulling()
    h.router.journal = journal
    w = h.worker("jobs")  # free, yet the request waits for the journal
    c = h.session("c")
    r = h.req(c, "jobs", (b"x",))
    assert journal.held == [r] and r.state is RequestState.QUEUED and r.worker is None
    assert h.router.services["jobs"].queued == 0
    h.router.resume_stored(r, h.now)
    assert r.worker is w
    h.reply(w, r, (b"done",))
    assert sink_of(c).reply_bodies(r) == [(ReplyKind.FINAL, [b"done"])]
    h.router.resume_stored(r, h.now)  # answered: handing it back again does nothing
    assert h.router.services["jobs"].queued == 0


def test_consumer_settings_follow_busy_timeout_and_max_deliveries() -> None:
    config = consumer_config("S", "a.b", 2.5, 4)
    assert config["durable_name"] == consumer_name("a.b") == "maitred_" + subject_token("a.b")
    assert config["filter_subject"] == f"S.m.{subject_token('a.b')}.*.body"
    assert (config["ack_wait"], config["max_deliver"]) == (2_500_000_000, 4)
    long = consumer_name("x" * 300)
    assert long.startswith("maitred_H") and len(long) == 49


class Reply:
    data = b"{}"


class FakeNats:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.asked: list[tuple[str, Any]] = []

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        self.sent.append((subject, data))

    async def request(self, subject: str, data: bytes, timeout: float) -> Reply:
        self.asked.append((subject, json.loads(data)))
        return Reply()


class Settings:
    timeout = 1.0


class FakeStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self._nc = FakeNats()
        self.fresh: list[Any] = []
        self.stream, self.settings = "S", Settings()

    def append_fresh(self, message: StoredMessage, numbered: Any) -> None:
        self.fresh.append((message, numbered))


class Meta:
    def __init__(self, delivered: int) -> None:
        self.num_delivered, self.num_pending = delivered, 5


class FakeMsg:
    def __init__(self, subject: str, data: bytes, reply: str, delivered: int) -> None:
        self.subject, self.data, self.reply = subject, data, reply
        self.headers: dict[str, str] | None = None
        self.metadata = Meta(delivered)


def body_msg(n: int, payload: list[bytes], delivered: int = 1) -> FakeMsg:
    m = StoredMessage("jobs", n, encode_request(payload, None), KIND, "c", 0)
    return FakeMsg(f"S.m.{subject_token('jobs')}.{n}.body", packed(m), f"ack.{n}", delivered)


def test_the_pulling_journal_parks_pulls_acknowledges_and_dead_letters() -> None:
    async def main() -> None:
        h = Harness(policies={"jobs": STORE})
        store = FakeStore()
        journal = PullingJournal(cast(Any, store), 0.0, lambda: h.now)
        assert journal.ack_wait == 900.0  # busy_timeout 0: never expire; the ack wait is 900 s
        h.router.journal = journal
        journal._router = h.router
        w = h.worker("jobs")
        service = h.router.services["jobs"]
        assert PullingJournal.free_credit(service) == 1
        await journal._pull()  # makes the consumer, asks for what the one worker can take
        ((made, config),) = store._nc.asked
        assert made == f"$JS.API.CONSUMER.DURABLE.CREATE.S.{consumer_name('jobs')}"
        assert (config["config"]["ack_wait"], config["config"]["max_deliver"]) == (900e9, 2)
        assert json.loads(store._nc.sent.pop()[1])["batch"] == 1
        await journal._pull()  # asked already: nothing more
        assert store._nc.sent == [] and journal._asked["jobs"] == 1
        status = FakeMsg(f"inbox.{subject_token('jobs')}", b"", "", 0)
        status.headers = {"Status": "408", "Nats-Pending-Messages": "1"}
        await journal._on_message(cast(Any, status))  # expired, nothing came
        assert journal._asked["jobs"] == 0 and service.backlog == 0
        c = h.session("c")
        r = h.req(c, "jobs", (b"mine",))
        assert r.worker is None and len(store.fresh) == 1
        store.fresh[0][1](7)  # its batch took id 7
        assert r.stored == 7
        journal._take(cast(Any, body_msg(7, [b"mine"])))  # this broker pulls its own request
        assert r.worker is w and PullingJournal.free_credit(service) == 0
        assert service.backlog == 5  # what waits in the stream, for adaptive credit
        h.reply(w, r, (b"ok",))
        assert sink_of(c).reply_bodies(r) == [(ReplyKind.FINAL, [b"ok"])]
        await asyncio.sleep(0)
        assert store._nc.sent == [("ack.7", b"+ACK")]
        # another broker's request, JetStream's second delivery of it: served without a caller
        journal._take(cast(Any, body_msg(3, [b"theirs"], delivered=2)))
        other = next(iter(w.inflight.values()))
        assert (other.stored, other.deliveries, other.caller.label) == (3, 2, "store:orphans")
        h.router.remove_worker(w, h.now, "gone")  # its second delivery here: the last one
        assert [(d.message.n, d.message.deliveries) for d in store.dead_letters()] == [(3, 2)]
        assert journal.pulled == 2
        # a message that is not a request is terminated, not delivered
        journal._take(cast(Any, FakeMsg("S.m.x.1.body", b"?", "ack.x", 1)))
        await asyncio.sleep(0)
        assert store._nc.sent[-1] == ("ack.x", b"+TERM")
        status.headers = {"Status": "409", "Description": "Consumer Deleted"}
        await journal._on_message(cast(Any, status))  # made again at the next pull
        assert "jobs" not in journal._consumers

    asyncio.run(main())


class Info:
    """A ``ConsumerInfo`` as the journal reads it."""

    def __init__(self, token: str, pending: int | None) -> None:
        self.config = type("Config", (), {"filter_subject": f"S.m.{token}.*.body"})()
        self.num_pending = pending


def test_what_waits_in_the_stream_is_listed_and_keeps_a_service_without_worker() -> None:
    h = Harness(policies={"jobs": STORE, "other": STORE}, mmi=Management(), max_services=3)
    journal = PullingJournal(cast(Any, FakeStore()), 1.0, lambda: h.now)
    journal._router = h.router
    journal.count([])  # nothing anywhere: nothing known
    assert h.router.services == {}
    infos = [
        Info(subject_token("jobs"), 4),
        Info(subject_token("wait"), 9),  # not a store service here: not listed
        Info("not-a-token!", 1),
        type("Foreign", (), {"config": type("C", (), {"filter_subject": "X.y"})()})(),
    ]
    journal.count(infos)
    assert set(h.router.services) == {"jobs"}
    c = h.session("c")
    queues = h.router.submit(c, "mmi.queues", (b"",), None, h.now)
    assert queues is not None
    assert json.loads(sink_of(c).reply_bodies(queues)[0][1][0]) == {
        "jobs": {"queued": 4, "inflight": 0}
    }
    w = h.worker("jobs")
    journal.count([Info(subject_token("jobs"), None)])  # all pulled: the worker keeps it
    assert h.router.services["jobs"].backlog == 0
    h.router.remove_worker(w, h.now)
    assert "jobs" not in h.router.services
    journal.count([Info(subject_token("jobs"), 2)])
    journal.count([])  # its consumer is gone: so is what it counted
    assert "jobs" not in h.router.services
    for name in ("a", "b", "c"):
        h.router.service(name)
    h.router.set_backlog("jobs", 5)  # max_services reached: not made for a count
    assert "jobs" not in h.router.services


def test_a_pulled_request_whose_worker_died_goes_back_to_the_stream_unless_one_here_is_free() -> (
    None
):
    async def main() -> None:
        h = Harness(policies={"jobs": ServicePolicy(on_no_worker="store", max_deliveries=5)})
        store = FakeStore()
        journal = PullingJournal(cast(Any, store), 1.0, lambda: h.now)
        h.router.journal = journal
        journal._router = h.router
        service = h.router.service("jobs")
        w1, w2 = h.worker("jobs"), h.worker("jobs")
        c = h.session("c")
        r = h.req(c, "jobs", (b"mine",))
        store.fresh[0][1](7)
        journal._take(cast(Any, body_msg(7, [b"mine"])))
        first = r.worker
        assert first is not None and r.deliveries == 1
        h.router.remove_worker(first, h.now)  # the other worker is free: it takes it here
        other = w2 if first is w1 else w1
        await asyncio.sleep(0)
        assert r.worker is other and journal.given_back == 0
        assert ("ack.7", b"-NAK") not in store._nc.sent
        h.router.remove_worker(other, h.now)  # no worker left here: back to the stream
        assert service.queued == 1  # (until the router's call has returned)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert store._nc.sent[-1] == ("ack.7", b"-NAK") and journal.given_back == 1
        assert service.queued == 0 and r.state is RequestState.QUEUED
        assert journal.snapshot()["given_back"] == 1
        assert h.router.unqueue_stored(r) is False  # not in a queue any more
        w3 = h.worker("jobs")
        journal._take(cast(Any, body_msg(7, [b"mine"], delivered=3)))  # it comes back here
        assert r.worker is w3 and r.deliveries == 3  # JetStream's count: 2 before this one
        h.reply(w3, r, (b"ok",))
        assert sink_of(c).reply_bodies(r) == [(ReplyKind.FINAL, [b"ok"])]

    asyncio.run(main())
