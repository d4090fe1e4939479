"""The message-cli verbs an xapi operator expects, added to ``maitred`` by the http plugin
(hook ``maitred_add_commands``): ``list``, ``diagnostics``, ``ack``, ``destroy``, ``tail``,
``mscgen``, ``shutdown``. They speak the message-switch protocol to ``-b URL``
(``http://HOST:PORT`` or ``unix:/path``; env ``MAITRED_SWITCH``). ``call``, ``worker`` and
``services`` are the core verbs, which reach the switch with the same URL.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from maitred.core.reach import Unreachable, probe
from maitred.transports.http.client import SwitchClient, SwitchError

DEFAULT_SWITCH = "http://127.0.0.1:8080"
NS = 1e9


#: exit codes, as the core verbs use them (docs/reference/cli.md#exit-codes)
EXIT_FAIL, EXIT_USAGE, EXIT_ERROR_REPLY, EXIT_UNREACHABLE, EXIT_REFUSED = 1, 2, 4, 5, 6


def _client(args: argparse.Namespace) -> SwitchClient:
    probe(args.broker)  # nothing there: said within a second, not after the whole timeout
    return SwitchClient(args.broker, timeout=args.timeout, cacert=args.cacert)


def _fail(exc: Exception, url: str = "") -> int:
    if isinstance(exc, BrokenPipeError):
        raise exc  # the reader of our output went away: the core verb runner ends quietly
    if isinstance(exc, Unreachable):
        print(f"maitred: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if isinstance(exc, SwitchError):
        reason = exc.body.decode("utf-8", "replace").strip() or f"HTTP {exc.status}"
        print(f"maitred: the switch at {url} answered {exc.status}: {reason}", file=sys.stderr)
        return EXIT_REFUSED if exc.status in (401, 403) else EXIT_ERROR_REPLY
    print(f"maitred: {url}: {exc}", file=sys.stderr)
    return EXIT_FAIL


def _switch_verb(
    body: Callable[[argparse.Namespace, SwitchClient], int],
) -> Callable[[argparse.Namespace], int]:
    """A verb that talks to the switch at ``-b``: ``body`` gets an open client; a switch that
    is not there or answers an error becomes the verb's message and exit code (``_fail``)."""

    @functools.wraps(body)  # its name and docstring make the verb (``add_commands``)
    def run(args: argparse.Namespace) -> int:
        try:
            with _client(args) as sw:
                return body(args, sw)
        except (OSError, SwitchError, Unreachable) as exc:
            return _fail(exc, args.broker)

    return run


@_switch_verb
def cmd_list(args: argparse.Namespace, sw: SwitchClient) -> int:
    """list switch queues (alive ones unless --all)

    maitred list -b http://127.0.0.1:8080
    maitred list --all --prefix org.xen
    """
    for name in sw.list_queues(args.prefix, alive=not args.all):
        print(name)
    return 0


def summarise(diag: dict[str, Any], now_ns: int | None = None) -> list[str]:
    """The human summary of a diagnostics document (``GET /``), as message-cli prints it:
    services running / never started / crashed, waiting requests, reply queues."""
    now = diag.get("current_time", 0) if now_ns is None else now_ns
    running, never, crashed, waiting = [], [], [], []
    for name, queue in sorted(diag.get("permanent_queues", {}).items()):
        expected = queue.get("next_transfer_expected")
        if expected is None:
            never.append(name)
        elif expected >= now:
            running.append(name)
        else:
            crashed.append(f"{name} (last seen {(now - expected) / NS:.1f}s ago)")
        for (q, n), entry in queue.get("queue_contents", []):
            origin = entry.get("origin")
            who = origin[1] if isinstance(origin, list) and len(origin) > 1 else "?"
            age = (now - entry.get("time", now)) / NS
            waiting.append(f"{q}/{n} from {who}, waiting {age:.1f}s")
    transient = sorted(diag.get("transient_queues", {}))
    out = ["Switch diagnostics", ""]
    out += _section("Services running", running)
    out += _section("Services never started", never)
    out += _section("Services which have failed", crashed)
    out += _section("Requests waiting", waiting)
    out += _section("Reply queues", transient)
    return out


def _section(title: str, items: Iterable[str]) -> list[str]:
    items = list(items)
    return [f"{title}: {len(items)}", *[f"  {item}" for item in items], ""]


@_switch_verb
def cmd_diagnostics(args: argparse.Namespace, sw: SwitchClient) -> int:
    """summary of switch services and queues

    maitred diagnostics -b unix:/run/maitred/http.sock
    maitred diagnostics --json
    """
    diag = sw.diagnostics()
    if args.json:
        print(json.dumps(diag, indent=2))
    else:
        print("\n".join(summarise(diag)))
    return 0


def _missing(sw: SwitchClient, queue: str, url: str) -> bool:
    """Whether ``queue`` does not exist (said on stderr, with how to list the queues)."""
    if queue in sw.list_queues(queue, alive=False):
        return False
    print(
        f"maitred: no queue {queue!r} at {url} (`maitred list --all -b {url}` lists them)",
        file=sys.stderr,
    )
    return True


@_switch_verb
def cmd_ack(args: argparse.Namespace, sw: SwitchClient) -> int:
    """acknowledge (delete) message N of a queue

    maitred ack org.xen.xapi 12
    """
    if _missing(sw, args.queue, args.broker):
        return EXIT_ERROR_REPLY
    sw.ack(args.queue, args.n)
    return 0


@_switch_verb
def cmd_destroy(args: argparse.Namespace, sw: SwitchClient) -> int:
    """destroy a switch queue and its messages

    maitred destroy org.xen.old-queue
    """
    if _missing(sw, args.queue, args.broker):
        return EXIT_ERROR_REPLY
    sw.destroy(args.queue)
    return 0


def shown(text: str, limit: int = 60) -> str:
    """A body for one line: control characters escaped, cut at ``limit`` characters."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return escaped if len(escaped) <= limit else f"{escaped[:limit]}…"


def trace_line(event: dict[str, Any]) -> str:
    """One trace event as a line: time, who sent what to which queue, who took it, the body
    (escaped, cut short) and, for a response, the processing time."""
    when = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0.0)))
    msg = event.get("message", [])
    if msg and msg[0] == "Ack":
        q, n = msg[1]
        what = f"ack {q}/{n}"
    elif msg:
        q, n = msg[1]
        kind = msg[2].get("kind", ["?"]) if len(msg) > 2 else ["?"]
        payload = msg[2].get("payload", "") if len(msg) > 2 else ""
        body = f'"{shown(str(payload))}"' if payload else "(body not traced)"
        what = f"{kind[0]} {q}/{n} {body}"
    else:
        what = "?"
    took = event.get("processing_time")
    if isinstance(took, int | float):
        what += f" in {took / 1e6:.3f} ms"
    src = event.get("input", "-")
    dst = event.get("output", "-")
    return f"{when} {src} -> {event.get('queue', '-')} -> {dst}: {what}"


@_switch_verb
def cmd_tail(args: argparse.Namespace, sw: SwitchClient) -> int:
    """print the switch trace (--follow: keep going)

    maitred tail
    maitred tail -f | grep echo
    maitred tail | head -5
    """
    start = -1
    deadline = None if args.follow else time.monotonic()
    try:
        while True:
            events = sw.trace(start, timeout=args.poll if args.follow else 0.0)
            for n, event in events:
                print(trace_line(event), flush=True)
                start = max(start, n)
            if deadline is not None and (not events or time.monotonic() > deadline):
                return 0
    except KeyboardInterrupt:
        return 0


def mscgen(events: Iterable[dict[str, Any]]) -> str:
    """A sequence chart (mscgen syntax) of the trace: sessions and queues as columns."""
    arrows: list[str] = []
    names: list[str] = []

    def col(name: str) -> str:
        if name not in names:
            names.append(name)
        return '"' + name.replace('"', "'") + '"'

    for event in events:
        queue = event.get("queue", "")
        msg = event.get("message", [])
        label = ""
        if msg and msg[0] == "Message" and len(msg) > 2:
            label = str(msg[2].get("kind", ["?"])[0])
        elif msg:
            label = str(msg[0])
        if "input" in event:
            arrows.append(f'  {col(event["input"])} -> {col(queue)} [label="{label}"];')
        if "output" in event:
            arrows.append(f'  {col(queue)} -> {col(event["output"])} [label="{label}"];')
    header = "msc {\n  " + ", ".join(col(n) for n in list(names)) + ";\n"
    return header + "\n".join(arrows) + "\n}\n"


@_switch_verb
def cmd_mscgen(args: argparse.Namespace, sw: SwitchClient) -> int:
    """the trace as an mscgen sequence chart

    maitred mscgen > trace.msc && mscgen -T png trace.msc
    """
    events = [event for _, event in sw.trace(-1, timeout=0.0)]
    sys.stdout.write(mscgen(events))
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    """stop the broker (needs the shutdown secret)

    MAITRED_SHUTDOWN_SECRET=s3cret maitred shutdown
    maitred shutdown --secret-file /etc/maitred/shutdown.secret
    """
    try:
        secret = (
            Path(args.secret_file).read_text().strip()
            if args.secret_file
            else os.environ.get("MAITRED_SHUTDOWN_SECRET", "").strip()
        )
        probe(args.broker)
        with SwitchClient(
            args.broker, token=args.token, timeout=args.timeout, cacert=args.cacert
        ) as sw:
            sw.shutdown(secret or None)
    except (OSError, SwitchError, Unreachable) as exc:
        return _fail(exc, args.broker)
    return 0


def add_commands(subparsers: Any) -> None:
    """Register the verbs (called from the plugin's ``maitred_add_commands``)."""

    def switch_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-b",
            "--broker",
            default=os.environ.get("MAITRED_SWITCH", DEFAULT_SWITCH),
            help=f"switch URL: http://HOST:PORT or unix:PATH (env MAITRED_SWITCH, default "
            f"{DEFAULT_SWITCH})",
        )
        p.add_argument("-t", "--timeout", type=float, default=10.0, help="seconds (default 10)")
        p.add_argument(
            "--cacert",
            metavar="FILE",
            help="CA file of an https:// switch's certificate (env MAITRED_CACERT); the bearer "
            "token is $MAITRED_TOKEN",
        )

    def verb(run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        """The verb ``cmd_NAME`` runs: its docstring's first line is its help, the other lines
        its examples."""
        what, _, examples = inspect.cleandoc(run.__doc__ or "").partition("\n\n")
        p: argparse.ArgumentParser = subparsers.add_parser(
            run.__name__.removeprefix("cmd_"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.splitlines()),
            help=what,
        )
        p.set_defaults(run=run)
        verbs.append(p)
        return p

    verbs: list[argparse.ArgumentParser] = []

    p = verb(cmd_list)
    p.add_argument("--prefix", default="", help="only names starting with this")
    p.add_argument("--all", action="store_true", help="every queue, not only alive ones")
    p = verb(cmd_diagnostics)
    p.add_argument("--json", action="store_true", help="print the raw diagnostics document")
    p = verb(cmd_ack)
    p.add_argument("queue")
    p.add_argument("n", type=int)
    p = verb(cmd_destroy)
    p.add_argument("queue")
    p = verb(cmd_tail)
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--poll", type=float, default=5.0, help="long-poll seconds with --follow")
    verb(cmd_mscgen)
    p = verb(cmd_shutdown)
    p.add_argument("--token", help="login token (where shutdown_tokens narrows who may)")
    p.add_argument(
        "--secret-file",
        help="file holding the shutdown secret (default: env MAITRED_SHUTDOWN_SECRET)",
    )
    for p in verbs:  # after each verb's own arguments, as ``--help`` lists them
        switch_opts(p)
