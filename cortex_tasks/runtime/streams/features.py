"""Temporal features per key (feature_config.temporal: windows 1h, 24h, 7d; mean, sum, count; rates).

A key's history is kept in Redis as running totals per minute and per hour (count and sum in one hash
per key, state.py), so a feature row is a sum over at most 60 + 168 buckets rather than a scan of seven
days of events: these totals are the cached feature values, shared by every stream worker. The last row
of each key is cached too (`features:<key>`) for the live view and the IsolationForest's training rows.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

FEATURE_NAMES: tuple[str, ...] = (
    "value", "count_1h", "sum_1h", "mean_1h", "count_24h", "sum_24h", "mean_24h", "count_7d", "sum_7d",
    "mean_7d", "rate_1h_per_min", "rate_ratio_1h_24h", "value_minus_mean_1h",
)
# What the IsolationForest sees (forest_row): an event's departures from its own key's local trend, in units
# of the key's own short-term spread (local_departures). Not the levels themselves: one forest serves every key
# of a stream, and keys at different levels would make the keys at the edges of the range look unusual
# whatever they do. Not departures from the hour's, day's or week's means either, nor their rate ratio: while
# a stream fills its first day those drift (the day's rate is counted over less than a day), and a slow wave
# moves every key's value away from its hour's mean together, so the rows of one refit lay outside those of
# the next and the forest flagged a third of a long stream's events.
# The departures' sizes, without their sign: a spike up and a spike down are alike unusual, and with signs the
# forest's trees split each tail on its own while the rows unusual in both columns at once (a noisy moment
# beside a bend of the trend) out-isolated the spikes (on the benchmark's labelled stream: precision 0.32
# and half the spikes with signs; 0.57 and four in five without).
FOREST_FEATURES: tuple[str, ...] = ("value_off_trend", "recent_off_trend")
# The share of a key's window (its latest events and the event itself) that local_departures compares with
# the trend of the rest (the forest's; key_baseline's `recent_share` defaults to it).
RECENT_SHARE = 0.2
# The trend of fewer earlier events in the window is no trend: below this, no local departures.
MIN_REFERENCE = 5
# Departures are capped: a key whose history never varied has no spread to divide by.
MAX_DEPARTURE = 1e6
# A key's first events have no spread worth the name: they get no forest row (the forest is warming up for
# them), so that they neither get judged nor fill the training rows with departures from nothing.
FOREST_MIN_HISTORY = 10
_MAD_TO_SD = 1.4826
# local_departures holds each reference value within this many spreads of its first, median-based line.
HOLD = 2.5
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


@dataclass(frozen=True)
class LocalDepartures:
    """How an event and its key's latest events depart from the key's trend over the rest of its window.

    The window's earlier events (all but the latest `recent_share` of it, the reference) give the trend, a
    line, and the spread around it (floored at 0.1% of the level); a spike in the reference moves neither
    much. A slow wave of the key's level moves the trend along with it, so ordinary drift departs from
    nothing; a step of the level shows in the recent events' median until the reference catches up with it
    (a minute or two with the default share of a 5-minute window), and a spike in the value alone."""

    value: float  # (value - the trend at the event) / spread
    recent: float  # (median of the recent events and the event - the trend over them) / spread
    expected: float  # the trend's level over the recent events
    spread: float


def median_of(values: list[float]) -> float:
    """The median of a few dozen values (plain Python: numpy's per-call overheads cost more on so few)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def local_departures(window: list[float], value: float, recent_share: float = RECENT_SHARE
                     ) -> LocalDepartures | None:
    """The departures of an event (`value`) and of its key's latest events (the last `recent_share` of the
    `window`, its earlier values in time order, and the event) from the trend of the window's earlier
    events; None when fewer than MIN_REFERENCE events are left to give a trend."""
    count = len(window) + 1
    recent_count = max(1, round(count * recent_share))
    reference_count = count - recent_count
    if reference_count < MIN_REFERENCE:
        return None
    # Plain Python on a window's few dozen values: numpy's per-call overheads made this several times slower.
    reference = window[:reference_count]
    # Positions stand for times (a key's events in one window come at a roughly even pace). A first, robust
    # line through the medians of the reference's halves gives a first spread; the trend is then the
    # least-squares line of the reference with each value held within HOLD of those spreads of the first line
    # (a spike pulls it no further), which extrapolates with less noise than the medians. Values are taken
    # relative to the second half's median, so that the sums of squares keep their precision at any level.
    half = reference_count // 2
    first, second = median_of(reference[:half]), median_of(reference[half:])
    first_at, second_at = (half - 1) / 2, half + (reference_count - half - 1) / 2
    rough_slope = (second - first) / (second_at - first_at)
    rough = [rough_slope * (position - second_at) for position in range(reference_count)]
    relative = [v - second for v in reference]
    floor = 1e-3 * max(abs(second), 1.0)
    limit = HOLD * max(_MAD_TO_SD * median_of([abs(v - r) for v, r in zip(relative, rough)]), floor)
    held = [r - limit if v < r - limit else min(v, r + limit) for v, r in zip(relative, rough)]
    centre = (reference_count - 1) / 2
    total = sum(held)
    spread_of_positions = reference_count * (reference_count ** 2 - 1) / 12
    slope = (sum(map(operator.mul, range(reference_count), held)) - centre * total) / spread_of_positions
    level = total / reference_count
    # The spread around the trend: the held values' standard deviation (steadier than the MAD of a few dozen
    # values, which now and then halves it).
    squares = sum(map(operator.mul, held, held)) - reference_count * level * level - slope * slope * spread_of_positions
    spread = max(math.sqrt(max(squares, 0.0) / (reference_count - 2)), floor)
    level += second
    recent = [*window[reference_count:], value]
    expected = level + slope * ((reference_count + count - 1) / 2 - centre)
    at_value = level + slope * (count - 1 - centre)

    def capped(departure: float) -> float:
        return max(-MAX_DEPARTURE, min(MAX_DEPARTURE, departure))

    return LocalDepartures(capped((value - at_value) / spread), capped((median_of(recent) - expected) / spread),
                           expected, spread)


def forest_row(value: float, window: list[float], history: tuple[float, float, float],
               departures: LocalDepartures | None = None) -> list[float] | None:
    """The IsolationForest's row of an event (FOREST_FEATURES): the sizes of the local_departures of the event
    and of its key's latest events from the key's trend over its `window` (given, when already computed, as
    `departures`), in the key's own spread. None while the key has fewer than FOREST_MIN_HISTORY events before
    this one (`history`: count, sum, sum of squares) or too short a window for a trend."""
    if history[0] < FOREST_MIN_HISTORY:
        return None
    local = departures if departures is not None else local_departures(window, value)
    if local is None:
        return None
    return [abs(local.value), abs(local.recent)]
