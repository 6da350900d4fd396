"""Inputs and parameters of the time-series tasks (anomaly, forecast, decompose), checked the same way
by the gateway (before anything is queued) and by the worker (batch jobs reach it unchecked).

Plain Python: the gateway imports this module, so nothing here imports numpy, pandas or a model library.

An input item is one series, answered as a unit:
  [1.0, 2.5, ...]                                    values at evenly spaced steps
  [{"ds": "2024-01-01", "y": 1.0}, ...]              dated values ("timestamp"/"value" are accepted too),
                                                     strictly increasing dates
or, for `anomaly`, one set of feature rows (each row one observation, all rows the same length):
  [[0.1, 3.0], [0.2, 2.9], ...]
A forecaster trained by Cortex (`model=name@version`) forecasts the periods after the series it was
fitted on: its input is the empty list `[]`.

Request-level problems (params, a method the model does not serve) raise JobInputError; problems with
one item raise ItemError, which fails that item only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.jobs.running import JobInputError

SERIES_TASKS = ("anomaly", "forecast", "decompose")
# Each task's methods and the catalogue model that implements each one (params.method picks the model
# when the request names none).
METHOD_MODELS: dict[str, dict[str, str]] = {
    "forecast": {"prophet": "prophet", "arima": "arima"},
    "decompose": {"stl": "stl-decompose", "classical": "classical-decompose"},
    "anomaly": {"robust_zscore": "robust-zscore", "isolation_forest": "isolation-forest"},
}
MODEL_METHODS: dict[str, str] = {model: method for methods in METHOD_MODELS.values()
                                 for method, model in methods.items()}
TRAINED_FORECASTER_LOADER = "cortex_tasks.runtime.models.registry_models:RegisteredForecaster"

# Bounds keep one job within the nlp task's time limit: 32 Prophet fits of 5000 points take about a minute.
MAX_POINTS = 5000
MAX_FEATURES = 100
MAX_HORIZON = 1000
MAX_PERIOD = MAX_POINTS // 2
MIN_FORECAST_POINTS = 5
MIN_ANOMALY_POINTS = 5
MIN_ISOLATION_ROWS = 8
# Above the textbook 3.5: the baseline is itself estimated, so normal points reach 3.5 more often than
# Gaussian noise would (measured on seasonal series of 240 points: 3.5 flagged a normal point in a third
# of them, 4.0 in one in twelve, 4.5 in none).
DEFAULT_Z_THRESHOLD = 4.0
DEFAULT_INTERVAL_WIDTH = 0.8  # Prophet's default, used for ARIMA too so the two compare
TRAINED_INTERVAL_WIDTH = 0.8  # what trainers/forecast.py's forecasters produce
MAX_WINDOW = 501
MAX_ARIMA_ORDER = (5, 2, 5)


@dataclass(frozen=True)
class Series:
    values: list[float]
    stamps: list[datetime] | None = None  # naive UTC, strictly increasing; None: undated steps


@dataclass(frozen=True)
class FeatureRows:
    rows: list[list[float]]


@dataclass(frozen=True)
class SeriesParams:
    """Every time-series parameter, read once; a task uses the ones that apply to it."""

    method: str
    period: int | None = None
    horizon: int | None = None
    frequency: str | None = None
    interval_width: float = DEFAULT_INTERVAL_WIDTH
    order: tuple[int, int, int] | None = None
    threshold: float = DEFAULT_Z_THRESHOLD
    window: int | None = None
    contamination: float | str = "auto"
    robust: bool = True


# --- items ------------------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any, where: str) -> float:
    if not _is_number(value):
        raise ItemError("invalid_input", f"{where} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ItemError("invalid_input", f"{where} must be a finite number")
    return float(value)


def _stamp(value: Any, where: str) -> datetime:
    if not isinstance(value, str) or not value.strip():
        raise ItemError("invalid_input", f"{where} must be an ISO 8601 date or timestamp string")
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ItemError("invalid_input", f"{where} ({value!r}) is not an ISO 8601 date or timestamp") from None
    return stamp.astimezone(UTC).replace(tzinfo=None) if stamp.tzinfo else stamp


def _field(point: dict[str, Any], names: tuple[str, str], where: str) -> Any:
    present = [name for name in names if name in point]
    if len(present) != 1:
        raise ItemError("invalid_input", f"{where} needs exactly one of {' or '.join(repr(n) for n in names)}")
    return point[present[0]]


def parse_item(item: Any, allow_rows: bool = False) -> Series | FeatureRows:
    """One input item as a Series (or FeatureRows where allowed), bounds checked; raises ItemError."""
    if not isinstance(item, list):
        expected = "a list of numbers, of {\"ds\", \"y\"} points" + (" or of feature rows" if allow_rows else "")
        raise ItemError("invalid_input", f"each input must be a series: {expected}")
    if len(item) > MAX_POINTS:
        raise ItemError("series_too_long", f"the input has {len(item)} points; at most {MAX_POINTS} are allowed")
    if not item:
        return Series([])
    first = item[0]
    if isinstance(first, list):
        if not allow_rows:
            raise ItemError("invalid_input", "feature rows (lists of lists) are only accepted by task 'anomaly'")
        return _parse_rows(item)
    if isinstance(first, dict):
        values, stamps = [], []
        for position, point in enumerate(item):
            where = f"point {position}"
            if not isinstance(point, dict):
                raise ItemError("invalid_input", f"{where} must be an object like the first point")
            unknown = set(point) - {"ds", "timestamp", "y", "value"}
            if unknown:
                raise ItemError("invalid_input", f"{where} has unknown field(s) {sorted(unknown)}; "
                                "use ds/timestamp and y/value")
            stamps.append(_stamp(_field(point, ("ds", "timestamp"), where), f"{where} date"))
            values.append(_finite(_field(point, ("y", "value"), where), f"{where} value"))
        for position in range(1, len(stamps)):
            if stamps[position] <= stamps[position - 1]:
                raise ItemError("invalid_input", f"point {position} is not later than point {position - 1}: "
                                "dates must be strictly increasing (no duplicates)")
        return Series(values, stamps)
    return Series([_finite(value, f"point {position}") for position, value in enumerate(item)])


def _parse_rows(item: list[Any]) -> FeatureRows:
    width = None
    rows = []
    for position, row in enumerate(item):
        if not isinstance(row, list):
            raise ItemError("invalid_input", f"row {position} must be a list of numbers like row 0")
        if width is None:
            width = len(row)
            if not 1 <= width <= MAX_FEATURES:
                raise ItemError("invalid_input", f"feature rows must have 1 to {MAX_FEATURES} numbers")
        elif len(row) != width:
            raise ItemError("ragged_rows", f"row {position} has {len(row)} numbers, row 0 has {width}: "
                            "all feature rows must have the same length")
        rows.append([_finite(value, f"row {position}[{column}]") for column, value in enumerate(row)])
    return FeatureRows(rows)


# --- params -----------------------------------------------------------------------------------------

def _int_param(params: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JobInputError("invalid_params", f"params.{name} must be a whole number from {low} to {high}",
                            {"param": name})
    return value


def method_for(task: str, model_name: str, params: dict[str, Any]) -> str:
    """The method a bundled model runs; params.method, when given, must be that method."""
    methods = METHOD_MODELS[task]
    own = MODEL_METHODS.get(model_name)
    requested = params.get("method")
    if requested is not None and requested not in methods:
        raise JobInputError("invalid_params", f"params.method must be one of {', '.join(methods)} for task "
                            f"{task!r}", {"param": "method", "valid": list(methods)})
    if own is None:
        raise JobInputError("unknown_model", f"model {model_name!r} does not serve task {task!r}",
                            {"valid": list(methods.values())})
    if requested is not None and requested != own:
        raise JobInputError("invalid_params", f"params.method {requested!r} is served by model "
                            f"{methods[requested]!r}, not {model_name!r}: leave out the model or send "
                            f"model={methods[requested]!r}", {"param": "method"})
    return own


def read_params(task: str, model_name: str, params: dict[str, Any], trained: bool = False) -> SeriesParams:
    """The request's params for a time-series task, validated; raises JobInputError."""
    method = "trained" if trained else method_for(task, model_name, params)
    period = _int_param(params, "period", 2, MAX_PERIOD)
    horizon = _int_param(params, "horizon", 1, MAX_HORIZON)
    if task == "forecast" and horizon is None and not trained:
        raise JobInputError("invalid_params", f"params.horizon (1 to {MAX_HORIZON} future steps) is required",
                            {"param": "horizon"})
    frequency = params.get("frequency")
    if frequency is not None and (not isinstance(frequency, str) or not 1 <= len(frequency) <= 16
                                  or not frequency.replace("-", "").isalnum()):
        raise JobInputError("invalid_params", "params.frequency must be a pandas frequency alias such as "
                            "'D', 'h', 'W', 'MS' or '15min'", {"param": "frequency"})
    width = params.get("interval_width", DEFAULT_INTERVAL_WIDTH)
    if not _is_number(width) or not 0.05 <= width <= 0.99:
        raise JobInputError("invalid_params", "params.interval_width must be a number from 0.05 to 0.99",
                            {"param": "interval_width"})
    if trained and "interval_width" in params and width != TRAINED_INTERVAL_WIDTH:
        raise JobInputError("invalid_params", f"a trained forecaster's interval width is fixed at "
                            f"{TRAINED_INTERVAL_WIDTH}", {"param": "interval_width"})
    order = params.get("order")
    if order is not None:
        if method != "arima" or not isinstance(order, list) or len(order) != 3 or not all(
                isinstance(part, int) and not isinstance(part, bool) and 0 <= part <= high
                for part, high in zip(order, MAX_ARIMA_ORDER)):
            raise JobInputError("invalid_params", "params.order is the ARIMA order [p, d, q] with p and q from 0 "
                                "to 5 and d from 0 to 2 (method arima only)", {"param": "order"})
        order = tuple(order)
    threshold = params.get("threshold", DEFAULT_Z_THRESHOLD)
    if not _is_number(threshold) or not 0 < threshold <= 100:
        raise JobInputError("invalid_params", "params.threshold is the robust z-score above which a point is "
                            "anomalous: a number above 0 and at most 100", {"param": "threshold"})
    window = _int_param(params, "window", 3, MAX_WINDOW)
    if window is not None and window % 2 == 0:
        raise JobInputError("invalid_params", "params.window must be odd (a centred rolling window)",
                            {"param": "window"})
    contamination = params.get("contamination", "auto")
    if contamination != "auto" and (not _is_number(contamination) or not 0 < contamination <= 0.5):
        raise JobInputError("invalid_params", "params.contamination must be \"auto\" or the expected share of "
                            "outliers, above 0 and at most 0.5", {"param": "contamination"})
    robust = params.get("robust", True)
    if not isinstance(robust, bool):
        raise JobInputError("invalid_params", "params.robust must be true or false", {"param": "robust"})
    return SeriesParams(method, period, horizon, frequency, float(width), order,  # type: ignore[arg-type]
                        float(threshold), window, contamination, robust)


# --- one item against its params ---------------------------------------------------------------------

def min_points(task: str, options: SeriesParams) -> int:
    """The shortest series the method can work with (a known period needs two full cycles)."""
    if options.period is not None:
        return max(2 * options.period, MIN_FORECAST_POINTS)
    if task == "decompose":
        return 8  # the shortest series in which a period (of at least 2) can be found twice
    return MIN_FORECAST_POINTS if task == "forecast" else MIN_ANOMALY_POINTS


def check_item(task: str, options: SeriesParams, item: Any) -> Series | FeatureRows:
    """Parse one item and check it fits the method; raises ItemError."""
    parsed = parse_item(item, allow_rows=task == "anomaly")
    if options.method == "trained":
        if isinstance(parsed, Series) and parsed.values:
            raise ItemError("invalid_input", "a trained forecaster forecasts the periods after the series it was "
                            "fitted on: send [] as its input (retrain it to include newer data)")
        return parsed
    if isinstance(parsed, FeatureRows):
        if options.method != "isolation_forest":
            raise ItemError("invalid_input", f"feature rows need method isolation_forest, not {options.method} "
                            "(send series and feature rows in separate requests)")
        if len(parsed.rows) < MIN_ISOLATION_ROWS:
            raise ItemError("series_too_short", f"isolation_forest needs at least {MIN_ISOLATION_ROWS} rows, "
                            f"got {len(parsed.rows)}")
        return parsed
    if options.method == "isolation_forest":
        raise ItemError("invalid_input", "isolation_forest scores feature rows (a list of equal-length lists of "
                        "numbers); for a series use robust_zscore")
    needed = min_points(task, options)
    if len(parsed.values) < needed:
        why = f" (two full cycles of period {options.period})" if needed == 2 * (options.period or 0) else ""
        raise ItemError("series_too_short", f"{options.method} needs at least {needed} points{why}, "
                        f"got {len(parsed.values)}")
    return parsed


def implied_model(task: str, params: dict[str, Any], inputs: list[Any]) -> str | None:
    """The model a request that names none should use: the one params.method asks for, or for anomaly
    feature rows isolation-forest. None: the task's default (also for tasks that are not time series)."""
    methods = METHOD_MODELS.get(task)
    if methods is None:
        return None
    method = params.get("method")
    if isinstance(method, str) and method in methods:
        return methods[method]
    if method is None and task == "anomaly" and inputs and all(
            isinstance(item, list) and item and isinstance(item[0], list) for item in inputs):
        return methods["isolation_forest"]
    return None


def check_request(task: str, model_name: str, model_loader: str, inputs: list[Any],
                  params: dict[str, Any] | None) -> None:
    """Everything the gateway can check before queuing; raises JobInputError (with the item's index in
    details for an item's problem). params None: only the items' shapes (params are checked later)."""
    trained = model_loader == TRAINED_FORECASTER_LOADER
    if params is None:
        for index, item in enumerate(inputs):
            try:
                parse_item(item, allow_rows=task == "anomaly")
            except ItemError as exc:
                raise JobInputError(exc.code, f"inputs[{index}]: {exc}", {"index": index}) from None
        return
    options = read_params(task, model_name, params, trained)
    for index, item in enumerate(inputs):
        try:
            check_item(task, options, item)
        except ItemError as exc:
            raise JobInputError(exc.code, f"inputs[{index}]: {exc}", {"index": index}) from None
