"""Cancels across nodes (part of :class:`~maitred.transports.cluster.fabric.ClusterFabric`):
when a caller gives up on a request a proxy forwarded (client gone, ``cancel``), its node tells
the serving node on ``PREFIX.cancel.NODE``, which cancels the request there (a queued one never
reaches a worker) and answers 531 so the caller's proxy frees its credit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from maitred.core.errors import ErrorCode
from maitred.core.routing.model import Request
from maitred.transports.cluster import codec
from maitred.transports.cluster.codec import Cancel, Kind
from maitred.transports.cluster.part import FabricPart

if TYPE_CHECKING:
    from nats.aio.msg import Msg


class CancelsMixin(FabricPart):
    """The cancel half of the fabric (its state is set up by the fabric)."""

    _served: dict[tuple[str, int], Request]

    def _cancelled(self, request: Request, now: float) -> None:
        """A caller on this node gave up on a request a worker holds: when that worker is a
        proxy (the request was forwarded), tell the serving node."""
        pending = self.peers.pending.get(request.id)
        if pending is None or pending[2].inflight.get(request.id) is not request:
            return
        node = pending[0]
        self.stats["cluster.cancels_sent"] += 1
        self._send(
            f"{self.prefix}.cancel.{node}", codec.encode(Cancel(request.id, self.node, self.epoch))
        )

    async def _on_cancel(self, msg: Msg) -> None:
        c = self._decoded(codec.decode_cancel, msg.data)
        if c is None or not self._from_peer(c.node, c.epoch):
            return
        request = self._served.pop((c.node, c.token), None)
        if request is None:  # answered already: its reply is on the way
            return
        self.stats["cluster.cancelled"] += 1
        self.port.cancel(request, self.port.clock())
        # the caller's proxy holds the request until it hears of it: this frees it there
        self._reply(
            request.correlation,
            Kind.ERROR,
            (b"cancelled by the caller",),
            int(ErrorCode.CANCELLED),
        )
