"""The lightweight detectors a stream runs per event, behind the model interface of every Cortex backend
(models/base.py: `info` and `predict(inputs, params)`, a whole micro-batch per call, one output per input).

Inputs are `EventContext`s (the event and the state of its key before it), outputs `Verdict`s. The
statistics are the catalogue's time-series ones (models/timeseries.py: the robust scale, the seeded
IsolationForest settings), so a stream and an `anomaly` request judge a value the same way; and the
seasonal residual takes its expectation from a forecaster trained and registered by Cortex when the
stream declares one (`model: name@version`), through the same registry loader as /predict.
"""
from __future__ import annotations

import logging
import math
import operator
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

import numpy as np

from cortex_tasks.core.streams.declarations import (
    IsolationForestSpec,
    KeyBaseline,
    RobustZScore,
    SeasonalResidual,
)
from cortex_tasks.core.validation.timeseries import TRAINED_INTERVAL_WIDTH
from cortex_tasks.runtime.models.base import ModelInfo
from cortex_tasks.runtime.models.timeseries import RANDOM_STATE
from cortex_tasks.runtime.streams.features import (
    FOREST_FEATURES,
    RECENT_SHARE,
    LocalDepartures,
    forest_row,
    local_departures,
    median_of,
)

log = logging.getLogger(__name__)

ANOMALY, NORMAL, WARMING_UP = "anomaly", "normal", "warming_up"
# |score| is capped: a value off a perfectly flat history would otherwise score infinity (not JSON).
MAX_SCORE = 1e6
# The z of the two-sided central interval a trained forecaster reports (80%: 1.2816).
_INTERVAL_Z = NormalDist().inv_cdf(0.5 + TRAINED_INTERVAL_WIDTH / 2)


@dataclass
class EventContext:
    """One event and its key's state before it."""

    time: float
    value: float
    window: list[float]  # the key's values in [time - window size, time)
    history: tuple[float, float, float]  # the key's (count, sum, sum of squares) over all its earlier events
    season: tuple[float, float, float]  # the same for the event's phase of the seasonal period
    features: list[float]  # features.FEATURE_NAMES
    # local_departures by recent share, computed once for the detectors and the forest's training row
    _departures: dict[float, LocalDepartures | None] = field(default_factory=dict, repr=False, compare=False)

    def departures(self, recent_share: float = RECENT_SHARE) -> LocalDepartures | None:
        """features.local_departures of this event and its key's latest events from the key's trend."""
        if recent_share not in self._departures:
            self._departures[recent_share] = local_departures(self.window, self.value, recent_share)
        return self._departures[recent_share]

    def forest_row(self) -> list[float] | None:
        return forest_row(self.value, self.window, self.history, self.departures())


@dataclass(frozen=True)
class Verdict:
    detector: str
    outcome: str
    score: float | None = None
    expected: float | None = None

    @property
    def anomalous(self) -> bool:
        return self.outcome == ANOMALY


def _capped(score: float) -> float:
    return float(max(-MAX_SCORE, min(MAX_SCORE, score)))


def _judged(kind: str, score: float, threshold: float, expected: float | None) -> Verdict:
    score = _capped(score)
    return Verdict(kind, ANOMALY if abs(score) >= threshold else NORMAL, round(score, 6),
                   None if expected is None else round(float(expected), 6))


def _robust_scale(window: list[float], median: float) -> float:
    """models/timeseries.robust_scale of a window whose median is known, in plain Python: on the few dozen
    values of a key's window, numpy's per-call overheads (two medians an event) cost more than the work."""
    deviations = [abs(value - median) for value in window]
    scale = 1.4826 * median_of(deviations)
    if scale <= 1e-12:
        scale = 1.2533 * (sum(deviations) / len(deviations))
    return scale if scale > 1e-12 else 1.0


def _spread(count: float, total: float, squares: float) -> tuple[float, float]:
    """(mean, standard deviation) from running totals (floored, so a flat history still has a scale)."""
    mean = total / count
    variance = max(0.0, squares / count - mean * mean)
    floor = 1e-3 * max(abs(mean), 1.0)  # a perfectly flat history: any change of 0.1% is one deviation
    return mean, max(math.sqrt(variance), floor)


class _StreamDetector(ABC):
    kind = ""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.info = ModelInfo(name=f"stream-{self.kind.replace('_', '-')}", version="1", task="anomaly",
                              device="cpu", max_input_chars=0, max_batch_size=100_000)

    @abstractmethod
    def predict(self, inputs: list[EventContext], params: dict[str, Any]) -> list[Verdict]: ...


class _PerEventDetector(_StreamDetector):
    """A detector that judges each event on its own (the IsolationForest scores a micro-batch at once)."""

    def predict(self, inputs: list[EventContext], params: dict[str, Any]) -> list[Verdict]:
        return [self.judge(item) for item in inputs]

    @abstractmethod
    def judge(self, item: EventContext) -> Verdict: ...


class RobustZScoreDetector(_PerEventDetector):
    """(value - median) / robust scale of the key's current window (1.4826 x MAD, as the catalogue's)."""

    kind = "robust_zscore"
    spec: RobustZScore

    def judge(self, item: EventContext) -> Verdict:
        if len(item.window) < self.spec.min_points:
            return Verdict(self.kind, WARMING_UP)
        median = median_of(item.window)
        return _judged(self.kind, (item.value - median) / _robust_scale(item.window, median), self.spec.threshold,
                       median)


class KeyBaselineDetector(_PerEventDetector):
    """A key that behaves unlike itself, even where its values are ordinary for the stream as a whole, in
    two ways, each in the key's own standard deviations; the larger departure is the score:

    - its latest events (the last `recent_share` of its window and this event) against the trend of the rest
      of the window (features.local_departures): a step of its level, which a slow drift or wave of the
      level is not (the trend follows it);
    - its recent mean (window and event) against its whole earlier history, once that history is at least
      `history_windows` windows long: a key that has left the range it kept for long. A shorter history
      may have seen only part of the key's ordinary swings (the first minutes of an hourly wave), and its
      narrow spread would take the rest of the swing for a departure."""

    kind = "key_baseline"
    spec: KeyBaseline

    def judge(self, item: EventContext) -> Verdict:
        count, total, squares = item.history
        window = item.window
        recent_count = len(window) + 1
        window_sum = sum(window)
        # The history before the window: the running totals hold the window's events too.
        count -= len(window)
        if count < self.spec.min_history or recent_count < self.spec.min_recent:
            return Verdict(self.kind, WARMING_UP)
        best: tuple[float, float] | None = None
        local = item.departures(self.spec.recent_share)
        if local is not None:
            best = (local.recent, local.expected)
        if count >= self.spec.history_windows * recent_count:
            total -= window_sum
            squares -= sum(map(operator.mul, window, window))
            mean, deviation = _spread(count, total, squares)
            departure = ((window_sum + item.value) / recent_count - mean) / deviation
            if best is None or abs(departure) > abs(best[0]):
                best = (departure, mean)
        if best is None:
            return Verdict(self.kind, WARMING_UP)
        return _judged(self.kind, best[0], self.spec.threshold, best[1])


# (event time in epoch seconds) -> (expected value, standard deviation), or None outside the forecast
Expectation = Callable[[float], tuple[float, float] | None]


class SeasonalResidualDetector(_PerEventDetector):
    """Residual from the expected value of the event's phase: the key's mean for that phase of the period
    over its history, or a registered forecaster's prediction for the event's time."""

    kind = "seasonal_residual"
    spec: SeasonalResidual

    def __init__(self, spec: SeasonalResidual, expectation: Expectation | None = None) -> None:
        super().__init__(spec)
        self.expectation = expectation

    def phase(self, time: float) -> int:
        return int((time % self.spec.period) / self.spec.period * self.spec.buckets) % self.spec.buckets

    def judge(self, item: EventContext) -> Verdict:
        if self.expectation is not None:
            expected = self.expectation(item.time)
            if expected is not None:
                mean, deviation = expected
                return _judged(self.kind, (item.value - mean) / deviation, self.spec.threshold, mean)
        count, total, squares = item.season
        if count < self.spec.min_points:
            return Verdict(self.kind, WARMING_UP)
        mean, deviation = _spread(count, total, squares)
        return _judged(self.kind, (item.value - mean) / deviation, self.spec.threshold, mean)


def forecast_expectation(model: Any, horizon: int) -> Expectation:
    """The expectation of a forecaster with the common model interface (RegisteredForecaster): its forecast
    for `horizon` periods, looked up at the stamp nearest the event's time (within half a step)."""
    answer = model.predict([{"horizon": horizon}], {})[0]
    stamps = np.array([datetime.fromisoformat(str(ds)).replace(tzinfo=UTC).timestamp()
                       if datetime.fromisoformat(str(ds)).tzinfo is None
                       else datetime.fromisoformat(str(ds)).timestamp() for ds in answer["ds"]])
    yhat = np.asarray(answer["yhat"], dtype=float)
    spread = (np.asarray(answer["yhat_upper"], dtype=float) - np.asarray(answer["yhat_lower"], dtype=float)) / (
        2 * _INTERVAL_Z)
    step = float(np.median(np.diff(stamps))) if len(stamps) > 1 else 86400.0

    def expected(time: float) -> tuple[float, float] | None:
        index = int(np.argmin(np.abs(stamps - time)))
        if abs(stamps[index] - time) > step / 2:
            return None
        return float(yhat[index]), max(float(spread[index]), 1e-9)

    return expected


def average_path_length(samples: np.ndarray) -> np.ndarray:
    """c(n) of Liu et al.: the mean depth of an unsuccessful search in a binary search tree of n points, the
    depth a leaf holding n training points stands for (0 for one point, 1 for two)."""
    samples = np.asarray(samples, dtype=float)
    safe = np.maximum(samples, 3.0)
    deeper = 2.0 * (np.log(safe - 1.0) + np.euler_gamma) - 2.0 * (safe - 1.0) / safe
    return np.where(samples <= 1, 0.0, np.where(samples == 2, 1.0, deeper))


class CompiledForest:
    """A fitted scikit-learn IsolationForest's trees as flat arrays, scoring a whole micro-batch in one walk
    down every tree at once. scikit-learn's `score_samples` visits its trees one by one from Python
    (joblib's sequential loop), about 0.3 ms per tree whatever the number of rows: 30 ms per micro-batch
    with 100 trees, most of a small batch's time. The same trees, thresholds and path lengths give the same
    scores (a unit test compares them)."""

    def __init__(self, forest: Any) -> None:
        trees = [estimator.tree_ for estimator in forest.estimators_]
        width = forest.n_features_in_
        offsets = np.cumsum([0] + [tree.node_count for tree in trees[:-1]]).astype(np.intp)
        lefts, rights, features, thresholds, leaf_depths = [], [], [], [], []
        for tree, columns, offset in zip(trees, forest.estimators_features_, offsets):
            left, right = tree.children_left, tree.children_right
            inner = left >= 0
            lefts.append(np.where(inner, left + offset, -1))
            rights.append(np.where(inner, right + offset, -1))
            # A tree fitted on a subset of the columns numbers its features within that subset.
            features.append(np.where(inner, np.asarray(columns)[np.maximum(tree.feature, 0)], 0))
            thresholds.append(tree.threshold)
            depth = np.zeros(tree.node_count)
            level = np.array([0])
            while level.size:  # one tree level at a time
                parents = level[inner[level]]
                children = np.concatenate([left[parents], right[parents]])
                depth[children] = np.concatenate([depth[parents], depth[parents]]) + 1
                level = children
            leaf_depths.append(depth + average_path_length(tree.n_node_samples))
        self.roots = offsets
        self.left, self.right = np.concatenate(lefts), np.concatenate(rights)
        self.feature, self.threshold = np.concatenate(features), np.concatenate(thresholds)
        self.leaf_depth = np.concatenate(leaf_depths)
        self.width = width
        self.denominator = len(trees) * float(average_path_length(np.array([forest.max_samples_]))[0])

    def anomaly_scores(self, rows: np.ndarray) -> np.ndarray:
        """The anomaly score in (0, 1] of each row (`-score_samples`): 2^(-mean depth / c(max_samples))."""
        # The trees compare float32 features with float64 thresholds, as scikit-learn's Tree.apply does.
        values = np.asarray(rows, dtype=np.float32).astype(np.float64)
        count = values.shape[0]
        node = np.repeat(self.roots[None, :], count, axis=0)
        row = np.arange(count)[:, None]
        while True:
            left = self.left[node]
            inner = left >= 0
            if not inner.any():
                break
            goes_left = values[row, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(goes_left, left, self.right[node]), node)
        depths = self.leaf_depth[node].sum(axis=1)
        if self.denominator == 0:
            return np.ones(count)
        return 2.0 ** (-depths / self.denominator)


def fit_forest(trees: int, contamination: float, rows: np.ndarray) -> tuple[CompiledForest, float]:
    """A seeded IsolationForest fitted on `rows`, compiled, and its outcome threshold (the same rows give the
    same forest in any process)."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=trees, contamination=contamination, random_state=RANDOM_STATE).fit(rows)
    return CompiledForest(forest), float(-forest.offset_)


class IsolationForestDetector(_StreamDetector):
    """scikit-learn IsolationForest on the events' forest rows (features.forest_row: the sizes of
    the event's and its key's latest events' departures from the key's local trend, in its own spread;
    rows that keep their range while the stream runs, so that a refit's rows are the rows it then judges,
    and about `contamination` of the ordinary events are flagged). Fitted per stream on its recent rows
    (shared in Redis by every stream worker), refitted every `refit_every` events in a background thread
    so scoring never waits for a fit; until the first fit (fewer than `min_rows` rows) it is warming up.
    The score is the paper's anomaly score in (0, 1] (models/timeseries.isolation_scores); the outcome is
    the forest's own, whose threshold `contamination` sets."""

    kind = "isolation_forest"
    spec: IsolationForestSpec

    def __init__(self, spec: IsolationForestSpec) -> None:
        super().__init__(spec)
        self._forest: Any = None
        self._threshold = 0.5
        self._since_fit = 0
        self._fitting = threading.Lock()

    @property
    def fitted(self) -> bool:
        return self._forest is not None

    def wants_fit(self) -> bool:
        return (not self.fitted or self._since_fit >= self.spec.refit_every) and not self._fitting.locked()

    def fit(self, rows: list[list[float]], run: Callable[..., Any] | None = None) -> bool:
        """Fit on `rows` (in a thread of the stream worker, which passes `run`: it runs fit_forest in another
        process and returns its result); False if there are too few or a fit is running."""
        # Rows of another width were stored by a release whose forest saw other features: they age out.
        rows = [row for row in rows if len(row) == len(FOREST_FEATURES)]
        if len(rows) < self.spec.min_rows or not self._fitting.acquire(blocking=False):
            return False
        try:
            arguments = (self.spec.trees, self.spec.contamination, np.asarray(rows, dtype=float))
            compiled, threshold = run(fit_forest, *arguments) if run is not None else fit_forest(*arguments)
            self._forest, self._threshold, self._since_fit = compiled, threshold, 0
            return True
        finally:
            self._fitting.release()

    def predict(self, inputs: list[EventContext], params: dict[str, Any]) -> list[Verdict]:
        forest = self._forest
        self._since_fit += len(inputs)
        if forest is None or not inputs:
            return [Verdict(self.kind, WARMING_UP) for _ in inputs]
        rows = [item.forest_row() for item in inputs]
        judged = [row for row in rows if row is not None]
        scores = iter(forest.anomaly_scores(np.asarray(judged, dtype=float)) if judged else [])
        verdicts = []
        for row in rows:
            if row is None:  # the key's history is too short to depart from
                verdicts.append(Verdict(self.kind, WARMING_UP))
                continue
            score = next(scores)
            verdicts.append(Verdict(self.kind, ANOMALY if score > self._threshold else NORMAL, round(float(score), 6),
                                    None))
        return verdicts


def build_detectors(specs: list[Any], expectation: Expectation | None = None) -> list[_StreamDetector]:
    detectors: list[_StreamDetector] = []
    for spec in specs:
        if spec.kind == "robust_zscore":
            detectors.append(RobustZScoreDetector(spec))
        elif spec.kind == "key_baseline":
            detectors.append(KeyBaselineDetector(spec))
        elif spec.kind == "seasonal_residual":
            detectors.append(SeasonalResidualDetector(spec, expectation))
        elif spec.kind == "isolation_forest":
            detectors.append(IsolationForestDetector(spec))
    return detectors
