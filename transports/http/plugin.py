"""Registers the HTTP transport (REST, metrics, message switch) and the CLI client for
``http://`` and ``unix:`` broker URLs (entry point ``http`` of group ``maitred``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from maitred.core.transport import BrokerClient, BrokerPort, TransportSpec
from maitred.plugins import hookimpl
from maitred.transports.http.adapter import HttpConfig, HttpTransport, cli_addresses

if TYPE_CHECKING:
    pass

SCHEMES = ("http://", "unix:")


def _factory(config: HttpConfig, port: BrokerPort) -> HttpTransport:
    return HttpTransport(config, port)


@hookimpl
def maitred_transports() -> Sequence[TransportSpec]:
    return [
        TransportSpec(
            name="http",
            config_type=HttpConfig,
            factory=_factory,
            description="REST API under /v1/, /metrics, and the xapi message switch (Gen 3)",
            cli_addresses=cli_addresses,
            cli_metavar="HOST:PORT|unix:PATH",
        )
    ]


@hookimpl
def maitred_connect(url: str, timeout: float) -> BrokerClient | None:
    if url.startswith(SCHEMES):
        from maitred.transports.http.client import HttpCliClient

        return HttpCliClient(url, timeout)
    return None


@hookimpl
def maitred_add_commands(subparsers: Any) -> None:
    """message-cli's verbs: list, diagnostics, ack, destroy, tail, mscgen, shutdown."""
    from maitred.transports.http.cli import add_commands

    add_commands(subparsers)
