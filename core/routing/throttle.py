"""At most one event per peer per interval: what keeps a peer that is refused again and again
(a CURVE client with an unknown key reconnects every 100 ms, libzmq's default) from flooding
``$sys.auth.denied`` and whoever listens to it.

:class:`PeerThrottle` is pure (no I/O, no clock: the caller says when): its
:meth:`PeerThrottle.admit` says whether one more event about a peer goes out now and, when it
does, how many were held back since the last one went out, so that event carries the count.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["AUTH_DENIED_INTERVAL", "PeerThrottle"]

#: seconds between two ``$sys.auth.denied`` events (action ``authenticate``) about one peer
#: address of one transport (the rejection log summarises every 10 s too)
AUTH_DENIED_INTERVAL = 10.0


class PeerThrottle:
    """One event per key (a transport and a peer address) every ``interval`` seconds.

    Memory is bounded: at most ``max_peers`` keys are remembered. The keys are kept in the
    order their last event went out, so those whose interval is over are forgotten first (they
    would be let through anyway) and, when more than ``max_peers`` peers are refused within one
    interval, the one heard from longest ago is forgotten (its next event goes out early: many
    peers give many events, never more than one per peer per interval while they fit)."""

    def __init__(self, interval: float = AUTH_DENIED_INTERVAL, max_peers: int = 10_000) -> None:
        self.interval = interval
        self.max_peers = max_peers
        #: key -> [when its last event went out, events held back since]
        self._peers: dict[Hashable, list[float]] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def admit(self, key: Hashable, now: float) -> int | None:
        """None: hold this event (at ``now``, monotonic seconds) back, counted for the next
        one. Else the event goes out, and the number is how many were held back before it (0
        for the first)."""
        peers = self._peers
        entry = peers.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        held = int(entry[1]) if entry is not None else 0
        if entry is not None:
            del peers[key]  # re-inserted at the end: the order is the order of last events
        else:
            self._forget(now)
        peers[key] = [now, 0]
        return held

    def _forget(self, now: float) -> None:
        """Make room for one more key: drop those whose interval is over, then (still full) the
        oldest."""
        peers = self._peers
        stale = []
        for key, (sent, _) in peers.items():
            if now - sent < self.interval:
                break
            stale.append(key)
        for key in stale:
            del peers[key]
        while len(peers) >= self.max_peers:
            del peers[next(iter(peers))]
