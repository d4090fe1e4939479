"""Registers the WebSocket transport (entry point ``ws`` of group ``maitred`` in pyproject.toml),
through the same hook a third-party plugin uses."""

from __future__ import annotations

from collections.abc import Sequence

from maitred.core.transport import BrokerPort, TransportSpec
from maitred.plugins import hookimpl
from maitred.transports.ws.adapter import WsConfig, WsTransport, cli_addresses


def _factory(config: WsConfig, port: BrokerPort) -> WsTransport:
    return WsTransport(config, port)


@hookimpl
def maitred_transports() -> Sequence[TransportSpec]:
    return [
        TransportSpec(
            name="ws",
            config_type=WsConfig,
            factory=_factory,
            description="WebSocket: the middleman text protocol and the maitred.json dialect",
            cli_addresses=cli_addresses,
            cli_metavar="HOST:PORT",
        )
    ]
