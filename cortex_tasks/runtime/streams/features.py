"""Temporal features per key (feature_config.temporal: windows 1h, 24h, 7d; mean, sum, count; rates).

A key's history is kept in Redis as running totals per minute and per hour (count and sum in one hash
per key, state.py), so a feature row is a sum over at most 60 + 168 buckets rather than a scan of seven
days of events: these totals are the cached feature values, shared by every stream worker. The last row
of each key is cached too (`features:<key>`) for the live view and the IsolationForest's training rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

FEATURE_NAMES: tuple[str, ...] = (
    "value", "count_1h", "sum_1h", "mean_1h", "count_24h", "sum_24h", "mean_24h", "count_7d", "sum_7d",
    "mean_7d", "rate_1h_per_min", "rate_ratio_1h_24h", "value_minus_mean_1h",
)
# What the IsolationForest sees (forest_row): an event's departures from its own key's levels, in units of
# the key's spread, and its key's rate against the day's. Not the levels themselves: one forest serves every
# key of a stream, and keys at different levels would make the keys at the edges of the range look unusual
# whatever they do (the highest and lowest keys took most of its flags), while a key's change within the
# range went unseen. Not the running counts and sums either, which grow while a stream fills its first week.
FOREST_FEATURES: tuple[str, ...] = ("value_vs_mean_1h", "mean_1h_vs_24h", "mean_24h_vs_7d", "rate_ratio_1h_24h")
_INDEX = {name: index for index, name in enumerate(FEATURE_NAMES)}
# Departures are capped: a key whose history never varied has no spread to divide by.
MAX_DEPARTURE = 1e6
# A key's first events have no spread worth the name: they get no forest row (the forest is warming up for
# them), so that they neither get judged nor fill the training rows with departures from nothing.
FOREST_MIN_HISTORY = 10
MINUTES_1H = 60
HOURS_24H = 24
HOURS_7D = 168


@dataclass
class KeyHistory:
    """A key's per-minute and per-hour (count, sum) totals, updated as the batch's events are scored."""

    minutes: dict[int, list[float]] = field(default_factory=dict)
    hours: dict[int, list[float]] = field(default_factory=dict)
    # The sums of the last row's (minute, hour), kept up to date by add() while events stay in them: the
    # events of one key in one micro-batch mostly do, and then a row costs no bucket scan.
    _sums: tuple[int, int, list[float]] | None = None

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> KeyHistory:
        history = cls()
        for name, value in raw.items():
            text = name.decode()
            kind, bucket, part = text[0], int(text[1:-1]), text[-1]
            target = history.minutes if kind == "m" else history.hours
            totals = target.setdefault(bucket, [0.0, 0.0])
            totals[0 if part == "c" else 1] += float(value)
        return history

    def add(self, time: float, value: float) -> None:
        minute, hour = int(time // 60), int(time // 3600)
        if self._sums is not None:
            cached_minute, cached_hour, sums = self._sums
            if (cached_minute, cached_hour) == (minute, hour):
                for index in (0, 2, 4):
                    sums[index] += 1
                    sums[index + 1] += value
            else:
                self._sums = None
        for target, bucket in ((self.minutes, int(time // 60)), (self.hours, int(time // 3600))):
            totals = target.setdefault(bucket, [0.0, 0.0])
            totals[0] += 1
            totals[1] += value

    def stale_fields(self, time: float) -> list[str]:
        """Hash fields older than any feature window reaches (to delete)."""
        minute, hour = int(time // 60), int(time // 3600)
        old = [f"m{bucket}{part}" for bucket in self.minutes if bucket <= minute - MINUTES_1H for part in "cs"]
        return old + [f"h{bucket}{part}" for bucket in self.hours if bucket <= hour - HOURS_7D for part in "cs"]

    def row(self, time: float, value: float) -> list[float]:
        """The feature row of an event of this key at `time` (the event itself counted)."""
        minute, hour = int(time // 60), int(time // 3600)

        def totals(target: dict[int, list[float]], newest: int, span: int) -> tuple[float, float]:
            count = total = 0.0
            for bucket, (c, s) in target.items():
                if newest - span < bucket <= newest:
                    count += c
                    total += s
            return count, total

        if self._sums is not None and self._sums[:2] == (minute, hour):
            c1, s1, c24, s24, c7, s7 = self._sums[2]
        else:
            c1, s1 = totals(self.minutes, minute, MINUTES_1H)
            c24, s24 = totals(self.hours, hour, HOURS_24H)
            c7, s7 = totals(self.hours, hour, HOURS_7D)
            self._sums = (minute, hour, [c1, s1, c24, s24, c7, s7])
        # The row counts the event itself; the cached sums are the history before it.
        c1, s1, c24, s24, c7, s7 = c1 + 1, s1 + value, c24 + 1, s24 + value, c7 + 1, s7 + value
        mean1, mean24, mean7 = s1 / c1, s24 / c24, s7 / c7
        rate1 = c1 / MINUTES_1H
        rate24 = c24 / (HOURS_24H * 60)
        return [value, c1, s1, mean1, c24, s24, mean24, c7, s7, mean7, rate1,
                rate1 / rate24 if rate24 else 1.0, value - mean1]


def as_named(row: list[float]) -> dict[str, float]:
    return {name: round(float(value), 6) for name, value in zip(FEATURE_NAMES, row)}


def forest_row(row: list[float], history: tuple[float, float, float]) -> list[float] | None:
    """The IsolationForest's row of an event: its feature `row` (FEATURE_NAMES) measured against its key's
    `history` before it (count, sum, sum of squares, as the key baseline keeps it): how far the value is
    from the last hour's mean, the hour's mean from the day's, the day's from the week's, each in the key's
    standard deviations; and the rate ratio as it is. None while the key has fewer than FOREST_MIN_HISTORY
    events before this one."""
    count, total, squares = history
    if count < FOREST_MIN_HISTORY:
        return None
    mean = total / count if count else 0.0
    spread = math.sqrt(max(squares / count - mean * mean, 0.0))
    scale = max(spread, 1e-9 * max(1.0, abs(mean)))

    def departure(a: str, b: str) -> float:
        return max(-MAX_DEPARTURE, min(MAX_DEPARTURE, (row[_INDEX[a]] - row[_INDEX[b]]) / scale))

    return [departure("value", "mean_1h"), departure("mean_1h", "mean_24h"), departure("mean_24h", "mean_7d"),
            row[_INDEX["rate_ratio_1h_24h"]]]
