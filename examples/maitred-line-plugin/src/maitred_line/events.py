"""A stateful plugin object: counts the broker's system events by topic.

Entry points register modules (or objects that live at module level, shared by every broker
of the process), so a plugin that keeps state per broker is registered by whoever builds the
broker, one instance each::

    from maitred.core.app import embedded
    from maitred_line.events import EventCounter

    counter = EventCounter()
    async with embedded(mdp=["tcp://127.0.0.1:5555"], plugins=[counter]):
        ...
    print(counter.counts["$sys.worker.ready"])

It implements ``maitred_system_event`` (called for every ``$sys.*`` event, whether or not a
session subscribes) and ``maitred_broker_stopping`` (logs a summary when the drain begins).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from maitred.plugins import hookimpl

if TYPE_CHECKING:
    from maitred.core.runtime import Broker

log = logging.getLogger("maitred_line.events")


class EventCounter:
    """Counts system events per topic (``$sys.worker.ready``, ``$sys.session.join``, ...)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @hookimpl
    def maitred_system_event(self, topic: str, payload: dict[str, Any]) -> None:
        # called synchronously on the broker's hot path: count and return
        self.counts[topic] += 1

    @hookimpl
    def maitred_broker_stopping(self, broker: Broker) -> None:
        summary = ", ".join(f"{t}={n}" for t, n in sorted(self.counts.items())) or "none"
        log.info("%s: system events seen: %s", broker.config.broker.name, summary)
