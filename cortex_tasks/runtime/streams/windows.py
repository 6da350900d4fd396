"""Sliding windows per key: `size` long, a new one every `size - overlap` seconds of event time.

Windows are aligned on the epoch (window k covers [k x hop, k x hop + size)), so every worker and every
restart agrees on them without shared bookkeeping; with the default 5 min and 30 s overlap an event
falls in one window, or in two during the 30 s they overlap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def window_starts(time: float, size: float, hop: float) -> list[float]:
    """The starts of the windows holding `time`, oldest first."""
    last = math.floor(time / hop) * hop
    starts = []
    start = last
    while start > time - size:
        starts.append(round(start, 6))
        start -= hop
    return starts[::-1]


@dataclass(frozen=True)
class Aggregate:
    count: int
    total: float
    mean: float
    minimum: float
    maximum: float

    def as_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "sum": self.total, "mean": self.mean, "min": self.minimum,
                "max": self.maximum}


def aggregate(values: list[float]) -> Aggregate | None:
    if not values:
        return None
    total = float(sum(values))
    return Aggregate(len(values), total, total / len(values), float(min(values)), float(max(values)))
