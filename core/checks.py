"""Range checks of a config table's numbers, for the ``problems()`` of the config types
(the transports' ``[transports.NAME]`` tables): each returns one line per key out of range,
worded the same way in every table (``KEY must be >= N``), so a transport lists its bounds
instead of writing an ``if`` and a message for each key."""

from __future__ import annotations

import math


def at_least(table: object, minimum: int, *keys: str, note: str = "") -> list[str]:
    """``KEY must be >= MINIMUM`` (then `` (NOTE)`` when given) for each of ``keys`` whose
    value in ``table`` (an attribute) is below ``minimum``."""
    tail = f" ({note})" if note else ""
    return [f"{key} must be >= {minimum}{tail}" for key in keys if getattr(table, key) < minimum]


def finite(table: object, *keys: str, positive: bool = False, note: str = "") -> list[str]:
    """``KEY must be a finite number >= 0`` (``> 0`` with ``positive``; then `` (NOTE)`` when
    given) for each of ``keys`` whose value in ``table`` is not (NaN and infinity are not)."""
    tail = f" ({note})" if note else ""
    low = "> 0" if positive else ">= 0"
    return [
        f"{key} must be a finite number {low}{tail}"
        for key in keys
        if not _finite(getattr(table, key), positive)
    ]


def _finite(value: float, positive: bool) -> bool:
    """Whether ``value`` is finite and >= 0 (> 0 with ``positive``): NaN is not."""
    return (value > 0 if positive else value >= 0) and value < math.inf
