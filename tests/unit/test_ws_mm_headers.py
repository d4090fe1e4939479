"""Middleman's own header handling: whatever reaches it, the broker's Cid/Uid/Rid are the only
ones a peer reads (names compared without regard to case)."""

from __future__ import annotations

from maitred.core.routing.headers import HeaderPairs
from maitred.transports.ws.middleman import _first, _without_own
from maitred.transports.ws.mm_codec import MmHeaders, encode, parse


def test_without_own_drops_every_case_of_the_broker_names() -> None:
    headers = MmHeaders([("uid", "admin"), ("X", "1"), ("RID", "1"), ("cId", "c"), ("X", "2")])
    assert _without_own(headers) == [("X", "1"), ("X", "2")]
    assert _without_own({"UID": "a", "Reqid": "r"}) == [("Reqid", "r")]
    assert _without_own(None) == []


def test_first_is_case_insensitive() -> None:
    pairs = [("reqid", "1"), ("Reqid", "2")]
    assert _first(pairs, "Reqid") == "1"
    assert _first(pairs, "Rid") is None


def test_a_peer_reads_the_broker_values() -> None:
    """A REQ built as deliver_request builds it reads back with one Uid, the broker's."""
    client = HeaderPairs([("uid", "admin"), ("Reqid", "7")])
    frame = encode("REQ", "svc", [*_without_own(client), ("Cid", "c1"), ("Uid", ""), ("Rid", "5")])
    msg = parse(frame)
    assert msg.headers == (("Reqid", "7"), ("Cid", "c1"), ("Uid", ""), ("Rid", "5"))
