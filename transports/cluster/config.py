"""``[cluster]``: how a node joins the others over NATS, and the NATS connect options (shared
with anything else of maitred's that talks to the same NATS: :func:`connect_options`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from maitred.transports.cluster.codec import NODE_NAME


def default_node() -> str:
    """``HOSTNAME-PID``, made a valid node name (one subject segment)."""
    host = "".join(c if NODE_NAME.fullmatch(c) else "-" for c in socket.gethostname()) or "host"
    return f"{host[:48]}-{os.getpid()}"


class ClusterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[cluster]``: this broker is one node of a cluster whose nodes meet on NATS."""

    #: on when the table exists (or ``maitred serve --cluster URL``)
    enabled: bool = True
    #: the NATS servers (any of one NATS cluster); nats-py reconnects to another when one dies
    nats: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    #: this node's name, unique in the cluster; empty: ``HOSTNAME-PID``
    node: str = ""
    #: the first segment of every subject the cluster uses (several clusters may share a NATS)
    subject_prefix: str = "maitred"
    #: NATS unreachable at start: refuse to start (true) or serve locally and keep trying
    required: bool = True
    #: seconds between announcements (a node also announces at once when its services change)
    announce_interval: float = 1.0
    #: announcements a node may miss before the others take it for gone
    missed_announcements: int = 3
    #: seconds to wait for NATS at start (and for the "is this name taken" question)
    connect_timeout: float = 2.0
    #: NATS credentials: a token (empty: none)
    token: str = ""
    #: NATS credentials: a user name, with ``password`` (empty: none)
    user: str = ""
    #: the NATS user's password
    password: str = ""

    def node_name(self) -> str:
        return self.node or default_node()

    def problems(self) -> list[str]:
        out = []
        if not self.nats:
            out.append("nats: at least one NATS server URL")
        for url in self.nats:
            if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
                out.append(f"nats: {url!r} is no NATS URL (nats://HOST:PORT)")
        if self.node and not NODE_NAME.fullmatch(self.node):
            out.append(
                f"node: {self.node!r} must be 1 to 64 letters, digits or _ - : @ + = "
                "(it is a NATS subject segment)"
            )
        if not NODE_NAME.fullmatch(self.subject_prefix):
            out.append(f"subject_prefix: {self.subject_prefix!r} must be one subject segment")
        if not 0 < self.announce_interval <= 60:
            out.append("announce_interval: must be > 0 and <= 60 seconds")
        if self.missed_announcements < 1:
            out.append("missed_announcements: must be >= 1")
        if not 0 < self.connect_timeout <= 60:
            out.append("connect_timeout: must be > 0 and <= 60 seconds")
        return out


def cli_addresses(addresses: Sequence[str]) -> dict[str, Any]:
    """``--cluster nats://HOST:PORT`` (repeatable): the NATS servers."""
    return {"nats": list(addresses)}


def connect_options(
    config: ClusterConfig,
    name: str,
    *,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``nats.connect`` for ``config``: the servers, credentials,
    timeouts, endless reconnection with backoff, no echo of a connection's own messages."""
    options: dict[str, Any] = {
        "servers": list(config.nats),
        "name": name,
        "connect_timeout": config.connect_timeout,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "no_echo": True,
        # the first connection is tried once per server: the caller decides what a failure means
        "max_outstanding_pings": 3,
        "ping_interval": 5,
    }
    if config.token:
        options["token"] = config.token
    if config.user:
        options["user"] = config.user
        options["password"] = config.password
    if on_disconnect is not None:
        options["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        options["reconnected_cb"] = on_reconnect
    if on_error is not None:
        options["error_cb"] = on_error
    return options
