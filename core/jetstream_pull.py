"""Delivery from the JetStream store by free credit: several brokers share one stream.

With ``[store] backend = "jetstream"`` the requests of ``on_no_worker = "store"`` services do
not wait in the router's queues of the broker that accepted them: they wait in the stream, and
every broker on that stream pulls from it only as many as its own free workers can take now
(the free credit of its local workers less the requests it pulled and has not handed out yet).
A broker with no worker for a service pulls none of its requests; two brokers with workers of
different capacity each get what they can take.

Each service has one durable pull consumer on the stream (``maitred_<token>``, over the
subjects ``S.m.<token>.*.body``), shared by every broker:

- its ack wait is ``[liveness] busy_timeout``: a broker keeps the messages it holds alive
  (``+WPI`` every third of it) for as long as it holds them, so a message comes back to the
  stream only when its broker died (after the ack wait) or stopped (at once: it is handed back);
- its ``max_deliver`` is the service's ``max_deliveries``: the delivery count a broker starts
  from is what JetStream counts less one; a worker that dies on the last delivery sends the
  message to the dead letters as with SQLite, and a message JetStream stops delivering because
  its broker died on that last delivery is moved there by the brokers that hear JetStream's
  ``MAX_DELIVERIES`` advisory;
- a final answer acknowledges the message (the work-queue stream drops it);
- a request whose worker died goes to another worker of this broker that is free now, else
  back to the stream (``-NAK``, a delivery JetStream counts), for any broker's next free worker.

What waits in the stream, pulled by no broker (each consumer's ``num_pending``, read every
:data:`COUNT_EVERY` seconds), is each service's ``backlog`` in the router: the listings count
it as queued, and a service with stored requests and no worker stays known, as with SQLite.

A request accepted here is held by the journal (not queued) until a broker pulls it: when this
broker does, the request goes on with its caller (:meth:`Router.resume_stored`); when another
one does, that one serves it without a caller (its reply is dropped there, as after a restart)
and this caller's wait ends at its deadline. Ids are taken when a batch is written, by a
compare-and-set of the queue's record (:meth:`JetStreamStore.append_fresh`): two brokers never
give out the same id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from maitred.core.durable import KIND, StoreJournal, decode_request, encode_request
from maitred.core.jetstream_layout import message, subject_token, token_name
from maitred.core.routing.model import Request, RequestState, Service
from maitred.core.store import StoredMessage

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from maitred.core.routing.router import Router
    from maitred.core.store_jetstream import JetStreamStore

log = logging.getLogger("maitred.core.store")

#: seconds a pull request waits on the stream for messages before it expires
PULL_EXPIRES = 1.0
#: seconds between two looks at the free credit when nothing pokes the puller
PULL_EVERY = 0.05
#: most messages the stream hands out to all brokers at once and not yet acknowledged
MAX_ACK_PENDING = 100_000
#: seconds between two looks at what waits in the stream for each service (``mmi.queues``)
COUNT_EVERY = 1.0


def consumer_name(service: str) -> str:
    """The durable consumer of ``service`` (a hash of the name when its token is long)."""
    token = subject_token(service)
    if len(token) <= 100:
        return f"maitred_{token}"
    return "maitred_H" + hashlib.sha256(service.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def consumer_config(stream: str, service: str, ack_wait: float, max_deliver: int) -> dict[str, Any]:
    """The settings of ``service``'s consumer (as JetStream names them)."""
    return {
        "durable_name": consumer_name(service),
        "filter_subject": f"{stream}.m.{subject_token(service)}.*.body",
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "ack_wait": int(ack_wait * 1e9),
        "max_deliver": max_deliver,
        "max_ack_pending": MAX_ACK_PENDING,
    }


class PullingJournal(StoreJournal):
    """The journal over a JetStream store that other brokers may share (see the module doc)."""

    pulls = True

    def __init__(
        self, store: JetStreamStore, ack_wait: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(store)
        self.jetstream = store
        #: the consumers' ack wait (seconds): ``[liveness] busy_timeout``, 900 when that is 0
        self.ack_wait = ack_wait if ack_wait > 0 else 900.0
        self.clock = clock
        #: messages pulled from the stream, and handed back to it at a stop
        self.pulled = 0
        self.handed_back = 0
        #: messages whose worker died here, given back to the stream for another broker
        self.given_back = 0
        self._router: Router | None = None
        #: requests accepted here, by (service, id), until a broker pulls them
        self._parked: dict[tuple[str, int], Request] = {}
        #: the stream's messages this broker holds (pulled, not acknowledged), by (service, id)
        self._held: dict[tuple[str, int], Msg] = {}
        #: held requests whose worker died, to give back unless a worker here took them
        self._orphaned: dict[tuple[str, int], Request] = {}
        #: per service: messages asked for and not delivered yet, and when last asked
        self._asked: dict[str, int] = {}
        self._asked_at: dict[str, float] = {}
        #: per service: the max_deliver its consumer was made with; when it was last tried, and
        #: the services whose consumer was refused (warned once until it is made)
        self._consumers: dict[str, int] = {}
        self._tried: dict[str, float] = {}
        self._refused: set[str] = set()
        #: services that got requests here, with their max_deliveries: their consumer is made
        #: at once (it needs JetStream's meta leader, which may be away when a worker comes)
        self._wanted: dict[str, int] = {}
        self._inbox = ""
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._counter: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- start -------------------------------------------------------------------------------

    def recover(self, router: Router, now: float) -> int:
        """Keep the transports' queues; service requests stay in the stream until pulled."""
        count = super().recover(router, now)
        self._router = router
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._counter = asyncio.get_running_loop().create_task(self._count_waiting())
        return count

    async def _run(self) -> None:
        nc = self.jetstream._nc
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_message)
        stream = self.jetstream.stream
        await nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*", cb=self._on_exceeded
        )
        touched = self.clock()
        while not self._stopping:
            try:
                await asyncio.wait_for(self._poke.wait(), PULL_EVERY)
            except TimeoutError:
                pass
            self._poke.clear()
            try:
                await self._pull()
                if self.clock() - touched >= self.ack_wait / 3:
                    touched = self.clock()
                    await self._keep_alive()
            except Exception as exc:  # NATS away: the next turn asks again
                log.debug("store: pulling failed: %s", exc)
                await asyncio.sleep(0.5)

    # -- pulling -----------------------------------------------------------------------------

    @staticmethod
    def free_credit(service: Service) -> int:
        """What this broker's own workers of ``service`` can take now, less what it pulled and
        has not handed out yet (a cluster node's proxy workers do not count)."""
        free = sum(w.credit - len(w.inflight) for w in service.free if not w.remote)
        return free - service.queued

    async def _pull(self) -> None:
        router = self._router
        if router is None or router.draining:
            return
        nc, now = self.jetstream._nc, self.clock()
        for name, max_deliver in list(self._wanted.items()):
            if await self._consumer(name, max_deliver):
                del self._wanted[name]
        for name, service in list(router.services.items()):
            if service.policy.on_no_worker != "store":
                continue
            asked = self._asked.get(name, 0)
            if asked and now - self._asked_at.get(name, now) > PULL_EXPIRES + 2:
                asked = 0  # (its expiry was not heard of)
            want = self.free_credit(service) - asked
            if want <= 0 or not await self._consumer(name, service.policy.max_deliveries):
                continue
            request = {"batch": want, "expires": int(PULL_EXPIRES * 1e9)}
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.jetstream.stream}.{consumer_name(name)}",
                json.dumps(request).encode(),
                reply=f"{self._inbox}.{subject_token(name)}",
            )
            self._asked[name], self._asked_at[name] = asked + want, now

    async def _consumer(self, name: str, max_deliver: int) -> bool:
        """Make (or update) the consumer of service ``name`` once; False when JetStream refused
        it (asked again a second later)."""
        if self._consumers.get(name) == max_deliver:
            return True
        if self.clock() - self._tried.get(name, -10.0) < 1.0:
            return False
        self._tried[name] = self.clock()
        stream = self.jetstream.stream
        config = consumer_config(stream, name, self.ack_wait, max_deliver)
        try:  # there with these settings: taken as it is (its leader answers, not the meta one)
            have = (await self.jetstream._js.consumer_info(stream, config["durable_name"])).config
            filtered = have.filter_subject == config["filter_subject"]
            if filtered and have.max_deliver == max_deliver and have.ack_wait == self.ack_wait:
                self._consumers[name] = max_deliver
                return True
        except Exception:  # not made yet (or JetStream away: making it says)
            pass
        reply = await self.jetstream._nc.request(
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{config['durable_name']}",
            json.dumps({"stream_name": stream, "config": config}).encode(),
            timeout=self.jetstream.settings.timeout,
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            why = answer["error"].get("description")
            try:  # made by another broker with other settings: its settings stay
                await self.jetstream._js.consumer_info(stream, config["durable_name"])
            except Exception:
                if name not in self._refused:
                    log.warning("store: the consumer of %s was refused: %s", name, why)
                    self._refused.add(name)
                return False
            log.warning("store: the consumer of %s keeps its settings (%s)", name, why)
        self._consumers[name] = max_deliver
        self._refused.discard(name)
        return True

    async def _on_message(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None:  # the end of a pull request (expired, or refused)
            try:
                name = token_name(token)
            except ValueError:
                return
            if status in ("503", "409"):  # no such consumer (the stream made again), or gone
                self._consumers.pop(name, None)
            left = msg.headers.get("Nats-Pending-Messages") if msg.headers else None
            asked = self._asked.get(name, 0)
            self._asked[name] = max(0, asked - int(left)) if left is not None else 0
            router = self._router
            service = router.services.get(name) if router is not None else None
            if service is not None and left is not None and int(left) > 0:
                service.backlog = 0  # it waited and got nothing: nothing waits in the stream
            return
        self._take(msg)

    def _take(self, msg: Msg) -> None:
        """A message of the stream for this broker: hand it to the router."""
        parts = msg.subject.split(".")
        try:
            queue, n = token_name(parts[2]), int(parts[3])
            m = message(queue, n, msg.data)[0]
            body, headers = decode_request(m.payload)
            delivered, backlog = msg.metadata.num_delivered, msg.metadata.num_pending
        except (IndexError, ValueError, msgspec.DecodeError, AttributeError):
            log.warning("store: %s is not a maitred request; it is not delivered", msg.subject)
            self._send(msg.reply, b"+TERM")
            return
        self._asked[queue] = max(0, self._asked.get(queue, 0) - 1)
        router = self._router
        if router is None or router.draining or self._stopping:
            self._send(msg.reply, b"-NAK")
            return
        key = (queue, n)
        again = key in self._held
        self._held[key] = msg
        if again:  # JetStream gave it again while held here: the newer delivery is kept
            return
        self.pulled += 1
        router.service(queue).backlog = backlog or 0
        deliveries = max(m.deliveries, delivered - 1)
        now = self.clock()
        request = self._parked.pop(key, None)
        if request is not None and request.state is RequestState.QUEUED:
            request.deliveries = deliveries
            router.resume_stored(request, now)
        else:
            router.restore(queue, body, headers, n, deliveries, now)
        self._poke.set()

    async def _count_waiting(self) -> None:
        """Every :data:`COUNT_EVERY` seconds: what waits in the stream for each service, not
        pulled by any broker (its consumer's ``num_pending``), for the router's listings (a
        service with stored requests and no worker is listed, as with SQLite)."""
        while not self._stopping:
            try:
                self.count(await self._consumers_info())
            except Exception as exc:  # JetStream away: counted again at the next turn
                log.debug("store: counting the stream's messages failed: %s", exc)
            await asyncio.sleep(COUNT_EVERY)

    async def _consumers_info(self) -> list[Any]:
        stream = self.jetstream.stream
        infos: list[Any] = []
        for _ in range(40):  # (256 a page)
            page = await self.jetstream._js.consumers_info(stream, offset=len(infos) or None)
            infos.extend(page)
            if len(page) < 256:
                break
        return infos

    def count(self, infos: list[Any]) -> None:
        """Set each store service's backlog from its consumer's info (``ConsumerInfo``)."""
        router = self._router
        if router is None:
            return
        prefix, suffix = f"{self.jetstream.stream}.m.", ".*.body"
        waiting: dict[str, int] = {}
        for info in infos:
            subject = info.config.filter_subject or ""
            if not subject.startswith(prefix) or not subject.endswith(suffix):
                continue
            try:
                name = token_name(subject[len(prefix) : -len(suffix)])
            except ValueError:
                continue
            if router.policy_for(name).on_no_worker == "store":
                waiting[name] = info.num_pending or 0
        for name, service in list(router.services.items()):
            if service.backlog and name not in waiting:
                router.set_backlog(name, 0)
        for name, n in waiting.items():
            router.set_backlog(name, n)

    async def _on_exceeded(self, msg: Msg) -> None:
        """JetStream stopped delivering a message (``max_deliver``): its last broker died with
        it. Move it to the dead letters (every broker that hears this does; the same subject)."""
        try:
            event = json.loads(msg.data)
            seq, deliveries = int(event["stream_seq"]), int(event["deliveries"])
            got = await self.jetstream._js.get_msg(self.jetstream.stream, seq=seq)
            parts = (got.subject or "").split(".")
            queue, n = token_name(parts[2]), int(parts[3])
            m = message(queue, n, got.data or b"")[0]
        except Exception as exc:  # gone already (another broker moved it), or not ours
            log.debug("store: a max-deliveries advisory was not taken: %s", exc)
            return
        m.deliveries = deliveries
        self.dead_letter(m, f"delivered {deliveries} times by JetStream, never answered")

    async def _keep_alive(self) -> None:
        """Tell JetStream the messages held here are still being worked on."""
        nc = self.jetstream._nc
        for msg in list(self._held.values()):
            await nc.publish(msg.reply, b"+WPI")
        router = self._router
        if router is not None:  # accepted here, served by another broker: forgotten
            self._parked = {
                k: r
                for k, r in self._parked.items()
                if r.state is RequestState.QUEUED
                and not r.caller.closed
                and r.caller is not router._orphans
            }

    def _send(self, reply: str | None, what: bytes) -> None:
        if not reply:
            return
        task = asyncio.get_running_loop().create_task(self.jetstream._nc.publish(reply, what))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    # -- Journal -----------------------------------------------------------------------------

    def append(self, request: Request) -> None:
        if request.caller in self._bypass:
            return
        request.stored = 0  # (its id is taken when its batch is written)
        if request.service not in self._consumers and self._router is not None:
            service = self._router.services.get(request.service)
            if service is not None:
                self._wanted[request.service] = service.policy.max_deliveries
                self._poke.set()
        self.jetstream.append_fresh(
            StoredMessage(
                request.service,
                -1,
                encode_request(request.body, request.headers),
                KIND,
                request.caller.label,
                time.time_ns(),
                request.deliveries,
            ),
            lambda n: self._numbered(request, n),
        )
        self.appended += 1
        self._schedule()

    def _numbered(self, request: Request, n: int) -> None:
        request.stored = n
        self._parked[(request.service, n)] = request

    def done(self, request: Request) -> None:
        msg = self._held.pop((request.service, request.stored), None)
        if msg is None:
            super().done(request)
            return
        self._send(msg.reply, b"+ACK")
        self._poke.set()

    def redelivered(self, request: Request) -> None:
        """Its worker died: when the router has no other free worker here for it (it is still
        queued once the router's call returns), it goes back to the stream, where any broker's
        worker may take it. JetStream counts that delivery (``-NAK``), as SQLite counts the
        redelivery of a request whose worker died."""
        key = (request.service, request.stored)
        if key not in self._held:
            return
        if not self._orphaned:
            asyncio.get_running_loop().call_soon(self._give_back)
        self._orphaned[key] = request

    def _give_back(self) -> None:
        orphaned, self._orphaned = self._orphaned, {}
        router = self._router
        for key, request in orphaned.items():
            msg = self._held.get(key)
            if msg is None or router is None or not router.unqueue_stored(request):
                continue  # a worker here took it (or it was answered, or dead-lettered)
            del self._held[key]
            self._parked[key] = request  # (resumed with its caller if it comes back here)
            self.given_back += 1
            self._send(msg.reply, b"-NAK")

    def dead(self, request: Request, reason: str) -> None:
        # the dead letter and the purge of the message go in one batch: it is not acknowledged
        # before (a broker that died between the two would lose it)
        self._held.pop((request.service, request.stored), None)
        super().dead(request, reason)

    # -- stop --------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Hand the messages held here back to the stream (another broker takes them at once),
        then commit the rest and close the store."""
        self._stopping = True
        for task in (self._task, self._counter):
            if task is not None:
                task.cancel()
        nc = self.jetstream._nc
        held, self._held = self._held, {}
        try:
            for msg in held.values():
                await nc.publish(msg.reply, b"-NAK")
            self.handed_back += len(held)
            if self._sends:
                await asyncio.gather(*self._sends, return_exceptions=True)
        except Exception:
            log.warning("store: handing messages back failed", exc_info=True)
        await self.jetstream.drain()

    def close(self) -> None:
        self._stopping = True
        for task in (self._task, self._counter):
            if task is not None:
                task.cancel()
        super().close()

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        out["pulled"] = self.pulled
        out["handed_back"] = self.handed_back
        out["given_back"] = self.given_back
        return out
