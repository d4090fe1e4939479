"""The plugin module (entry point ``line`` of group ``maitred``): two hook implementations.

- ``maitred_transports``: adds the ``line`` transport, so ``[transports.line]`` (and the
  ``maitred serve --line HOST:PORT`` flag) exist;
- ``maitred_connect``: lets the CLI talk to a broker at ``line://HOST:PORT``
  (``maitred call -b line://127.0.0.1:7070 echo hello``).

Both are stateless, so a module is the right plugin object: the same module may be registered
with many plugin managers (one per broker) without sharing anything. A plugin that keeps state
is an object created per broker instead; see :class:`maitred_line.events.EventCounter`.
"""

from __future__ import annotations

from collections.abc import Sequence

from maitred.core.transport import BrokerClient, BrokerPort, TransportSpec
from maitred.plugins import hookimpl
from maitred_line.client import SCHEME, LineClient
from maitred_line.transport import LineConfig, LineTransport, cli_addresses


def _factory(config: LineConfig, port: BrokerPort) -> LineTransport:
    return LineTransport(config, port)


@hookimpl
def maitred_transports() -> Sequence[TransportSpec]:
    return [
        TransportSpec(
            name="line",
            config_type=LineConfig,
            factory=_factory,
            description="plain TCP text lines for humans (CALL/PUB/SUB; try netcat or telnet)",
            cli_addresses=cli_addresses,
            cli_metavar="HOST:PORT",
            # where maitred.plugins.testing binds it in tests (any free port)
            extra={"ephemeral_address": "127.0.0.1:0"},
        )
    ]


@hookimpl
def maitred_connect(url: str, timeout: float) -> BrokerClient | None:
    if url.startswith(SCHEME):
        return LineClient(url, timeout)
    return None
