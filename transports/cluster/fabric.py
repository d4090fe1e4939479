"""The cluster fabric: this broker as one node of a cluster whose nodes meet on NATS.

It is a transport on the port like the others. Each node announces its services (and its
epoch, a random 64-bit number drawn at start) on ``PREFIX.state.NODE`` every
``announce_interval`` and at once when they change; for each service another node announces,
the fabric registers a **proxy worker** (``remote``): the core hands it a request only when no
local worker is free, and the fabric forwards it to that node, whose fabric submits it on its
own port (local workers only) and streams the partial replies, the final reply or the error
back. A node that misses ``missed_announcements`` announcements is gone: its proxies leave like
dead workers (their requests fail with 502, or are redelivered by the service's policy).

Publications cross too: one NATS subscription per pattern in use on this node, local
publications go out on their topic's subject, and each node republishes what it receives to
its own subscribers (never back out). See docs/topics/cluster.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from maitred.core.access import Identity
from maitred.core.errors import ErrorCode, MaitredError
from maitred.core.routing.model import (
    BaseSink,
    Body,
    Headers,
    ReplyKind,
    Request,
    RequestState,
    Worker,
)
from maitred.core.transport import BrokerPort
from maitred.transports.cluster import codec
from maitred.transports.cluster.cancels import CancelsMixin
from maitred.transports.cluster.codec import Forward, Kind
from maitred.transports.cluster.config import ClusterConfig, connect_options
from maitred.transports.cluster.part import Caller
from maitred.transports.cluster.peers import Peers, ProxySink
from maitred.transports.cluster.topics import TopicsMixin

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = logging.getLogger("maitred.transports.cluster")

#: who the fabric's sessions are (``[access]`` rules may name the role ``cluster``)
CLUSTER = Identity("cluster", frozenset({"cluster"}))
_json = msgspec.json.Encoder()


class _InSink(BaseSink):
    """The session of the requests other nodes forwarded here, and of the fabric's own
    subscription to every local publication."""

    __slots__ = ("fabric",)

    def __init__(self, fabric: ClusterFabric) -> None:
        self.fabric = fabric

    def deliver_reply(
        self, request: Request, kind: ReplyKind, body: Body, headers: Headers | None
    ) -> None:
        kind_ = Kind.FINAL if kind == ReplyKind.FINAL else Kind.PARTIAL
        self.fabric._send_reply(request, kind_, body, headers=headers)

    def deliver_error(self, request: Request, error: MaitredError) -> None:
        self.fabric._send_reply(request, Kind.ERROR, (error.reason.encode(),), int(error.code))

    def deliver_event(self, topic: str, body: Body, headers: Headers) -> None:
        self.fabric._local_publication(topic, body, headers)


class ClusterFabric(TopicsMixin, CancelsMixin):
    """The ``cluster`` transport (see the module docstring)."""

    name = "cluster"

    def __init__(self, config: ClusterConfig, port: BrokerPort) -> None:
        self.config = config
        self.port = port
        self.node = config.node_name()
        self.epoch = secrets.randbits(63) + 1
        self.prefix = config.subject_prefix
        self.stats = port.stats
        self.nc: Client | None = None
        now = port.clock()
        self.session = port.open_session(
            "cluster",
            _InSink(self),
            CLUSTER,
            now,
            label=f"cluster:{self.node}",
            quiet=True,
            local_only=True,
        )
        self.proxy_session = port.open_session(
            "cluster",
            ProxySink(self._forward),
            CLUSTER,
            now,
            label="cluster:proxies",
            quiet=True,
        )
        self.peers = Peers(port, self.proxy_session)
        self._out: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: dict[str, Subscription] = {}
        self._stops: list[Callable[[], None]] = []
        self._seq = 0
        self._pub_seq = 0
        #: (node, epoch) -> the last publication seq taken from it
        self._pub_seen: dict[str, tuple[int, int]] = {}
        #: a publication from another node is being republished here: not sent back out
        self._republishing = False
        self._announce_soon: asyncio.TimerHandle | None = None
        self._closing = False
        self._beats = 0
        #: (caller's node, token) -> the request it forwarded here, until it is answered
        self._served: dict[tuple[str, int], Request] = {}
        #: the services this node's last announcement named
        self._local_names: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        import nats  # the optional extra: imported only when a cluster is configured

        self.port.set_node_name(self.node)  # this node's own $sys events say it, joined or not
        try:
            nc = await self._connect(nats)
        except Exception as exc:
            where = ", ".join(self.config.nats)
            if self.config.required:
                raise MaitredError(
                    f"cluster: cannot reach NATS at {where} ({exc or type(exc).__name__}); "
                    "start nats-server, or set [cluster] required = false to serve locally",
                    ErrorCode.INTERNAL,
                ) from None
            log.warning(
                "cluster: cannot reach NATS at %s (%s): serving locally, retrying",
                where,
                exc or type(exc).__name__,
            )
            self._tasks.append(asyncio.ensure_future(self._retry_connect()))
            return
        await self._join(nc)

    async def _retry_connect(self) -> None:
        import nats

        while not self._closing:
            await asyncio.sleep(self.config.connect_timeout)
            try:
                nc = await self._connect(nats)
            except Exception:
                continue
            try:
                await self._join(nc)
            except MaitredError as exc:
                log.error("cluster: %s; serving locally", exc.reason)
            return

    async def _connect(self, nats: Any) -> Client:
        """Connect (nats-py retries a first connection for ever when reconnection is on: the
        wait is bounded here, by twice ``connect_timeout``)."""
        options = connect_options(
            self.config,
            f"maitred {self.node}",
            on_disconnect=self._disconnected,
            on_reconnect=self._reconnected,
            on_error=self._nats_error,
        )
        try:
            nc: Client = await asyncio.wait_for(
                nats.connect(**options), 2 * self.config.connect_timeout
            )
        except TimeoutError:
            raise TimeoutError(f"no answer within {2 * self.config.connect_timeout:g}s") from None
        return nc

    async def _join(self, nc: Client) -> None:
        size = self.port.max_message_size
        if nc.max_payload < size:
            await nc.close()
            raise MaitredError(
                f"cluster: the NATS server's max_payload is {nc.max_payload} bytes, below "
                f"maitred's max_message_size ({size}): raise max_payload in nats-server's "
                "config",
                ErrorCode.INTERNAL,
            )
        taken = await self._name_taken(nc)
        if taken is not None:
            await nc.close()
            raise MaitredError(
                f"cluster: node name {self.node!r} is in use by the node at {taken.address} "
                "(set [cluster] node or --node to another name)",
                ErrorCode.INTERNAL,
            )
        self.nc = nc
        p = self.prefix
        await nc.subscribe(f"{p}.hello.{self.node}", cb=self._on_hello)
        await nc.subscribe(f"{p}.state.*", cb=self._on_state)
        await nc.subscribe(f"{p}.req.{self.node}", cb=self._on_request)
        await nc.subscribe(f"{p}.rep.{self.node}", cb=self._on_reply)
        await nc.subscribe(f"{p}.cancel.{self.node}", cb=self._on_cancel)
        self._stops.append(self.port.watch_cancels(self._cancelled))
        self.port.subscribe(self.session, ">", check=False)
        self._stops.append(self.port.watch_patterns(self._pattern_changed))
        self._stops.append(self.port.add_mmi("mmi.nodes", self._mmi_nodes))
        self._tasks.append(asyncio.ensure_future(self._writer()))
        self._tasks.append(asyncio.ensure_future(self._heartbeat()))
        self._announce()
        log.info(
            "cluster: node %s (epoch %x) joined on %s",
            self.node,
            self.epoch,
            nc.connected_url.geturl() if nc.connected_url else "?",
        )

    async def _name_taken(self, nc: Client) -> codec.Hello | None:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        try:
            msg = await nc.request(
                f"{self.prefix}.hello.{self.node}", b"", timeout=self.config.connect_timeout
            )
        except (NoRespondersError, NatsTimeout):
            return None
        try:
            return codec.decode_hello(msg.data)
        except codec.DecodeError:
            return codec.Hello(self.node, 0, "an unknown address")

    def endpoints(self) -> list[str]:
        return [f"{url} node={self.node}" for url in self.config.nats]

    async def stop_accepting(self) -> None:
        return None

    async def close(self) -> None:
        self._closing = True
        for stop in self._stops:
            stop()
        if self._announce_soon is not None:
            self._announce_soon.cancel()
        nc = self.nc
        if nc is not None and nc.is_connected:
            self._announce(leaving=True)
            await self._flush_out()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        now = self.port.clock()
        for name in list(self.peers.peers):
            self.peers.remove(name, now, f"node {self.node} stops")
        self.port.close_session(self.session, now, "cluster closed")
        self.port.close_session(self.proxy_session, now, "cluster closed")
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:
                log.debug("cluster: closing NATS: %r", exc)

    # -- the outbox -----------------------------------------------------------------------

    def _send(self, subject: str, payload: bytes) -> None:
        if self.nc is None:
            return
        self._out.append((subject, payload))
        self._wake.set()

    async def _writer(self) -> None:
        from nats.errors import MaxPayloadError, OutboundBufferLimitError

        out = self._out
        while True:
            await self._wake.wait()
            self._wake.clear()
            nc = self.nc
            assert nc is not None
            while out:
                subject, payload = out.popleft()
                try:
                    await nc.publish(subject, payload)
                except (OutboundBufferLimitError, MaxPayloadError) as exc:
                    self.stats["cluster.send_failed"] += 1
                    log.debug("cluster: not sent on %s: %r", subject, exc)
                except Exception as exc:
                    self.stats["cluster.send_failed"] += 1
                    log.warning("cluster: cannot send on %s: %r", subject, exc)

    async def _flush_out(self) -> None:
        nc = self.nc
        if nc is None:
            return
        while self._out:
            subject, payload = self._out.popleft()
            try:
                await nc.publish(subject, payload)
            except Exception:
                self.stats["cluster.send_failed"] += 1
        try:
            await nc.flush(timeout=1)
        except Exception:
            pass

    async def _disconnected(self) -> None:
        if self._closing:
            return
        log.warning("cluster: lost NATS; local workers keep serving, reconnecting")

    async def _reconnected(self) -> None:
        log.info("cluster: NATS reconnected")
        self._announce()

    async def _nats_error(self, exc: Exception) -> None:
        log.info("cluster: NATS: %r", exc)

    # -- announcements and liveness ---------------------------------------------------------

    def _local_state(self) -> tuple[list[codec.ServiceState], int]:
        services = []
        load = 0
        for service in self.port.services():
            workers = credit = free = 0
            for worker in service.workers:
                if worker.remote:
                    continue
                workers += 1
                # an adaptive worker takes up to max_credit when its service is busy
                most = max(worker.credit, worker.max_credit)
                credit += most
                free += max(0, most - len(worker.inflight))
                load += len(worker.inflight)
            load += service.queued
            if workers:
                services.append(
                    codec.ServiceState(
                        codec.service_bytes(service.name), workers, credit, free, service.queued
                    )
                )
        return services, load

    def _address(self) -> str:
        endpoints = self.port.info().get("transports", {})
        return " ".join(
            f"{name}={','.join(eps)}"
            for name, eps in sorted(endpoints.items())
            if name != self.name
        )

    def _announce(self, leaving: bool = False) -> None:
        self._announce_soon = None
        services, load = ([], 0) if leaving else self._local_state()
        self._local_names = {codec.service_name(s.name) for s in services}
        self._seq += 1
        a = codec.Announcement(
            self.node, self.epoch, self._seq, self._address(), services, load, leaving
        )
        self._send(f"{self.prefix}.state.{self.node}", codec.encode(a))

    def _changed(self) -> None:
        """Announce soon (changes within 20 ms go out together)."""
        if self._announce_soon is None and not self._closing and self.nc is not None:
            self._announce_soon = asyncio.get_running_loop().call_later(0.02, self._announce)

    async def _heartbeat(self) -> None:
        interval = self.config.announce_interval
        window = interval * self.config.missed_announcements
        while True:
            await asyncio.sleep(interval / 4)
            now = self.port.clock()
            self.peers.retire_due(now, interval)
            for name in self.peers.overdue(now, window):
                self.stats["cluster.nodes_lost"] += 1
                self._leave(
                    name,
                    now,
                    f"node {name} missed {self.config.missed_announcements} announcements",
                )
            self._beats += 1
            if self._beats % 4 == 0:
                self._announce()

    def _leave(self, name: str, now: float, reason: str) -> None:
        peer = self.peers.remove(name, now, reason)
        if peer is None:
            return
        log.info("cluster: %s", reason)
        self._system("$sys.node.leave", {"node": name, "epoch": peer.epoch, "reason": reason})

    async def _on_state(self, msg: Msg) -> None:
        a = self._decoded(codec.decode_announcement, msg.data)
        if a is None:
            return
        if a.node == self.node:
            if a.epoch != self.epoch:
                self.stats["cluster.dropped.name_clash"] += 1
                log.warning("cluster: another node calls itself %s (at %s)", a.node, a.address)
            return
        now = self.port.clock()
        peer = self.peers.peers.get(a.node)
        if peer is not None and peer.epoch != a.epoch:
            self._leave(a.node, now, f"node {a.node} restarted")
        if a.leaving:
            self._leave(a.node, now, f"node {a.node} left")
            return
        peer, new = self.peers.update(a, now)
        if new:
            log.info("cluster: node %s joined (%s)", a.node, a.address)
            self._system("$sys.node.join", {"node": a.node, "epoch": a.epoch, "address": a.address})
            self._changed()  # so the newcomer learns this node at once

    async def _on_hello(self, msg: Msg) -> None:
        if msg.reply:
            self._send(msg.reply, codec.encode(codec.Hello(self.node, self.epoch, self._address())))

    def _mmi_nodes(self, body: Body) -> bytes:
        now = self.port.clock()
        services, load = self._local_state()
        me = {
            "node": self.node,
            "epoch": self.epoch,
            "address": self._address(),
            "age": 0.0,
            "joined_for": None,
            "load": load,
            "services": len(services),
            "inflight": None,
            "self": True,
        }
        # ``{"services": true}`` asks for what each peer announced (the core's ``mmi.services``,
        # ``mmi.workers`` and ``mmi.queues`` ask so for their ``cluster`` scope)
        detail = False
        if body and body[-1].startswith(b"{"):
            try:
                query = msgspec.json.decode(body[-1])
            except msgspec.DecodeError:
                query = None
            detail = isinstance(query, dict) and query.get("services") is True
        return _json.encode([me, *self.peers.rows(now, detail)])

    # -- requests -------------------------------------------------------------------------

    def _forward(self, worker: Worker, request: Request) -> None:
        """A proxy got a request: send it to the proxy's node."""
        name = worker.label.split("/", 1)[0]
        peer = self.peers.peers.get(name)
        now = self.port.clock()
        if peer is None or self.nc is None:
            self.port.reply_error(
                worker, request.id, MaitredError(f"node {name} is gone", ErrorCode.WORKER_DIED), now
            )
            return
        left = request.deadline - now
        if left <= 0:
            left = 1e-3
        forward = Forward(
            request.id,
            codec.service_bytes(request.service),
            0.0 if left == math.inf else left,
            self.node,
            self.epoch,
            list(request.body),
            dict(request.headers) if request.headers else None,
        )
        payload = codec.encode(forward)
        if len(payload) > self.nc.max_payload:
            self.port.reply_error(
                worker,
                request.id,
                MaitredError(
                    f"request too large to forward ({len(payload)} bytes)", ErrorCode.TOO_LARGE
                ),
                now,
            )
            return
        self.peers.pending[request.id] = (peer.name, peer.epoch, worker)
        self.stats["cluster.forwarded"] += 1
        self._send(f"{self.prefix}.req.{peer.name}", payload)

    async def _on_request(self, msg: Msg) -> None:
        f = self._decoded(codec.decode_forward, msg.data)
        if f is None or not self._from_peer(f.node, f.epoch):
            return
        self.stats["cluster.served"] += 1
        name = codec.service_name(f.service)
        caller = Caller(f.node, f.token)
        if not self._has_local_worker(name):
            self._reply(
                caller,
                Kind.ERROR,
                (f"node {self.node} has no worker for {name}".encode(),),
                int(ErrorCode.NO_WORKER),
            )
            return
        try:
            request = self.port.submit(
                self.session,
                name,
                f.body,
                caller,
                self.port.clock(),
                timeout=f.timeout or None,
                headers=f.headers,
            )
        except MaitredError as exc:
            self._reply(caller, Kind.ERROR, (exc.reason.encode(),), int(exc.code))
            return
        if request is not None and request.state in (RequestState.QUEUED, RequestState.DISPATCHED):
            self._served[(caller.node, caller.token)] = request

    def _has_local_worker(self, name: str) -> bool:
        """Whether this node announced a local worker of ``name`` (its last announcement:
        changes are announced within 20 ms)."""
        return name in self._local_names

    def _send_reply(
        self,
        request: Request,
        kind: Kind,
        body: Body,
        code: int = 0,
        headers: Headers | None = None,
    ) -> None:
        caller = request.correlation
        if isinstance(caller, Caller):
            if kind != Kind.PARTIAL:
                self._served.pop((caller.node, caller.token), None)
            self._reply(caller, kind, body, code, dict(headers) if headers else None)

    async def _on_reply(self, msg: Msg) -> None:
        r = self._decoded(codec.decode_reply, msg.data)
        if r is None:
            return
        pending = self.peers.pending.get(r.token)
        if pending is None:
            self.stats["cluster.dropped.late_reply"] += 1
            return
        node, epoch, worker = pending
        if r.node != node or r.epoch != epoch:
            self.stats["cluster.dropped.stale_epoch"] += 1
            return
        now = self.port.clock()
        if r.kind == Kind.PARTIAL:
            self.port.reply(worker, r.token, r.body, now, final=False, headers=r.headers)
            return
        del self.peers.pending[r.token]
        if r.kind == Kind.ERROR:
            reason = r.body[0].decode("utf-8", "replace") if r.body else "error"
            self.port.reply_error(worker, r.token, MaitredError(reason, ErrorCode.of(r.code)), now)
        else:
            self.port.reply(worker, r.token, r.body, now, final=True, headers=r.headers)
