"""The listing verbs of the ``maitred`` command (``services``, ``workers``, ``queues``, ``info``,
``connections``): the ``mmi.*`` listing each asks for, page by page, and how it is printed."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from maitred.core.transport import BrokerClient


def _mmi(client: BrokerClient, name: str, arg: str, timeout: float) -> Any:
    """One ``mmi.*`` answer as JSON (a listing page by page when the broker pages it)."""
    rows: list[Any] = []
    offset: int | None = 0
    key = "transport" if name == "mmi.sessions" else "service"
    while offset is not None:  # page by page (docs/reference/mmi.md#listings-and-pages)
        query = {"offset": offset, **({key: arg} if arg else {})}
        frame = json.dumps(query).encode() if name != "mmi.info" else b""
        answer = json.loads(client.request(name, [frame], timeout)[-1])
        if not (isinstance(answer, dict) and "items" in answer and "next" in answer):
            return answer  # not paged: the whole answer
        items = answer["items"]
        if isinstance(items, dict):
            rows += [{"name": k, **v} for k, v in items.items()]
        else:
            rows += items
        offset = answer["next"]
    return rows


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return " ".join(_cell(v) for v in value) or "-"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Rows as aligned columns under upper-case headers; numbers right-aligned."""
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    heads = [head for _, head in columns]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(heads)]
    numeric = [
        all(isinstance(row.get(key), int | float) for row in rows) and bool(rows)
        for key, _ in columns
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line(heads))
    for c in cells:
        print(line(c))


SERVICE_COLUMNS = [
    ("name", "SERVICE"),
    ("workers", "WORKERS"),
    ("free", "FREE"),
    ("queued", "QUEUED"),
    ("inflight", "INFLIGHT"),
    ("requests", "REQUESTS"),
    ("errors", "ERRORS"),
]
WORKER_COLUMNS = [
    ("service", "SERVICE"),
    ("transport", "PROTOCOL"),
    ("worker", "WORKER"),
    ("address", "ADDRESS"),
    ("identity", "IDENTITY"),
    ("inflight", "INFLIGHT"),
    ("served", "SERVED"),
    ("idle_for", "IDLE_S"),
    ("connected_for", "UP_S"),
]
QUEUE_COLUMNS = [("name", "SERVICE"), ("queued", "QUEUED"), ("inflight", "INFLIGHT")]
CONNECTION_COLUMNS = [
    ("id", "ID"),
    ("transport", "TRANSPORT"),
    ("session", "SESSION"),
    ("identity", "IDENTITY"),
    ("address", "ADDRESS"),
    ("workers", "WORKERS"),
    ("subscriptions", "SUBS"),
    ("queued", "QUEUED"),
    ("connected_for", "UP_S"),
]
TRAFFIC_COLUMNS = [
    ("transport", "TRANSPORT"),
    ("endpoints", "ENDPOINTS"),
    ("requests", "REQUESTS"),
    ("replies", "REPLIES"),
    ("errors", "ERRORS"),
    ("served", "SERVED"),
]


def fetch_listing(client: BrokerClient, args: argparse.Namespace) -> Any:
    """The answer of the ``mmi.*`` listing behind ``args.verb``, in rows (all pages)."""
    traffic_only = args.verb == "connections" and args.traffic
    name = {"connections": "mmi.info" if traffic_only else "mmi.sessions"}.get(
        args.verb, f"mmi.{args.verb}"
    )
    argument = getattr(args, "service", "") or getattr(args, "transport", "")
    answer = _mmi(client, name, argument, args.timeout)
    if args.verb == "queues" and isinstance(answer, dict):  # unpaged: name -> depths
        answer = [{"name": k, **v} for k, v in sorted(answer.items())]
    if traffic_only:
        endpoints = answer.get("transports", {})
        traffic = answer.get("traffic", {})
        answer = [
            {"transport": t, "endpoints": endpoints.get(t, []), **traffic.get(t, {})}
            for t in sorted(set(endpoints) | set(traffic))
        ]
    return answer


def print_listing(args: argparse.Namespace, answer: Any) -> None:
    """``answer`` as JSON (``--json``), ``key: value`` lines (``info``) or a table."""
    if args.json:
        print(json.dumps(answer, indent=2))
        return
    if args.verb == "info":
        for key in (
            "name",
            "version",
            "state",
            "uptime",
            "config",
            "services",
            "workers",
            "sessions",
            "held_bytes",
            "overloaded",
        ):
            if key in answer:
                print(f"{key + ':':12} {_cell(answer[key])}")
        for transport, eps in sorted(answer.get("transports", {}).items()):
            print(f"{transport + ':':12} {_cell(eps)}")
        return
    traffic_only = args.verb == "connections" and args.traffic
    columns = {
        "services": SERVICE_COLUMNS,
        "workers": WORKER_COLUMNS,
        "queues": QUEUE_COLUMNS,
        "connections": TRAFFIC_COLUMNS if traffic_only else CONNECTION_COLUMNS,
    }[args.verb]
    print_table(answer, columns)
