"""Worker liveness: the ``[liveness]`` settings and the lists that find silent workers.

Workers sit in insertion-ordered lists, one per liveness window, ordered by their last sign of
life (oldest first): a sign of life moves a worker to the end, and finding who is overdue looks
only at the head of each list. Busy workers that fell silent (suspects) wait in lists of their
own, one per (window, busy timeout), in the order they fell silent. The router decides what
happens to an overdue worker; these lists only keep the order.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import msgspec

from maitred.core.routing.model import Worker


class Liveness(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Worker liveness defaults (``[liveness]``).

    A worker's liveness window is ``heartbeat_interval * liveness``: silence is measured from
    the last thing the worker sent (a heartbeat, a reply, any command), never from what the
    broker sent it. An idle worker silent for its window is dead and dropped. A busy worker
    (one holding requests) silent for its window gets no new request, its pipelined credit
    falls back to its base credit, and it is dropped once silent for ``busy_timeout`` (its
    requests are then redelivered or failed by the service's policy); a word from it before
    then puts it back in dispatch. Workers that heartbeat while busy are never suspected.
    """

    heartbeat_interval: float = 2.5
    liveness: int = 3
    #: seconds of silence after which a worker holding requests is dropped (for workers that
    #: do not heartbeat while they work, e.g. zguide's or majortomo's; majortomo's default).
    #: It gets no new request from its liveness window on. At most the window: a busy worker
    #: is dropped at its window like an idle one. 0: never drop a busy worker for silence
    busy_timeout: float = 900.0

    @property
    def idle_timeout(self) -> float:
        return self.heartbeat_interval * self.liveness

    def problems(self) -> list[str]:
        out = []
        if not (0 < self.heartbeat_interval < math.inf):
            out.append("heartbeat_interval must be a finite number > 0")
        if self.liveness < 1:
            out.append("liveness must be >= 1")
        if not (0 <= self.busy_timeout < math.inf):
            out.append("busy_timeout must be a finite number >= 0 (0: never expire busy workers)")
        return out


class LivenessLists:
    """Workers ordered by last activity, per liveness window. See the module docstring."""

    __slots__ = ("live", "next_pipeline_check", "pipelined", "suspects")

    def __init__(self) -> None:
        #: timeout -> workers ordered by last activity (oldest first)
        self.live: dict[float, OrderedDict[Worker, None]] = {}
        #: busy workers silent past their window: (idle_timeout, busy_timeout) -> workers in
        #: the order they fell silent
        self.suspects: dict[tuple[float, float], OrderedDict[Worker, None]] = {}
        #: workers whose adaptive credit grew past their base credit (with a liveness window):
        #: their credit falls back when they stop answering
        self.pipelined: dict[Worker, None] = {}
        #: when the pipelined workers are looked at next
        self.next_pipeline_check = 0.0

    def put(self, worker: Worker, timeout: float) -> None:
        """Watch ``worker`` with ``timeout`` (its ``live_key``; 0: not watched)."""
        worker.live_key = timeout
        if timeout > 0:
            live = self.live.get(timeout)
            if live is None:
                live = self.live[timeout] = OrderedDict()
            live[worker] = None

    def move(self, worker: Worker, timeout: float) -> None:
        """Watch ``worker`` with another timeout (e.g. idle again, or busy)."""
        old = self.live.get(worker.live_key)
        if old is not None:
            if worker.live_key == timeout and worker in old:
                old.move_to_end(worker)  # the same list (e.g. idle again): last in it
                return
            old.pop(worker, None)
        self.put(worker, timeout)

    def seen(self, worker: Worker) -> None:
        """``worker`` showed a sign of life: last in its list."""
        live = self.live.get(worker.live_key)
        if live is not None:
            live.move_to_end(worker)

    def unwatch(self, worker: Worker) -> None:
        """Out of its liveness list (dropped, or suspected)."""
        live = self.live.get(worker.live_key)
        if live is not None:
            live.pop(worker, None)

    def add_suspect(self, worker: Worker) -> None:
        """Out of its liveness list, into the suspects of its busy timeout (if it has one)."""
        self.unwatch(worker)
        worker.live_key = 0.0
        if worker.busy_timeout > 0:
            key = (worker.idle_timeout, worker.busy_timeout)
            suspects = self.suspects.get(key)
            if suspects is None:
                suspects = self.suspects[key] = OrderedDict()
            suspects[worker] = None

    def drop_suspect(self, worker: Worker) -> None:
        suspects = self.suspects.get((worker.idle_timeout, worker.busy_timeout))
        if suspects is not None:
            suspects.pop(worker, None)

    def overdue(self, now: float) -> list[Worker]:
        """Every watched worker silent past its timeout at ``now``, and every suspect silent
        past its busy timeout (the lists are not changed)."""
        due: list[Worker] = []
        for timeout, live in list(self.live.items()):
            limit = now - timeout
            for worker in live:
                if worker.touched > limit:
                    break
                due.append(worker)
        for (_idle, busy), suspects in self.suspects.items():
            limit = now - busy
            for worker in suspects:
                if worker.touched > limit:
                    break
                due.append(worker)
        return due

    def prune(self) -> None:
        """Forget the lists left empty."""
        for timeout in [t for t, live in self.live.items() if not live]:
            del self.live[timeout]
        for key in [k for k, suspects in self.suspects.items() if not suspects]:
            del self.suspects[key]
