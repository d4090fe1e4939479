"""The contract between the core and a transport (a front end that speaks one wire protocol).

A plugin declares a transport with a :class:`TransportSpec` (returned from the
``maitred_transports`` hook). When the broker starts it decodes ``[transports.NAME]`` into the
spec's ``config_type`` and calls ``factory(config, port)``; the result must satisfy
:class:`Transport`. The transport talks to the core only through the :class:`BrokerPort` it is
given: the router's public methods (sessions, workers, requests, topics), the clock, and a few
runtime services.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from maitred.core.access import Identity
from maitred.core.clock import Clock
from maitred.core.durable import StoreHint, StoreJournal
from maitred.core.preflight import Problem
from maitred.core.routing.router import Liveness, Router


class Transport(Protocol):
    """A running front end. ``start`` binds and listens; ``stop_accepting`` begins the drain
    (no new connections or requests; replies still flow); ``close`` says goodbye to every peer
    and releases the sockets."""

    name: str

    async def start(self) -> None: ...

    def endpoints(self) -> list[str]:
        """Where it listens, as actually bound (an ephemeral port shows its real number)."""
        ...

    async def stop_accepting(self) -> None: ...

    async def close(self) -> None: ...


class BrokerPort:
    """What a transport may use of the broker. Built once by the runtime."""

    def __init__(
        self,
        router: Router,
        clock: Clock,
        liveness: Liveness,
        *,
        authenticate: Callable[[str, Mapping[str, Any]], Identity | None] | None = None,
        info: Callable[[], dict[str, Any]] | None = None,
        max_message_size: int = 1 << 20,
    ) -> None:
        self.router = router
        self.clock = clock
        self.liveness = liveness
        self._authenticate = authenticate
        self._info = info or (lambda: {})
        self.max_message_size = max_message_size
        #: the durable store of ``on_no_worker = "store"`` services, when one is open: a
        #: transport awaits ``journal.committed()`` before it tells a caller "accepted"
        self.journal: StoreJournal | None = None

    @property
    def stats(self) -> Counter[str]:
        """Counters shared by the core and transports (``transport.reason`` keys)."""
        return self.router.stats

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def authenticate(
        self, transport: str, credentials: Mapping[str, Any], default: Identity | None
    ) -> Identity | None:
        """Ask the authenticator plugins who presents ``credentials``; ``default`` when none
        of them has an opinion (None means: refuse)."""
        if self._authenticate is not None:
            identity = self._authenticate(transport, credentials)
            if identity is not None:
                return identity
        return default

    def info(self) -> dict[str, Any]:
        return self._info()


@dataclass(frozen=True)
class TransportSpec:
    """A transport as a plugin declares it."""

    #: the name of its ``[transports.NAME]`` table and of its CLI flag (``--NAME ADDR``)
    name: str
    #: a msgspec Struct with the transport's settings; must have an ``enabled: bool`` field
    config_type: type[msgspec.Struct]
    #: builds the transport from its decoded config and the broker port
    factory: Callable[[Any, BrokerPort], Transport]
    #: one line for ``maitred --help`` and the docs
    description: str = ""
    #: turns the addresses given as ``--NAME ADDR`` (repeatable) into config keys
    cli_addresses: Callable[[Sequence[str]], dict[str, Any]] | None = None
    #: metavar for the CLI flag
    cli_metavar: str = "ADDR"
    #: what ``serve`` would fail on that the config type cannot see (addresses that cannot be
    #: bound, TLS material that does not load, store files that cannot be written); run by
    #: ``maitred check`` and before ``serve`` binds anything (see :mod:`maitred.core.preflight`)
    preflight: Callable[[Any], Sequence[Problem]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: whether the transport, so configured, keeps messages in the broker's one durable store
    #: (a hint: the store is opened at start), with the settings of its deprecated store keys
    store_hint: Callable[[Any], StoreHint | None] | None = None


class BrokerClient(Protocol):
    """A blocking client the CLI uses (``maitred call``, ``worker``, ``services``), provided by
    the transport plugin that understands the broker URL (hook ``maitred_connect``)."""

    def request(self, service: str, body: Sequence[bytes], timeout: float) -> list[bytes]:
        """Call ``service``; the final reply's body. Raises TimeoutError or MaitredError."""
        ...

    def serve(
        self,
        service: str,
        handler: Callable[[list[bytes]], list[bytes]],
        *,
        max_requests: int | None = None,
    ) -> None:
        """Serve ``service`` with ``handler`` until interrupted (or ``max_requests`` served)."""
        ...

    def close(self) -> None: ...
