"""Broker-owned headers: a client's Cid/Uid/Rid, in any letter case, never reach the core."""

from __future__ import annotations

import pytest

from maitred.core.routing.headers import (
    HeaderPairs,
    client_headers,
    is_broker_header,
    pairs_of,
)
from tests.core.harness import Harness, sink_of

SPOOF = ["Uid", "UID", "uId", "uid", "Cid", "CID", "cId", "Rid", "RID", "rId"]


@pytest.mark.parametrize("name", SPOOF)
def test_broker_names_in_any_case(name: str) -> None:
    assert is_broker_header(name)


@pytest.mark.parametrize("name", ["Reqid", "Uidx", "X-Uid", "u id", ""])
def test_other_names_are_the_clients(name: str) -> None:
    assert not is_broker_header(name)


def test_client_headers_drops_and_stamps() -> None:
    got = client_headers({"uid": "admin", "RID": "1", "Reqid": "7"}, [("Cid", "c1"), ("Uid", "")])
    assert list(pairs_of(got)) == [("Reqid", "7"), ("Cid", "c1"), ("Uid", "")]
    assert got is not None and got["Uid"] == ""


def test_client_headers_keeps_repeats_and_order() -> None:
    raw = HeaderPairs([("A", "1"), ("uId", "x"), ("A", "2")])
    got = client_headers(raw)
    assert isinstance(got, HeaderPairs)
    assert got.pairs == (("A", "1"), ("A", "2"))
    assert got["A"] == "1"


def test_client_headers_is_free_when_clean() -> None:
    clean = {"Reqid": "1"}
    assert client_headers(clean) is clean
    assert client_headers(None) is None
    assert client_headers({}, [("Cid", "c")]) == {"Cid": "c"}


def _spoofed() -> dict[str, str]:
    return {"uid": "admin", "UID": "admin", "cId": "x", "rId": "1", "Reqid": "r"}


def test_router_drops_spoofed_headers_on_every_path() -> None:
    h = Harness()
    client = h.session("client")
    worker = h.worker("svc")
    sub = h.session("sub")
    h.router.subscribe(sub, "t")
    # publish
    h.router.publish(client, "t", (b"x",), _spoofed(), stamp=[("Cid", "c1"), ("Uid", "u1")])
    [(_, _, headers)] = sink_of(sub).events
    assert headers == {"Reqid": "r", "Cid": "c1", "Uid": "u1"}
    # request
    request = h.req(client, "svc", headers=_spoofed(), stamp=[("Cid", "c1")])
    assert dict(request.headers or {}) == {"Reqid": "r", "Cid": "c1"}
    # reply
    assert h.router.reply(worker, request.id, (b"ok",), h.now, headers=_spoofed())
    assert sink_of(client).reply_headers == [{"Reqid": "r"}]
    # the broker's own publications (session None) are sanitised all the same
    h.router.publish(None, "t", (b"y",), {"RID": "9"})
    assert sink_of(sub).events[-1][2] == {}


def test_reply_headers_are_an_argument_of_each_reply() -> None:
    """The sink gets each reply's own headers: a partial's do not stay for the final reply."""
    h = Harness()
    client = h.session("client")
    worker = h.worker("svc")
    request = h.req(client, "svc")
    assert h.router.reply(worker, request.id, (b"p",), h.now, final=False, headers={"X": "1"})
    assert h.router.reply(worker, request.id, (b"f",), h.now, stamp=[("Uid", "u")])
    assert sink_of(client).reply_headers == [{"X": "1"}, None]
    assert not hasattr(request, "reply_headers")
