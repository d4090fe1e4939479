"""What the halves of :class:`~maitred.transports.cluster.fabric.ClusterFabric` share: the
fabric's state they read (set up by the fabric), the reply to a request another node forwarded
here, and the checks every message from NATS passes before it is taken (it decodes; it comes
from a live peer in the epoch it says)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec

from maitred.core.routing.model import Body
from maitred.core.transport import BrokerPort
from maitred.transports.cluster import codec
from maitred.transports.cluster.codec import Kind, Reply
from maitred.transports.cluster.peers import Peers

_T = TypeVar("_T")


class Caller(msgspec.Struct, array_like=True):
    """The correlation of a request another node forwarded here."""

    node: str
    token: int


class FabricPart:
    """A part of the fabric (its state is set up by the fabric)."""

    port: BrokerPort
    prefix: str
    node: str
    epoch: int
    stats: Counter[str]
    peers: Peers

    if TYPE_CHECKING:  # the fabric's own

        def _send(self, subject: str, payload: bytes) -> None: ...

    def _reply(
        self,
        caller: Caller,
        kind: Kind,
        body: Body,
        code: int = 0,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send ``caller``'s node a reply to the request it forwarded here."""
        reply = Reply(caller.token, int(kind), self.node, self.epoch, list(body), code, headers)
        self._send(f"{self.prefix}.rep.{caller.node}", codec.encode(reply))

    def _decoded(self, decode: Callable[[bytes], _T], data: bytes) -> _T | None:
        """``decode(data)``; None, counted ``cluster.dropped.malformed``, when it fails."""
        try:
            return decode(data)
        except codec.DecodeError:
            self.stats["cluster.dropped.malformed"] += 1
            return None

    def _from_peer(self, node: str, epoch: int, stale: str = "cluster.dropped.stale_epoch") -> bool:
        """Whether ``node`` is a live peer in ``epoch``; if not, counted: ``stale`` when the
        peer is there in another epoch, else ``cluster.dropped.unknown_node``."""
        peer = self.peers.peers.get(node)
        if peer is not None and peer.epoch == epoch:
            return True
        self.stats[stale if peer is not None else "cluster.dropped.unknown_node"] += 1
        return False
