"""The ``maitred`` command (and ``python -m maitred.core``).

Verbs: ``serve`` (run the broker), ``check`` (validate a config), ``call``, ``worker``, ``pub``,
``sub``, ``services``, ``workers``, ``queues``, ``info``, ``connections`` (talk to a running broker
through the transport plugin that speaks the broker URL), ``plugins`` (list installed plugins).
Exit codes (docs/reference/cli.md#exit-codes): 0 success, 1 other failure, 2 usage or config
error, 3 timeout, 4 the broker answered with an error, 5 the broker is unreachable, 6 refused
(not allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import pluggy

from maitred.core.app import build_broker, plugin_warnings, preflight, transport_specs
from maitred.core.cli_listings import fetch_listing, print_listing
from maitred.core.cli_parser import build_parser, credentials
from maitred.core.config import Config, load_config
from maitred.core.credentials import client_env
from maitred.core.errors import ConfigError, ErrorCode, MaitredError
from maitred.core.logs import setup_logging
from maitred.core.reach import Unreachable, probe
from maitred.core.transport import BrokerClient, TransportSpec
from maitred.plugins.manager import installed_plugins, make_plugin_manager

log = logging.getLogger("maitred.cli")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TIMEOUT, EXIT_ERROR_REPLY = 0, 1, 2, 3, 4
EXIT_UNREACHABLE, EXIT_REFUSED = 5, 6


def _plugins() -> tuple[pluggy.PluginManager | None, dict[str, TransportSpec]]:
    try:
        pm = make_plugin_manager()
        return pm, transport_specs(pm)
    except Exception as exc:  # a broken third-party plugin must not hide the CLI
        print(f"maitred: warning: could not load plugins: {exc}", file=sys.stderr)
        return None, {}


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
    loop.add_signal_handler(signal.SIGHUP, broker.request_reload)
    try:
        await broker.start()
    except MaitredError as exc:
        log.error("cannot start: %s", exc.reason)
        return EXIT_FAIL
    except OSError as exc:  # what preflight could not foresee (a port taken meanwhile, ...)
        log.error("cannot start: %s", exc)
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


def _addresses(args: argparse.Namespace, specs: dict[str, TransportSpec]) -> dict[str, list[str]]:
    return {name: getattr(args, name, []) for name in specs if getattr(args, name, [])}


def _checked_config(
    args: argparse.Namespace, specs: dict[str, TransportSpec]
) -> tuple[Config, dict[str, list[str]]]:
    """The config ``serve`` would run, with every problem ``serve`` would meet raised as one
    :class:`ConfigError` (each line names the file or flag, the key and the fix)."""
    config = load_config(args.config)
    addresses = _addresses(args, specs)
    if addresses and args.config is None:
        # flags on the command line without a file: run only the transports named
        config = Config(transports={name: {} for name in addresses}, source="<command line>")
    node = getattr(args, "node", None)
    if node:
        config = msgspec.structs.replace(config, cluster={**config.cluster, "node": node})
    pm = make_plugin_manager(disabled=config.plugins.disable)
    problems = preflight(config, transport_specs(pm), addresses)
    if problems:
        raise ConfigError("\n".join(problems))
    return config, addresses


def cmd_serve(args: argparse.Namespace, specs: dict[str, TransportSpec]) -> int:
    config, addresses = _checked_config(args, specs)
    _setup_logging(
        args.log_level or config.broker.log_level, args.log_format or config.broker.log_format
    )
    _install_uvloop(config)
    return asyncio.run(_serve(config, addresses, args.ready_file))


def cmd_check(args: argparse.Namespace, specs: dict[str, TransportSpec]) -> int:
    config, addresses = _checked_config(args, specs)
    for warning in plugin_warnings(config, installed_plugins()):
        print(f"maitred: warning: {warning}", file=sys.stderr)
    broker = build_broker(config, addresses=addresses)
    enabled = ", ".join(broker.transport_names) or "none"
    print(f"{args.config}: ok (transports enabled: {enabled})")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    if args.ready_file:
        try:
            pid = int(json.loads(Path(args.ready_file).read_text())["pid"])
        except OSError as exc:
            raise Unreachable(
                args.ready_file, f"cannot read the ready file ({exc.strerror or exc})"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{args.ready_file}: not a ready file written by serve") from None
    else:
        pid = args.pid
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise Unreachable(f"pid {pid}", "no such process") from None
    except PermissionError:
        print(f"maitred: pid {pid}: not allowed to signal it (another user's)", file=sys.stderr)
        return EXIT_REFUSED
    print(f"maitred: asked pid {pid} to reload (its log says what changed)")
    return EXIT_OK


def _connect(url: str, timeout: float) -> BrokerClient:
    client = _client_for(url, timeout)
    probe(url)  # within about a second: nothing there, instead of a whole timeout's wait
    return client


#: the command line's credentials: --token and --cacert (the clients read them from the
#: environment), --curve-server-key and --curve-key-file (the plugin's ``options``)
_CREDENTIALS: dict[str, str | None] = {}


def _client_for(url: str, timeout: float) -> BrokerClient:
    connect = make_plugin_manager().hook.maitred_connect
    options = {k: v for k, v in _CREDENTIALS.items() if v is not None}
    with client_env(_CREDENTIALS.get("token"), _CREDENTIALS.get("cacert")):
        client: BrokerClient | None = connect(url=url, timeout=timeout, options=options)
    if client is None:
        raise ConfigError(
            f"-b: no installed transport plugin speaks {url!r}; use tcp://HOST:PORT, "
            "ipc:///PATH, http://HOST:PORT, unix:PATH or ws://HOST:PORT"
        )
    return client


def _is_status(frame: bytes) -> bool:
    return len(frame) == 3 and frame.isdigit()


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
    if args.service.startswith("mmi.") and reply and _is_status(reply[-1]):
        # mmi.service answers 404 (no worker), an unknown mmi.* name 501: printed, not success
        return EXIT_OK if reply[-1] == b"200" else EXIT_ERROR_REPLY
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


def _check_program(command: str) -> None:
    """The program of ``worker --program`` must exist before the worker joins the broker."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"--program {command!r}: {exc}") from None
    if not argv:
        raise ConfigError("--program: empty command")
    if shutil.which(argv[0]) is None:
        raise ConfigError(
            f"--program {command!r}: {argv[0]!r} is not an executable program (not found, "
            "or not executable; give a path or a command on PATH)"
        )


def cmd_worker(args: argparse.Namespace) -> int:
    _check_program(args.program)
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


def cmd_listing(args: argparse.Namespace) -> int:
    """``services``, ``workers``, ``queues``, ``info``, ``connections``."""
    client = _connect(args.broker, args.timeout)
    try:
        answer = fetch_listing(client, args)
    finally:
        client.close()
    print_listing(args, answer)
    return EXIT_OK


def _topics_client(args: argparse.Namespace) -> Any:
    client = _client_for(args.broker, args.timeout)
    if not hasattr(client, "publish"):
        client.close()
        raise ConfigError(
            f"-b {args.broker}: this transport carries no topics; publish "
            "and subscribe over REST (-b http://HOST:PORT, unix:PATH) or WebSocket "
            "(-b ws://HOST:PORT)"
        )
    probe(args.broker)
    return client


def cmd_pub(args: argparse.Namespace) -> int:
    body = sys.stdin.buffer.read() if args.body == "-" else args.body.encode()
    client = _topics_client(args)
    try:
        reached = client.publish(args.topic, body)
    finally:
        client.close()
    if reached is None:  # ZeroMQ (MDP's publish_endpoints) does not say
        print(f"published to {args.topic}", file=sys.stderr)
    else:
        print(f"published to {args.topic}: {reached} subscriber(s)", file=sys.stderr)
    return EXIT_OK


def show(data: bytes, limit: int = 200) -> str:
    """A body for a terminal: UTF-8 with control characters escaped, cut at ``limit``."""
    text = data.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(data)} bytes)"


def cmd_sub(args: argparse.Namespace) -> int:
    client = _topics_client(args)
    seen = 0
    try:
        for topic, frames in client.subscribe(args.pattern):
            if args.json:
                value = {"topic": topic, "frames": [f.decode("utf-8", "replace") for f in frames]}
                print(json.dumps(value), flush=True)
            else:
                print(f"{topic}: {show(b''.join(frames))}", flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
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
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    except ConfigError as exc:
        print(f"maitred: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"maitred: {exc.reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TimeoutError as exc:
        broker = getattr(args, "broker", "")
        print(
            f"maitred: timeout: {exc or 'no reply in time'}"
            + (f" (broker {broker})" if broker and broker not in str(exc) else ""),
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    except MaitredError as exc:
        print(f"maitred: {exc}", file=sys.stderr)
        if exc.code in (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN):
            return EXIT_REFUSED
        return EXIT_ERROR_REPLY
    except OSError as exc:
        broker = getattr(args, "broker", None)
        where = f" (broker {broker})" if broker else ""
        print(f"maitred: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAIL
    except Stopped as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def _quiet_stdout() -> None:
    """The reader of standard output went away (``maitred tail | head``): say nothing more,
    and keep Python from complaining when it flushes at exit."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _dispatch(args: argparse.Namespace, specs: dict[str, TransportSpec]) -> int:
    _CREDENTIALS.update(token=getattr(args, "token", None), cacert=getattr(args, "cacert", None))
    _CREDENTIALS.update(credentials(args))  # --curve-server-key, --curve-key-file
    run = getattr(args, "run", None)
    if run is not None:  # a verb a plugin added (maitred_add_commands)
        return int(run(args))
    if args.verb == "serve":
        return cmd_serve(args, specs)
    if args.verb == "check":
        return cmd_check(args, specs)
    if args.verb == "reload":
        return cmd_reload(args)
    if args.verb == "call":
        return cmd_call(args)
    if args.verb == "worker":
        return cmd_worker(args)
    if args.verb == "pub":
        return cmd_pub(args)
    if args.verb == "sub":
        return cmd_sub(args)
    if args.verb in ("services", "workers", "queues", "info", "connections"):
        return cmd_listing(args)
    if args.verb == "plugins":
        return cmd_plugins(specs)
    if args.verb == "store":
        from maitred.core.store_migrate import cmd_store

        return cmd_store(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
