"""Publications across nodes (part of :class:`~maitred.transports.cluster.fabric.ClusterFabric`):
one NATS subscription per pattern in use on this node, local publications out on their topic's
subject, what other nodes publish republished here once per session and never sent back out."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from maitred.core.errors import MaitredError
from maitred.core.routing.model import Body, Headers
from maitred.transports.cluster import codec
from maitred.transports.cluster.codec import Publication
from maitred.transports.cluster.part import FabricPart

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = logging.getLogger("maitred.transports.cluster")
_json = msgspec.json.Encoder()
_json_decode = msgspec.json.Decoder(dict[str, Any])


class TopicsMixin(FabricPart):
    """The publication half of the fabric (its state is set up by the fabric)."""

    nc: Client | None
    _subs: dict[str, Subscription]
    _tasks: list[asyncio.Task[None]]
    _pub_seq: int
    _pub_seen: dict[str, tuple[int, int]]
    _republishing: bool

    if TYPE_CHECKING:  # the fabric's own

        def _changed(self) -> None: ...

    def _system(self, topic: str, payload: dict[str, Any]) -> None:
        self._republishing = True  # this node's own view: it does not cross
        try:
            self.port.publish(None, topic, (_json.encode(payload),))
        finally:
            self._republishing = False

    def _pattern_changed(self, pattern: str, added: bool) -> None:
        nc = self.nc
        if nc is None:
            return
        subject = codec.topic_subject(self.prefix, pattern)
        self._tasks.append(asyncio.ensure_future(self._resubscribe(subject, added)))

    async def _resubscribe(self, subject: str, added: bool) -> None:
        nc = self.nc
        assert nc is not None
        try:
            if added and subject not in self._subs:
                self._subs[subject] = await nc.subscribe(subject, cb=self._on_publication)
            elif not added and subject in self._subs:
                await self._subs.pop(subject).unsubscribe()
        except Exception as exc:
            log.warning("cluster: cannot (un)subscribe %s: %r", subject, exc)
        finally:
            self._tasks = [t for t in self._tasks if not t.done()]

    def _local_publication(self, topic: str, body: Body, headers: Headers) -> None:
        if self._republishing or self.nc is None:
            return
        if topic.startswith("$sys."):
            if topic.startswith(("$sys.worker.", "$sys.service.")):
                self._changed()
            if topic.startswith("$sys.node.") or not body:
                return
            try:
                payload = _json_decode.decode(body[0])
            except msgspec.DecodeError:
                payload = None
            if payload is not None:
                payload.setdefault("node", self.node)
                body = (_json.encode(payload),)
        self._pub_seq += 1
        pub = Publication(
            self.node,
            self.epoch,
            self._pub_seq,
            topic,
            list(body),
            dict(headers) if headers else None,
        )
        self._send(codec.topic_subject(self.prefix, topic), codec.encode(pub))

    async def _on_publication(self, msg: Msg) -> None:
        p = self._decoded(codec.decode_publication, msg.data)
        if p is None:
            return
        if p.node == self.node:
            self.stats["cluster.dropped.echo"] += 1
            return
        if not self._from_peer(p.node, p.epoch, stale="cluster.dropped.unknown_node"):
            return
        if (
            codec.topic_subject(self.prefix, p.topic) != msg.subject
            or "*" in p.topic.split(".")
            or p.topic.endswith(">")
        ):
            self.stats["cluster.dropped.bad_topic"] += 1
            return
        seen = self._pub_seen.get(p.node)
        if seen is not None and seen[0] == p.epoch and p.seq <= seen[1]:
            return  # matched a second pattern of this node: taken once already
        self._pub_seen[p.node] = (p.epoch, p.seq)
        self._republishing = True
        try:
            self.port.publish(None, p.topic, p.body, p.headers)
        except MaitredError:
            self.stats["cluster.dropped.bad_topic"] += 1
        finally:
            self._republishing = False
