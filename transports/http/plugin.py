"""Registers the HTTP transport (REST, metrics, message switch) and the CLI client for
``http://`` and ``unix:`` broker URLs (entry point ``http`` of group ``maitred``)."""

from __future__ import annotations

from typing import Any

from maitred.core.preflight import (
    Problem,
    check_each,
    check_file,
    check_host_port,
    check_readable,
    check_tls,
    check_unix_path,
)
from maitred.core.transport import BrokerClient, TransportSpec
from maitred.plugins import hookimpl, transports_hook
from maitred.transports.http.adapter import HttpConfig, HttpTransport, cli_addresses

SCHEMES = ("http://", "https://", "unix:")


def _listen_problem(addr: str) -> str | None:
    if addr.startswith("unix:"):
        return check_unix_path(addr[5:], addr)
    return check_host_port(addr)


def preflight(config: HttpConfig) -> list[Problem]:
    out = check_each("listen", config.listen, _listen_problem)
    # the switch's store is the broker's one store: core.app.preflight checks it
    out += check_tls(config.tls_cert, config.tls_key)
    out += check_file("tls_client_ca", config.tls_client_ca, check_readable)
    return out


def secret_files(config: HttpConfig) -> list[tuple[str, str]]:
    """The TLS private key, which ``maitred check`` and ``serve`` refuse when anyone but its
    owner can read it."""
    return [("tls_key", config.tls_key)] if config.tls_key else []


maitred_transports = transports_hook(
    TransportSpec(
        name="http",
        config_type=HttpConfig,
        factory=HttpTransport,
        description="REST API under /v1/, /metrics, and the xapi message switch (Gen 3)",
        cli_addresses=cli_addresses,
        cli_metavar="HOST:PORT|unix:PATH",
        store_hint=HttpConfig.store_hint,
        preflight=preflight,
        secret_files=secret_files,
    )
)


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
