"""Registers the WebSocket transport (entry point ``ws`` of group ``maitred`` in pyproject.toml),
through the same hook a third-party plugin uses."""

from __future__ import annotations

from maitred.core.credentials import SecretError, secret_file_problem
from maitred.core.preflight import Problem, check_each, check_host_port, check_tls
from maitred.core.transport import BrokerClient, TransportSpec
from maitred.plugins import hookimpl, transports_hook
from maitred.transports.ws.adapter import (
    WsConfig,
    WsTransport,
    cli_addresses,
    key_value,
    secret_files,
)


def _listen_problem(addr: str) -> str | None:
    return check_host_port(addr, schemes=("ws://", "wss://"))


def preflight(config: WsConfig) -> list[Problem]:
    out = check_each("listen", config.listen_addresses(), _listen_problem)
    out += check_tls(config.tls_cert, config.tls_key)
    for i, entry in enumerate(config.keys):
        if entry.key_file and secret_file_problem(entry.key_file):
            continue  # reported by the secret files' check (core.app.preflight)
        try:
            key_value(entry, f"keys[{i}]")  # the file is read, the variable looked up
        except SecretError as exc:
            where, _, text = exc.reason.partition(": ")
            out.append(Problem(where, text))
    return out


maitred_transports = transports_hook(
    TransportSpec(
        name="ws",
        config_type=WsConfig,
        factory=WsTransport,
        description="WebSocket: the middleman text protocol and the maitred.json dialect",
        cli_addresses=cli_addresses,
        cli_metavar="HOST:PORT",
        preflight=preflight,
        secret_files=secret_files,
    )
)


@hookimpl
def maitred_connect(url: str, timeout: float) -> BrokerClient | None:
    if url.startswith(("ws://", "wss://")):
        from maitred.transports.ws.cli import WsCliClient

        return WsCliClient(url, timeout)
    return None
