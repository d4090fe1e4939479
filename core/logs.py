"""Log set-up for ``maitred serve``: human text lines or one JSON object per line.

Records about one request carry ``req`` (the router's request id: the same id in the records of
the caller's transport, the router and the worker's transport, whatever protocols they speak),
``service`` and ``transport`` as fields (``logging``'s ``extra``); the JSON format writes them as
keys, so ``jq 'select(.req == 42)'`` follows one request across protocols.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO

#: the ``extra`` fields the JSON format copies from a record when present
FIELDS = ("req", "service", "transport", "code", "worker", "session")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, msg, the fields of
    :data:`FIELDS` that the record carries, and ``exc`` with the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(
    level: str, fmt: Literal["text", "json"] = "text", stream: TextIO | None = None
) -> None:
    """Configure the root logger of the process (``maitred serve``; an embedded broker leaves
    logging to its host program)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


class RejectionLog:
    """Peer-caused rejections (malformed requests, refused registrations, protocol errors):
    each one at DEBUG, and at most one WARNING summary per kind every ``interval`` seconds
    ("1,654 malformed requests from 127.0.0.1 in the last 10 s"), never a traceback, so a peer
    that floods the broker with bad input cannot flood its log.

    ``kinds`` maps a kind to its plural noun for the summary (``{"malformed": "malformed HTTP
    requests"}``). The summary of a window is written when the first rejection after its end
    arrives or, inside a running event loop, by a timer at its end. At most ``max_peers``
    distinct peers are told apart per window (the rest are counted together), so memory stays
    bounded whatever the number of peers.

    ``hints`` maps a kind to a likely cause added to its summary (``"...in the last 10 s: a
    ws:// client on a wss:// port?"``). A rejection noted with the peer "" (a kind whose noun
    names the place, the peer being unknown) gives a summary without "from".
    """

    def __init__(
        self,
        logger: logging.Logger,
        kinds: dict[str, str],
        interval: float = 10.0,
        max_peers: int = 1000,
        clock: Any = None,
        hints: dict[str, str] | None = None,
    ) -> None:
        self.logger = logger
        self.kinds = dict(kinds)
        self.hints = dict(hints or {})
        self.interval = interval
        self.max_peers = max_peers
        self._clock = clock or time.monotonic
        #: kind -> (window start, total, {peer: count})
        self._windows: dict[str, tuple[float, list[int], dict[str, int]]] = {}
        self._timers: dict[str, Any] = {}

    def note(self, kind: str, peer: str, detail: str) -> None:
        """One rejection of ``kind`` caused by ``peer`` (an address, or an identity for peers
        whose address is not known); ``detail`` goes to the DEBUG line only."""
        noun = self.kinds.get(kind, kind)
        if peer:
            self.logger.debug("%s from %s: %s", noun, peer, detail)
        else:
            self.logger.debug("%s: %s", noun, detail)
        now = self._clock()
        window = self._windows.get(kind)
        if window is not None and now - window[0] >= self.interval:
            self.flush(kind)
            window = None
        if window is None:
            window = (now, [0], {})
            self._windows[kind] = window
            self._arm(kind)
        window[1][0] += 1
        peers = window[2]
        if peer in peers or len(peers) < self.max_peers:
            peers[peer] = peers.get(peer, 0) + 1

    def _arm(self, kind: str) -> None:
        try:
            import asyncio

            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timers[kind] = loop.call_later(self.interval, self.flush, kind)

    def flush(self, kind: str | None = None) -> None:
        """Write the summary of ``kind``'s current window (all kinds: None) and start anew."""
        for k in [kind] if kind is not None else list(self._windows):
            timer = self._timers.pop(k, None)
            if timer is not None:
                timer.cancel()
            window = self._windows.pop(k, None)
            if window is None:
                continue
            start, total, peers = window
            self.logger.warning("%s", self._summary(k, total[0], peers, self._clock() - start))

    def close(self) -> None:
        """Write what is pending and cancel the timers (the transport is closing)."""
        self.flush()

    def _summary(self, kind: str, total: int, peers: dict[str, int], span: float) -> str:
        noun = self.kinds.get(kind, kind)
        seconds = max(1, round(min(span, self.interval)))
        hint = self.hints.get(kind)
        tail = f": {hint}" if hint else ""
        top = sorted(peers.items(), key=lambda kv: -kv[1])
        if len(top) == 1 and top[0][1] == total:
            source = f" from {top[0][0]}" if top[0][0] else ""
            return f"{total:,} {noun}{source} in the last {seconds} s{tail}"
        shown = ", ".join(f"{n:,} from {p or 'unknown peers'}" for p, n in top[:5])
        rest = total - sum(n for _, n in top[:5])
        more = f", {rest:,} from other peers" if rest else ""
        return f"{total:,} {noun} in the last {seconds} s: {shown}{more}{tail}"
