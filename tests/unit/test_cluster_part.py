"""What every message from NATS passes in the cluster fabric (cluster/part.py), without NATS:
it decodes, it comes from a live peer in the epoch it says (each drop counted by its reason),
and a reply to a forwarded request goes to its node's reply subject."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from maitred.transports.cluster import codec
from maitred.transports.cluster.codec import Cancel, Kind
from maitred.transports.cluster.part import Caller, FabricPart
from maitred.transports.cluster.peers import Peer


class _Part(FabricPart):
    def __init__(self) -> None:
        self.prefix, self.node, self.epoch = "p", "me", 7
        self.stats = Counter()
        peers: Any = SimpleNamespace(peers={"b": Peer("b", 2, "addr", 0.0, 0.0)})
        self.peers = peers
        self.sent: list[tuple[str, bytes]] = []

    def _send(self, subject: str, payload: bytes) -> None:
        self.sent.append((subject, payload))


def test_a_message_that_does_not_decode_is_dropped_and_counted() -> None:
    part = _Part()
    good = codec.encode(Cancel(5, "b", 2))
    assert part._decoded(codec.decode_cancel, good) == Cancel(5, "b", 2)
    assert part._decoded(codec.decode_cancel, b"\xc1 not msgpack") is None
    assert part.stats == Counter({"cluster.dropped.malformed": 1})


def test_only_a_live_peer_in_its_epoch_is_heard() -> None:
    part = _Part()
    assert part._from_peer("b", 2)
    assert not part._from_peer("b", 3)  # restarted: another epoch
    assert not part._from_peer("x", 2)  # not a peer (yet, or any more)
    assert not part._from_peer("b", 1, stale="cluster.dropped.other")
    assert part.stats == Counter(
        {
            "cluster.dropped.stale_epoch": 1,
            "cluster.dropped.unknown_node": 1,
            "cluster.dropped.other": 1,
        }
    )


def test_a_reply_goes_to_the_caller_node_with_this_node_and_epoch() -> None:
    part = _Part()
    part._reply(Caller("b", 9), Kind.FINAL, (b"ok",), 0, {"traceparent": "t"})
    [(subject, payload)] = part.sent
    assert subject == "p.rep.b"
    reply = codec.decode_reply(payload)
    assert (reply.token, reply.node, reply.epoch, reply.body) == (9, "me", 7, [b"ok"])
    assert reply.headers == {"traceparent": "t"}
