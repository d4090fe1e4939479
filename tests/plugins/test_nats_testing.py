"""The nats-server test helper: a real server on a free port, and a routed JetStream cluster."""

from __future__ import annotations

import socket

import pytest

from maitred.plugins.nats_testing import (
    NatsClusterStarter,
    NatsServer,
    NatsStarter,
    nats_cluster,  # noqa: F401  (fixture)
    nats_server,  # noqa: F401  (fixture)
)


def _info(server: NatsServer) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        return sock.recv(4096)


def test_a_server_accepts_clients_and_stops(nats_server: NatsStarter) -> None:  # noqa: F811
    server = nats_server(jetstream=True)
    assert server.url.startswith("nats://127.0.0.1:")
    info = _info(server)
    assert info.startswith(b"INFO ") and b'"jetstream":true' in info
    server.stop()  # nats-server exits with 1 on SIGTERM
    assert server.proc.poll() is not None
    with pytest.raises(OSError):
        _info(server)


def test_a_cluster_of_three_routes_to_each_other(nats_cluster: NatsClusterStarter) -> None:  # noqa: F811
    servers = nats_cluster(3, jetstream=True)
    assert len({s.port for s in servers}) == 3
    for server in servers:
        info = _info(server)
        assert b'"cluster":"maitred-test"' in info
        assert all(other.route in server.args[-1] for other in servers if other is not server)


def test_pause_returns_once_the_server_is_stopped(nats_server: NatsStarter) -> None:  # noqa: F811
    from maitred.plugins.nats_testing import _state

    server = nats_server()
    server.pause()
    assert _state(server.proc.pid) in ("T", "t")
    server.resume()
    assert _info(server).startswith(b"INFO ")
