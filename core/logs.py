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
