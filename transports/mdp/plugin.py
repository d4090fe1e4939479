"""Registers the MDP transport and the MDP CLI client, through the same hooks a third-party
plugin uses (entry point ``mdp`` of group ``maitred`` in pyproject.toml)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from maitred.core.errors import MaitredError
from maitred.core.transport import BrokerClient, BrokerPort, TransportSpec
from maitred.plugins import hookimpl
from maitred.transports.mdp import codec
from maitred.transports.mdp.adapter import MdpConfig, MdpTransport, cli_addresses

SCHEMES = ("tcp://", "ipc://", "inproc://")


def _factory(config: MdpConfig, port: BrokerPort) -> MdpTransport:
    return MdpTransport(config, port)


@hookimpl
def maitred_transports() -> Sequence[TransportSpec]:
    return [
        TransportSpec(
            name="mdp",
            config_type=MdpConfig,
            factory=_factory,
            description="ZeroMQ Majordomo (MDP/0.1, RFC 18 MDP/0.2, majortomo) on a ROUTER socket",
            cli_addresses=cli_addresses,
            cli_metavar="ENDPOINT",
        )
    ]


class MdpCliClient:
    """The blocking client behind ``maitred call/worker/services`` for tcp:// and ipc:// URLs."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client: Any = None

    def request(self, service: str, body: Sequence[bytes], timeout: float) -> list[bytes]:
        from maitred.transports.mdp.client import Client

        if self._client is None:
            self._client = Client(self.url, timeout=timeout)
        reply: list[bytes] = self._client.request(service, *body, timeout=timeout)
        # the broker's error reply (error_replies = true): status code and reason
        error = None if service.startswith("mmi.") else codec.parse_error_body(reply)
        if error is not None:
            raise MaitredError(error[1], error[0])
        return reply

    def serve(
        self,
        service: str,
        handler: Callable[[list[bytes]], list[bytes]],
        *,
        max_requests: int | None = None,
    ) -> None:
        from maitred.transports.mdp.client import Worker

        worker = Worker(self.url, service, handler)
        try:
            worker.run(max_requests=max_requests)
        finally:
            worker.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@hookimpl
def maitred_connect(url: str, timeout: float) -> BrokerClient | None:
    if url.startswith(SCHEMES):
        return MdpCliClient(url, timeout)
    return None
