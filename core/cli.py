"""The ``maitred`` command (and ``python -m maitred.core``).

Verbs: ``serve`` (run the broker), ``check`` (validate a config), ``call``, ``worker``,
``services`` (talk to a running broker through the transport plugin that speaks the broker URL),
``plugins`` (list installed plugins). Exit codes: 0 success, 1 runtime failure, 2 usage or config
error, 3 timeout, 4 the broker answered with an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pluggy

from maitred.core import __version__
from maitred.core.app import build_broker, transport_specs
from maitred.core.config import Config, load_config
from maitred.core.errors import ConfigError, MaitredError
from maitred.core.logs import setup_logging
from maitred.core.transport import BrokerClient, TransportSpec
from maitred.plugins.manager import installed_plugins, make_plugin_manager

log = logging.getLogger("maitred.cli")

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TIMEOUT, EXIT_ERROR_REPLY = 0, 1, 2, 3, 4


def _plugins() -> tuple[pluggy.PluginManager | None, dict[str, TransportSpec]]:
    try:
        pm = make_plugin_manager()
        return pm, transport_specs(pm)
    except Exception as exc:  # a broken third-party plugin must not hide the CLI
        print(f"maitred: warning: could not load plugins: {exc}", file=sys.stderr)
        return None, {}


def build_parser(
    specs: dict[str, TransportSpec], pm: pluggy.PluginManager | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maitred", description="maitred: one routing core, every client on its own protocol."
    )
    parser.add_argument("--version", action="version", version=f"maitred {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    serve = sub.add_parser("serve", help="run the broker")
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
        help="once every transport listens, write the endpoints there as JSON (removed on exit)",
    )
    for name, spec in sorted(specs.items()):
        if spec.cli_addresses is not None:
            serve.add_argument(
                f"--{name}",
                action="append",
                default=[],
                metavar=spec.cli_metavar,
                help=f"enable {name} on this address (repeatable): {spec.description}",
            )

    check = sub.add_parser("check", help="validate a config file without starting")
    check.add_argument("-c", "--config", required=True)

    def broker_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-b",
            "--broker",
            default=os.environ.get("MAITRED_BROKER", DEFAULT_BROKER),
            help=f"broker URL (env MAITRED_BROKER, default {DEFAULT_BROKER})",
        )
        p.add_argument("-t", "--timeout", type=float, default=10.0, help="seconds (default 10)")

    call = sub.add_parser("call", help="call a service and print the reply")
    call.add_argument("service")
    call.add_argument("body", nargs="*", help="body frames (default: stdin with --stdin)")
    call.add_argument("--file", help="read the body (one frame) from a file")
    call.add_argument("--stdin", action="store_true", help="read the body (one frame) from stdin")
    broker_opt(call)

    worker = sub.add_parser("worker", help="serve a service by running a program per request")
    worker.add_argument("service")
    worker.add_argument(
        "--program", required=True, help="command run per request: request on stdin, stdout = reply"
    )
    worker.add_argument("--max-requests", type=int, help="exit after this many requests")
    worker.add_argument(
        "--program-timeout", type=float, default=60.0, help="seconds a run may take (default 60)"
    )
    broker_opt(worker)

    services = sub.add_parser("services", help="list services (mmi.services)")
    services.add_argument("--json", action="store_true", help="print the raw JSON")
    broker_opt(services)

    sub.add_parser("plugins", help="list installed plugins and transports")
    if pm is not None:
        pm.hook.maitred_add_commands(subparsers=sub)
    return parser


def _setup_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    setup_logging(level, fmt)


def _install_uvloop(config: Config) -> None:
    if not config.broker.uvloop:
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(
    config: Config, addresses: dict[str, list[str]], ready_file: str | None = None
) -> int:
    broker = build_broker(config, addresses=addresses)
    loop = asyncio.get_running_loop()
    # whatever the process inherited (a background job of a shell starts with SIGINT ignored)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, broker.request_stop)
    try:
        await broker.start()
    except MaitredError as exc:
        log.error("cannot start: %s", exc.reason)
        return EXIT_FAIL
    endpoints = broker.endpoints()
    for name, bound in endpoints.items():
        # one line per transport, for people and scripts that bind port 0
        print(f"maitred: {name} listening on {' '.join(bound)}", flush=True)
    try:
        if ready_file is not None:
            _write_ready_file(Path(ready_file), endpoints)
        # the machine-readable readiness signal: every transport listens, all endpoints in one
        # JSON object (scripts and tests wait for this line, never for the first one above)
        print(f"maitred: ready {json.dumps(endpoints, separators=(',', ':'))}", flush=True)
        await broker.serve_forever()
    finally:
        await broker.stop()
        if ready_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(ready_file)
    return EXIT_OK


def _write_ready_file(path: Path, endpoints: dict[str, list[str]]) -> None:
    """``{"pid": N, "endpoints": {...}}``, written whole (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "endpoints": endpoints}) + "\n")
    os.replace(tmp, path)


def cmd_serve(args: argparse.Namespace, specs: dict[str, TransportSpec]) -> int:
    config = load_config(args.config)
    _setup_logging(
        args.log_level or config.broker.log_level, args.log_format or config.broker.log_format
    )
    addresses = {name: getattr(args, name, []) for name in specs if getattr(args, name, [])}
    if addresses and args.config is None:
        # flags on the command line without a file: run only the transports named
        config = Config(transports={name: {} for name in addresses})
    _install_uvloop(config)
    return asyncio.run(_serve(config, addresses, args.ready_file))


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    broker = build_broker(config)  # decodes every transport table with its plugin's config type
    enabled = ", ".join(broker.transport_names) or "none"
    print(f"{args.config}: ok (transports enabled: {enabled})")
    return EXIT_OK


def _connect(url: str, timeout: float) -> BrokerClient:
    pm = make_plugin_manager()
    client: BrokerClient | None = pm.hook.maitred_connect(url=url, timeout=timeout)
    if client is None:
        raise ConfigError(f"no installed transport plugin speaks {url!r}")
    return client


def cmd_call(args: argparse.Namespace) -> int:
    if args.file:
        try:
            with open(args.file, "rb") as fh:
                body = [fh.read()]
        except OSError as exc:
            raise ConfigError(f"{args.file}: cannot read: {exc.strerror or exc}") from None
    elif args.stdin:
        body = [sys.stdin.buffer.read()]
    else:
        body = [b.encode() for b in args.body]
    client = _connect(args.broker, args.timeout)
    try:
        reply = client.request(args.service, body, args.timeout)
    finally:
        client.close()
    out = sys.stdout.buffer
    for i, frame in enumerate(reply):
        if i:
            out.write(b"\n")
        out.write(frame)
    out.write(b"\n")
    out.flush()
    return EXIT_OK


def run_program(command: str, body: list[bytes], timeout: float) -> list[bytes]:
    """Run ``command`` with the request (frames concatenated) on stdin; stdout is the reply.

    A failing run answers ``[b"500", b"<what failed>"]`` (the broker's error-reply shape) so
    the caller learns at once instead of waiting for its timeout.
    """
    try:
        proc = subprocess.run(
            shlex.split(command),
            input=b"".join(body),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log.warning("program %r timed out after %.1fs", command, timeout)
        return [b"504", f"program timed out after {timeout}s".encode()]
    except OSError as exc:
        log.error("cannot run %r: %s", command, exc)
        return [b"500", f"cannot run program: {exc}".encode()]
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-200:]
        log.warning("program %r exited %d: %s", command, proc.returncode, tail)
        return [b"500", f"program exited {proc.returncode}: {tail}".encode()]
    return [proc.stdout]


def cmd_worker(args: argparse.Namespace) -> int:
    _setup_logging("info")
    client = _connect(args.broker, args.timeout)
    log.info("serving %s at %s with %r", args.service, args.broker, args.program)

    def handler(body: list[bytes]) -> list[bytes]:
        return run_program(args.program, body, args.program_timeout)

    # SIGINT and SIGTERM (see stop_on_signals) end it: the client leaves the broker properly
    # (MDP: DISCONNECT) instead of being found dead at the next heartbeat
    try:
        client.serve(args.service, handler, max_requests=args.max_requests)
    except KeyboardInterrupt:
        log.info("stopping: leaving %s", args.service)
    finally:
        client.close()
    return EXIT_OK


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM while a verb runs (see
    :func:`stop_on_signals`); a verb that stops cleanly catches it as KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(signum)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` while the block runs, whatever handlers or
    dispositions the process inherited: a background job of a shell starts with SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler, so such a process would
    ignore Ctrl-C and ``kill -INT``. Only in the main thread (elsewhere nothing changes); the
    previous handlers come back afterwards. ``serve`` replaces these with its event loop's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def cmd_services(args: argparse.Namespace) -> int:
    client = _connect(args.broker, args.timeout)
    rows: list[dict[str, Any]] = []
    try:
        offset: int | None = 0
        while offset is not None:  # page by page (docs/reference/mmi.md#listings-and-pages)
            query = json.dumps({"offset": offset}).encode()
            answer = json.loads(client.request("mmi.services", [query], args.timeout)[-1])
            if isinstance(answer, list):  # a broker without pages answers the whole list
                rows = answer
                break
            rows += answer["items"]
            offset = answer["next"]
    finally:
        client.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'SERVICE':30} {'WORKERS':>7} {'FREE':>5} {'QUEUED':>7} {'INFLIGHT':>8}")
    for row in rows:
        print(
            f"{row['name']:30} {row['workers']:>7} {row['free']:>5} "
            f"{row['queued']:>7} {row['inflight']:>8}"
        )
    return EXIT_OK


def cmd_plugins(specs: dict[str, TransportSpec]) -> int:
    print("plugins (entry points of group 'maitred'):")
    for name in installed_plugins():
        print(f"  {name}")
    print("transports:")
    for name, spec in sorted(specs.items()):
        print(f"  {name:10} {spec.description}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    pm, specs = _plugins()
    args = build_parser(specs, pm).parse_args(argv)
    try:
        with stop_on_signals():
            return _dispatch(args, specs)
    except ConfigError as exc:
        print(f"maitred: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    except TimeoutError as exc:
        print(f"maitred: timeout: {exc or 'no reply in time'}", file=sys.stderr)
        return EXIT_TIMEOUT
    except MaitredError as exc:
        print(f"maitred: {exc}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    except OSError as exc:
        print(f"maitred: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    except Stopped as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def _dispatch(args: argparse.Namespace, specs: dict[str, TransportSpec]) -> int:
    run = getattr(args, "run", None)
    if run is not None:  # a verb a plugin added (maitred_add_commands)
        return int(run(args))
    if args.verb == "serve":
        return cmd_serve(args, specs)
    if args.verb == "check":
        return cmd_check(args)
    if args.verb == "call":
        return cmd_call(args)
    if args.verb == "worker":
        return cmd_worker(args)
    if args.verb == "services":
        return cmd_services(args)
    if args.verb == "plugins":
        return cmd_plugins(specs)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
