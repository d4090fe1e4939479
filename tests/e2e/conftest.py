"""Fixtures for end-to-end tests (see helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from tests.e2e.helpers import BASE, BrokerThread, zmq_context
from tests.e2e.http_helpers import RawHttp


@pytest.fixture
def make_broker() -> Iterator[Callable[..., BrokerThread]]:
    started: list[BrokerThread] = []

    def make(extra: str = "", mdp: str = "") -> BrokerThread:
        """``extra``: TOML tables; ``mdp``: more keys for ``[transports.mdp]``."""
        b = BrokerThread(extra + "\n" + BASE + mdp)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop(drain_timeout=0)


@pytest.fixture
def broker(make_broker: Callable[..., BrokerThread]) -> BrokerThread:
    return make_broker("")


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    with zmq_context() as context:
        yield context


@pytest.fixture
def conns() -> Iterator[list[RawHttp]]:
    """Raw HTTP connections a test opens (``http_helpers.connect``), closed after it."""
    opened: list[RawHttp] = []
    yield opened
    for c in opened:
        c.close()
