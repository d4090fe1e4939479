"""The MDP transport's hot-path shortcuts keep their bounds and checks, over real sockets: the
cache of request service names stays bounded, holds only names that passed the checks, and a
name in it still reaches the router as the same service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import zmq

from maitred.transports.mdp import adapter as mdp_adapter
from tests.e2e.helpers import BrokerThread, RawClient, RawWorker, wait_until

Ctx = zmq.Context[Any]

FAIL_AT_ONCE = '[services.default]\non_no_worker = "fail"\n'


def _names(broker: BrokerThread) -> dict[bytes, str]:
    transport = broker.broker.transports["mdp"]
    return broker.call(lambda: dict(transport._names))  # type: ignore[attr-defined]


def test_service_name_cache_is_bounded(
    make_broker: Callable[..., BrokerThread], ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mdp_adapter, "NAME_CACHE", 16)
    broker = make_broker(FAIL_AT_ONCE)
    client = RawClient(ctx, broker.endpoint, "rfc")
    for i in range(50):  # distinct names, each answered 503 at once (no worker)
        client.send(b"svc-%02d" % i, b"x")
        final, body = client.recv(3.0)
        assert final and body[0] == b"503", body
        assert len(_names(broker)) <= 16
    # a name in the cache is the same service as before: a worker for it gets the request
    worker = RawWorker(ctx, broker.endpoint, "rfc", b"svc-49")
    worker.ready()
    wait_until(lambda: broker.call(lambda: "svc-49" in broker.broker.router.services))
    assert b"svc-49" in _names(broker)
    client.send(b"svc-49", b"hello")
    addr, body = worker.request()
    assert body == [b"hello"]
    worker.final(addr, b"ok")
    assert client.recv(3.0) == (True, [b"ok"])


def test_cached_names_are_the_checked_ones(
    make_broker: Callable[..., BrokerThread], ctx: Ctx
) -> None:
    broker = make_broker(FAIL_AT_ONCE)
    client = RawClient(ctx, broker.endpoint, "rfc")
    for name in (b"", b"\xff\xfe", b"n" * 256):  # empty, not UTF-8, too long: never cached
        client.send(name, b"x")
    client.send(b"ok", b"x")
    final, body = client.recv(3.0)  # only the long name and "ok" are answered (400, 503)
    assert final and body[0] in (b"400", b"503")
    final, body = client.recv(3.0)
    assert final and body[0] in (b"400", b"503")
    assert _names(broker) == {b"ok": "ok"}
    stats = broker.stats()
    assert stats["mdp.rejected.empty service name"] == 1
    assert stats["mdp.rejected.service name not UTF-8"] == 1
    assert stats["mdp.rejected.service name too long"] == 1
