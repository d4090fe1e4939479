"""Registers the cluster fabric (entry point ``cluster`` of group ``maitred``) as a transport:
``[cluster]`` (or ``maitred serve --cluster nats://HOST:PORT --node NAME``) turns it on.
nats-py (the ``cluster`` extra) is imported only when it starts."""

from __future__ import annotations

import importlib.util

from maitred.core.preflight import Problem
from maitred.core.transport import TransportSpec
from maitred.plugins import transports_hook
from maitred.transports.cluster.config import ClusterConfig, cli_addresses
from maitred.transports.cluster.fabric import ClusterFabric


def preflight(config: ClusterConfig) -> list[Problem]:
    if importlib.util.find_spec("nats") is None:
        return [Problem("nats", "nats-py is not installed: pip install 'maitred[cluster]'")]
    return []


maitred_transports = transports_hook(
    TransportSpec(
        name="cluster",
        config_type=ClusterConfig,
        factory=ClusterFabric,
        description="a cluster of brokers over NATS (the NATS servers' URLs)",
        cli_addresses=cli_addresses,
        cli_metavar="NATS_URL",
        preflight=preflight,
    )
)
