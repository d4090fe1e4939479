"""Registers the MDP transport and the MDP CLI client, through the same hooks a third-party
plugin uses (entry point ``mdp`` of group ``maitred`` in pyproject.toml)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from maitred.core.errors import ConfigError, MaitredError
from maitred.core.preflight import (
    Problem,
    check_each,
    check_file,
    check_host,
    check_port,
    check_unix_path,
)
from maitred.core.transport import BrokerClient, FrameHandler, TransportSpec
from maitred.plugins import hookimpl, transports_hook
from maitred.transports.mdp import codec
from maitred.transports.mdp.adapter import MdpConfig, MdpTransport, cli_addresses
from maitred.transports.mdp.curve import secret_key_problem

SCHEMES = ("tcp://", "ipc://", "inproc://")


def endpoint_problem(ep: str) -> str | None:
    """What is wrong with a ZeroMQ endpoint to bind, with the fix (None: nothing)."""
    scheme, sep, rest = ep.partition("://")
    if not sep:
        return (
            f"{ep!r} is not a ZeroMQ endpoint (no scheme); write tcp://{ep or '127.0.0.1:5555'}"
            " (or ipc:///path, inproc://name)"
        )
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not port:
            return f"{ep!r}: no port; write tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555"
        if port != "*":
            problem = check_port(port, ep)
            if problem:
                return problem
        host = host.strip("[]")
        if host and host != "*" and host not in {name for _, name in _interfaces()}:
            return check_host(host, ep)
        return None
    if scheme == "ipc":
        if rest.startswith("@"):  # Linux abstract namespace: no file
            return None if len(rest) > 1 else f"{ep!r}: empty abstract socket name"
        return check_unix_path(rest, ep)
    if scheme == "inproc":
        return None if rest else f"{ep!r}: empty inproc name; write inproc://NAME"
    return f"{ep!r}: scheme {scheme}:// is not one MDP binds; use tcp://, ipc:// or inproc://"


def _interfaces() -> list[tuple[int, str]]:
    import socket

    try:
        return socket.if_nameindex()
    except OSError:
        return []


def preflight(config: MdpConfig) -> list[Problem]:
    out = [
        problem
        for key in ("endpoints", "pub_endpoints", "publish_endpoints")
        for problem in check_each(key, getattr(config, key), endpoint_problem)
    ]
    out += check_file("curve_secret_key_file", config.curve_secret_key_file, secret_key_problem)
    return out


def secret_files(config: MdpConfig) -> list[tuple[str, str]]:
    """The broker's CURVE secret key, refused when anyone but its owner can read it."""
    key = config.curve_secret_key_file
    return [("curve_secret_key_file", key)] if key else []


maitred_transports = transports_hook(
    TransportSpec(
        name="mdp",
        config_type=MdpConfig,
        factory=MdpTransport,
        description="ZeroMQ Majordomo (MDP/0.1, RFC 18 MDP/0.2, majortomo) on a ROUTER socket",
        cli_addresses=cli_addresses,
        cli_metavar="ENDPOINT",
        preflight=preflight,
        secret_files=secret_files,
    )
)


class MdpCliClient:
    """The blocking client behind ``maitred call/worker/services`` for tcp:// and ipc:// URLs."""

    def __init__(self, url: str, timeout: float, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self._client: Any = None
        options = options or {}
        #: CURVE (``--curve-server-key``, ``--curve-key-file``), checked before connecting
        self.curve: dict[str, Any] = {
            "curve_server_key": options.get("curve_server_key"),
            "curve_key_file": options.get("curve_key_file"),
        }
        from maitred.transports.mdp.curve import client_curve

        try:
            client_curve(self.curve["curve_server_key"], self.curve["curve_key_file"])
        except ValueError as exc:
            raise ConfigError(f"--curve-server-key/--curve-key-file: {exc}") from None

    def request(self, service: str, body: Sequence[bytes], timeout: float) -> list[bytes]:
        from maitred.transports.mdp.client import Client

        if self._client is None:
            self._client = Client(self.url, timeout=timeout, **self.curve)
        reply: list[bytes] = self._client.request(service, *body, timeout=timeout)
        # the broker's error reply (error_replies = true): status code and reason
        error = None if service.startswith("mmi.") else codec.parse_error_body(reply)
        if error is not None:
            raise MaitredError(error[1], error[0])
        return reply

    def serve(
        self, service: str, handler: FrameHandler, *, max_requests: int | None = None
    ) -> None:
        from maitred.transports.mdp.client import Worker

        worker = Worker(self.url, service, handler, **self.curve)
        try:
            worker.run(max_requests=max_requests)
        finally:
            worker.close()

    # ``maitred pub``/``sub``: the URL is then the broker's publish (pub) endpoint
    def publish(self, topic: str, body: bytes) -> None:
        """Publish on a broker's ``publish_endpoints``; None: ZeroMQ does not say how many
        subscribers it reached."""
        import zmq

        from maitred.transports.mdp.pubsub_client import Publisher

        self._check(zmq.XPUB)
        with Publisher(self.url, wait=self.timeout) as pub:
            pub.publish(topic, body)

    def subscribe(self, pattern: str) -> Iterator[tuple[str, list[bytes]]]:
        """Each message on ``pattern`` from a broker's ``pub_endpoints``."""
        import zmq

        from maitred.transports.mdp.pubsub_client import Subscriber

        self._check(zmq.SUB)
        with Subscriber(self.url) as sub:
            sub.subscribe(pattern)
            while True:
                event = sub.recv()
                yield event.topic, event.body

    def _check(self, kind: int) -> None:
        from maitred.transports.mdp.pubsub_client import check_endpoint

        try:
            check_endpoint(self.url, kind, self.timeout)
        except ConnectionError as exc:
            raise ConfigError(f"-b {exc}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@hookimpl
def maitred_connect(url: str, timeout: float, options: Mapping[str, Any]) -> BrokerClient | None:
    if url.startswith(SCHEMES):
        return MdpCliClient(url, timeout, options)
    return None


def cmd_keygen(args: Any) -> int:
    """``maitred keygen NAME [--dir DIR]``: a CURVE key pair in ZeroMQ's certificate files."""
    import sys

    from maitred.transports.mdp.curve import write_certificate

    try:
        public_file, secret_file, public = write_certificate(args.dir, args.name)
    except (OSError, ValueError) as exc:
        print(f"maitred: keygen: {exc}", file=sys.stderr)
        return 2
    print(public)
    print(
        f"maitred: wrote {public_file} (public) and {secret_file} (secret, mode 0600)",
        file=sys.stderr,
    )
    return 0


@hookimpl
def maitred_add_commands(subparsers: Any) -> None:
    import argparse

    p = subparsers.add_parser(
        "keygen",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  maitred keygen broker --dir /etc/maitred/keys\n"
            "  maitred keygen billing-worker    # ./billing-worker.key, .key_secret"
        ),
        help="write a CURVE key pair (NAME.key, NAME.key_secret) and print the public key",
        description="Write a CURVE key pair for MDP in ZeroMQ's certificate format: NAME.key "
        "(the public key, to hand out) and NAME.key_secret (both keys, mode 0600). Prints the "
        "public key (Z85), for [[transports.mdp.keys]] or --curve-server-key.",
    )
    p.add_argument("name", help="the file name to write, without extension")
    p.add_argument("--dir", default=".", help="where to write them (default: .)")
    p.set_defaults(run=cmd_keygen)
