"""The ``maitred`` command's argument parser: every verb, its flags and its ``--help``
examples (see :mod:`maitred.core.cli` for what each verb does)."""

from __future__ import annotations

import argparse
import os
from typing import Any

import pluggy

from maitred.core import __version__
from maitred.core.credentials import print_new_token
from maitred.core.transport import TransportSpec

DEFAULT_BROKER = "tcp://127.0.0.1:5555"


#: the connection options of the verbs that talk to a broker that carry credentials, handed to
#: the transport plugin (hook ``maitred_connect``, its ``options``)
CREDENTIAL_OPTIONS = ("curve_server_key", "curve_key_file")


def credentials(args: argparse.Namespace | None) -> dict[str, Any]:
    """The credential options by name (None: not given)."""
    return {n: getattr(args, n, None) for n in CREDENTIAL_OPTIONS}


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _address_flags(
    parser: argparse.ArgumentParser, specs: dict[str, TransportSpec], help: str
) -> None:
    """``--NAME ADDRESS`` (repeatable) for each transport that takes addresses on the command
    line; ``help`` is formatted with the transport's ``name`` and ``description``."""
    for name, spec in sorted(specs.items()):
        if spec.cli_addresses is not None:
            parser.add_argument(
                f"--{name}",
                action="append",
                default=[],
                metavar=spec.cli_metavar,
                help=help.format(name=name, description=spec.description),
            )


def _parser(sub: Any, name: str, help: str, *examples: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=_examples(*examples) if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p


def build_parser(
    specs: dict[str, TransportSpec], pm: pluggy.PluginManager | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maitred",
        description="maitred: one routing core, every client on its own protocol.",
        epilog=_examples(
            "maitred serve --mdp tcp://127.0.0.1:5555 --http 127.0.0.1:8080",
            "maitred worker echo --program cat",
            "maitred call echo hello",
            "maitred services",
        )
        + "\n\nexit codes: 0 ok, 1 failure, 2 usage or config, 3 timeout, 4 error reply, "
        "5 unreachable, 6 refused",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"maitred {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    serve = _parser(
        sub,
        "serve",
        "run the broker",
        "maitred serve                                  # embedded defaults: MDP on :5555",
        "maitred serve -c /etc/maitred/maitred.toml",
        "maitred serve --mdp tcp://0.0.0.0:5555 --http unix:/run/maitred/http.sock --ws :8764",
    )
    serve.add_argument("-c", "--config", help="TOML config file (default: embedded defaults)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or one JSON object per line (per-request records carry the request id)",
    )
    serve.add_argument(
        "--ready-file",
        metavar="PATH",
        help="once every transport listens, write the pid and endpoints there as JSON "
        "(removed on exit); `maitred reload --ready-file PATH` finds the broker by it",
    )
    if "cluster" in specs:
        serve.add_argument(
            "--node",
            metavar="NAME",
            help="this node's name in the cluster ([cluster] node; default HOSTNAME-PID)",
        )
    _address_flags(serve, specs, "enable {name} on this address (repeatable): {description}")

    check = _parser(
        sub,
        "check",
        "check a config file for everything serve would fail on, without starting",
        "maitred check -c /etc/maitred/maitred.toml",
        "maitred check -c maitred.toml --http 127.0.0.1:8080   # with serve's address flags",
    )
    check.add_argument("-c", "--config", required=True)
    _address_flags(check, specs, "as for serve: {name} on this address")

    reload = _parser(
        sub,
        "reload",
        "make a running broker re-read its config file (SIGHUP to the pid in its ready file)",
        "maitred serve -c maitred.toml --ready-file /run/maitred/ready.json &",
        "maitred reload --ready-file /run/maitred/ready.json",
        "maitred reload --pid 4242",
    )
    who = reload.add_mutually_exclusive_group(required=True)
    who.add_argument("--ready-file", metavar="PATH", help="the file serve --ready-file wrote")
    who.add_argument("--pid", type=int, help="the broker's process id")

    def broker_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-b",
            "--broker",
            default=os.environ.get("MAITRED_BROKER", DEFAULT_BROKER),
            help=f"broker URL: tcp://HOST:PORT, ipc:///PATH, http://HOST:PORT, unix:PATH, "
            f"ws://HOST:PORT (env MAITRED_BROKER, default {DEFAULT_BROKER})",
        )
        p.add_argument("-t", "--timeout", type=float, default=10.0, help="seconds (default 10)")
        # the CURVE keys: each one's default is its environment variable
        for flag, metavar, env, text in (
            (
                "--curve-server-key",
                "KEY",
                "MAITRED_CURVE_SERVER_KEY",
                "the broker's public key (40 Z85 characters, or its key file; env {})",
            ),
            (
                "--curve-key-file",
                "FILE",
                "MAITRED_CURVE_KEY_FILE",
                "this client's secret key file from maitred keygen (env {})",
            ),
        ):
            p.add_argument(
                flag,
                metavar=metavar,
                default=os.environ.get(env),
                help="MDP over CURVE: " + text.format(env),
            )
        p.add_argument(
            "--token",
            metavar="TOKEN",
            help="bearer token for http(s)://, unix: and ws(s):// brokers (env MAITRED_TOKEN)",
        )
        p.add_argument(
            "--cacert",
            metavar="FILE",
            help="CA file that signed an https:// or wss:// broker's certificate "
            "(env MAITRED_CACERT)",
        )

    call = _parser(
        sub,
        "call",
        "call a service and print the reply",
        "maitred call echo hello",
        "maitred call -b http://127.0.0.1:8080 echo hello",
        "maitred call mmi.service echo              # exit 0 if echo has a worker, else 4",
        "date | maitred call --stdin echo",
    )
    call.add_argument("service")
    call.add_argument("body", nargs="*", help="body frames (default: stdin with --stdin)")
    call.add_argument("--file", help="read the body (one frame) from a file")
    call.add_argument("--stdin", action="store_true", help="read the body (one frame) from stdin")
    broker_opt(call)

    worker = _parser(
        sub,
        "worker",
        "serve a service by running a program per request",
        "maitred worker echo --program cat",
        "maitred worker upper --program 'tr a-z A-Z' -b ws://127.0.0.1:8764",
        "maitred worker once --program cat --max-requests 1",
    )
    worker.add_argument("service")
    worker.add_argument(
        "--program", required=True, help="command run per request: request on stdin, stdout = reply"
    )
    worker.add_argument("--max-requests", type=int, help="exit after this many requests")
    worker.add_argument(
        "--program-timeout", type=float, default=60.0, help="seconds a run may take (default 60)"
    )
    broker_opt(worker)

    pub = _parser(
        sub,
        "pub",
        "publish BODY on TOPIC (REST, WebSocket, or MDP's publish_endpoints)",
        "maitred pub -b http://127.0.0.1:8080 alerts.disk 'disk 91% full'",
        "maitred pub -b ws://127.0.0.1:8764 prices.eur 1.0842",
        "maitred pub -b tcp://127.0.0.1:5557 news.today hello",
    )
    pub.add_argument("topic")
    pub.add_argument("body", help="the message (one frame, UTF-8); - reads standard input")
    broker_opt(pub)

    subp = _parser(
        sub,
        "sub",
        "print the messages published on topics matching PATTERN",
        "maitred sub -b http://127.0.0.1:8080 'alerts.*'",
        "maitred sub -b ws://127.0.0.1:8764 '$sys.>' --count 1 --json",
        "maitred sub -b tcp://127.0.0.1:5556 '$sys.service.>'",
    )
    subp.add_argument("pattern")
    subp.add_argument("-n", "--count", type=int, help="exit after this many messages")
    subp.add_argument("--json", action="store_true", help="one JSON object per message")
    broker_opt(subp)

    listings = {
        "services": ("list services (mmi.services)", "maitred services", "maitred services --json"),
        "workers": (
            "list workers: service, protocol, address, state (mmi.workers)",
            "maitred workers",
            "maitred workers -b http://127.0.0.1:8080 --service echo",
        ),
        "queues": (
            "list service queues: waiting and in-flight requests (mmi.queues)",
            "maitred queues",
            "maitred queues --json | jq '.[] | select(.queued > 0)'",
        ),
        "info": (
            "the broker: name, version, uptime, transports, counts (mmi.info)",
            "maitred info",
            "maitred info -b unix:/run/maitred/http.sock --json",
        ),
        "connections": (
            "open connections: transport, identity, address, workers, subscriptions "
            "(mmi.sessions); --traffic: totals per transport (mmi.info)",
            "maitred connections",
            "maitred connections --transport ws --json",
            "maitred connections --traffic",
        ),
    }
    for verb, (help_, *examples) in listings.items():
        p = _parser(sub, verb, help_, *examples)
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if verb == "workers":
            p.add_argument("--service", default="", help="only the workers of this service")
        if verb == "connections":
            p.add_argument("--transport", default="", help="only the sessions of this transport")
            p.add_argument(
                "--traffic",
                action="store_true",
                help="endpoints and request totals per transport instead of one line a session",
            )
        broker_opt(p)

    store = _parser(
        sub,
        "store",
        "the durable store: migrate copies one store into another and checks the copy",
        "maitred store migrate --from sqlite:/var/lib/maitred/store.sqlite3 --to jetstream",
        "maitred store migrate -c maitred.toml --from jetstream --to sqlite:/tmp/back.sqlite3",
    )
    store.add_argument("action", choices=["migrate"])
    store.add_argument("--from", dest="source", required=True, help="sqlite:PATH or jetstream")
    store.add_argument("--to", dest="destination", required=True, help="sqlite:PATH or jetstream")
    store.add_argument("-c", "--config", help="the [store] settings (jetstream_nats, ...)")

    _parser(sub, "plugins", "list installed plugins and transports", "maitred plugins")

    token = _parser(
        sub,
        "token",
        "print a new bearer token, then its token table entry (the SHA-256) for the config",
        "maitred token --identity ops --role admin",
        "maitred token --identity billing --role callers | tail -n +2 >> maitred.toml",
    )
    token.add_argument("--identity", default="client", help="who the token is (default client)")
    token.add_argument(
        "--role", action="append", default=[], help="a role of the identity (repeatable)"
    )
    token.add_argument(
        "--table",
        default="transports.http.tokens",
        help="the token table (default transports.http.tokens)",
    )
    token.set_defaults(run=print_new_token)
    if pm is not None:
        pm.hook.maitred_add_commands(subparsers=sub)
    return parser
