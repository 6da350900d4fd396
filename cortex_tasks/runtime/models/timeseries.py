"""Time-series models: anomaly detection, forecasting and seasonal decomposition, one backend per method.

Each input item is one series (or, for isolation_forest, one set of feature rows) answered as a unit;
items of a batch are independent. Inputs and params are parsed by `core.validation.timeseries` (shared with the
gateway), and every item is checked before anything is fitted, so a bad item fails alone without
wasting the others' fits when the batcher retries them one by one.

Methods (catalogue model -> method):
  robust-zscore       anomaly: residual from a baseline (trend + seasonal profile for a seasonal series,
                      else the neighbours' median), in robust standard deviations
  isolation-forest    anomaly: scikit-learn IsolationForest over one input's feature rows (seeded)
  prophet             forecast: Prophet; undated series get one seasonality of params.period (or the
                      detected period), dated series Prophet's calendar seasonalities
  arima               forecast: ARIMA with drift (order chosen by AIC unless params.order), on the
                      seasonally adjusted series (STL) when a period is given or detected
  stl-decompose       decompose: statsmodels STL (robust by default)
  classical-decompose decompose: moving-average decomposition (statsmodels seasonal_decompose)

The period, where a method needs one and params.period is absent, comes from the autocorrelation of
the linearly detrended series (`detect_period`); answers say which period was used and whether it was
detected. Every method is deterministic, so answers are cacheable: Prophet's interval sampling is
seeded. Measured per series on one core: Prophet about 2 s to import once per worker process, then
0.1 s for 240 points and 0.6 s for 5000; ARIMA (three candidate orders) 0.3 s and 1.5 s; the
anomaly, decomposition and isolation-forest methods well under a second.
"""
from __future__ import annotations

import logging
import threading
import warnings
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

import numpy as np

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.validation.timeseries import (
    MAX_POINTS,
    TRAINED_INTERVAL_WIDTH,
    FeatureRows,
    Series,
    SeriesParams,
    check_item,
    read_params,
)
from cortex_tasks.runtime.models.base import ModelInfo

log = logging.getLogger(__name__)

DECIMALS = 6
RANDOM_STATE = 42
# An autocorrelation peak below this is noise, not a season.
MIN_SEASONAL_ACF = 0.3
# Among peaks this close to the highest one, the shortest lag is the period (not one of its multiples).
PEAK_TOLERANCE = 0.85
DEFAULT_WINDOW = 7
ARIMA_CANDIDATE_ORDERS = ((0, 1, 1), (1, 1, 0), (1, 1, 1))
UNDATED_ORIGIN = datetime(2000, 1, 1)
ISOLATION_TREES = 200


# --- pure functions -----------------------------------------------------------------------------------

def rounded(values: Any) -> list[float]:
    return [round(float(value), DECIMALS) for value in values]


def autocorrelation(values: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocorrelation at lags 0..max_lag of the series with its linear trend removed."""
    steps = np.arange(len(values), dtype=float)
    slope, intercept = np.polyfit(steps, values, 1)
    centred = values - (slope * steps + intercept)
    variance = float(np.dot(centred, centred))
    if variance <= 1e-12 * max(1.0, float(np.dot(values, values))):
        return np.zeros(max_lag + 1)
    size = 1 << (2 * len(centred) - 1).bit_length()
    spectrum = np.fft.rfft(centred, size)
    return np.fft.irfft(spectrum * np.conj(spectrum), size)[:max_lag + 1] / variance


def detect_period(values: np.ndarray) -> tuple[int | None, float]:
    """The dominant seasonal period (a lag of at least 2 seen twice in the series) and its
    autocorrelation; (None, best peak) when no peak reaches MIN_SEASONAL_ACF."""
    max_lag = len(values) // 2
    if max_lag < 3:
        return None, 0.0
    acf = autocorrelation(np.asarray(values, dtype=float), max_lag)
    peaks = [lag for lag in range(2, max_lag) if acf[lag] > acf[lag - 1] and acf[lag] >= acf[lag + 1]]
    if not peaks:
        return None, 0.0
    best = max(acf[lag] for lag in peaks)
    if best < MIN_SEASONAL_ACF:
        return None, round(float(best), DECIMALS)
    period = min(lag for lag in peaks if acf[lag] >= PEAK_TOLERANCE * best)
    return period, round(float(acf[period]), DECIMALS)


def robust_scale(residuals: np.ndarray) -> float:
    """A spread that outliers barely move: 1.4826 x MAD (the standard deviation for normal noise);
    the mean absolute deviation when more than half the residuals are identical."""
    deviations = np.abs(residuals - np.median(residuals))
    scale = 1.4826 * float(np.median(deviations))
    if scale <= 1e-12:
        scale = 1.2533 * float(np.mean(deviations))
    return scale if scale > 1e-12 else 1.0


def neighbour_median(values: np.ndarray, window: int) -> np.ndarray:
    """The median of each point's neighbours (window // 2 on each side, the point itself left out, so
    that its own value never hides its deviation; fewer neighbours at the ends)."""
    from numpy.lib.stride_tricks import sliding_window_view

    half = window // 2
    padded = np.concatenate([np.full(half, np.nan), values, np.full(half, np.nan)])
    neighbours = np.delete(sliding_window_view(padded, window), half, axis=1)
    return np.nanmedian(neighbours, axis=1)


def centred_trend(values: np.ndarray, period: int) -> np.ndarray:
    """A centred moving average over exactly one period (2 x period for even periods), which cancels
    the seasonal pattern; the half period at each end continues the nearest period's straight line."""
    weights = np.ones(period) / period if period % 2 else np.r_[0.5, np.ones(period - 1), 0.5] / period
    inner = np.convolve(values, weights, mode="valid")
    half, size = len(weights) // 2, len(values)
    trend = np.empty(size)
    trend[half:size - half] = inner
    steps = np.arange(size, dtype=float)
    fitted = min(period, len(inner))
    start_line = np.polyfit(steps[half:half + fitted], inner[:fitted], 1)
    end_line = np.polyfit(steps[size - half - fitted:size - half], inner[-fitted:], 1)
    trend[:half] = np.polyval(start_line, steps[:half])
    trend[size - half:] = np.polyval(end_line, steps[size - half:])
    return trend


def seasonal_baseline(values: np.ndarray, period: int, threshold: float) -> np.ndarray:
    """Trend plus the mean seasonal profile, re-estimated with the outliers of the previous pass
    replaced by the baseline, so that spikes shift neither the trend nor the profile. The first pass
    uses per-phase medians (robust to the spikes not yet found), later ones means (less noisy)."""
    phases = np.arange(len(values)) % period
    cleaned = values
    baseline = values
    for passes in range(3):
        trend = centred_trend(cleaned, period)
        detrended = cleaned - trend
        summary = np.median if passes == 0 else np.mean
        profile = np.array([summary(detrended[phases == phase]) for phase in range(period)])
        baseline = trend + (profile - profile.mean())[phases]
        residuals = values - baseline
        outliers = np.abs(residuals) > threshold * robust_scale(residuals)
        cleaned = np.where(outliers, baseline, values)
    return baseline


def zscores(residuals: np.ndarray, threshold: float) -> np.ndarray:
    """Residuals in standard deviations of the residuals that are not outliers: the MAD finds the
    outliers, the standard deviation of the rest (a more precise estimate) scales them."""
    inliers = np.abs(residuals) <= threshold * robust_scale(residuals)
    spread = float(np.std(residuals[inliers])) if inliers.sum() > 2 else 0.0
    return residuals / (spread if spread > 1e-12 else robust_scale(residuals))


def stl_fit(values: np.ndarray, period: int, robust: bool = True) -> Any:
    from statsmodels.tsa.seasonal import STL

    plain = STL(values, period=period).fit()
    if not robust:
        return plain
    residuals = np.asarray(plain.resid)
    # On an (almost) noise-free series the robustness weights divide by a residual spread of ~0 and
    # zero out most points (the trend goes flat at the ends): the plain fit is the right one there.
    if float(np.median(np.abs(residuals - np.median(residuals)))) <= 1e-6 * (float(np.std(values)) or 1.0):
        return plain
    return STL(values, period=period, robust=True).fit()


def isolation_scores(rows: np.ndarray, contamination: float | str) -> tuple[np.ndarray, np.ndarray, float]:
    """(scores, is_outlier, score_threshold): scores in (0, 1], higher is more anomalous (the paper's
    anomaly score; about 0.5 and below is normal). Seeded, so the same rows give the same answer."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=ISOLATION_TREES, contamination=contamination,
                             random_state=RANDOM_STATE).fit(rows)
    scores = -forest.score_samples(rows)
    return scores, forest.predict(rows) == -1, float(-forest.offset_)


def seasonal_strength(seasonal: np.ndarray, residual: np.ndarray) -> float:
    """Hyndman's strength of a component: 1 - var(residual) / var(component + residual), in [0, 1]."""
    total = float(np.var(seasonal + residual))
    return round(max(0.0, 1.0 - float(np.var(residual)) / total), DECIMALS) if total > 0 else 0.0


# --- periods and dates ----------------------------------------------------------------------------------

def choose_period(values: np.ndarray, options: SeriesParams, required: bool) -> tuple[int | None, bool]:
    """(period, detected): params.period when given (it must fit twice), else the detected one."""
    if options.period is not None:
        if 2 * options.period > len(values):
            raise ItemError("series_too_short", f"period {options.period} needs at least {2 * options.period} "
                            f"points (two full cycles), got {len(values)}")
        return options.period, False
    period, _ = detect_period(values)
    if period is None and required:
        raise ItemError("no_period_found", "no seasonal period could be detected in this series: "
                        "give params.period (the number of steps in one cycle)")
    return period, period is not None


def series_frequency(series: Series, options: SeriesParams) -> str | None:
    """The pandas frequency of a dated series: params.frequency, or the one its dates follow."""
    if series.stamps is None:
        return None
    import pandas as pd

    if options.frequency is not None:
        try:
            pd.tseries.frequencies.to_offset(options.frequency)
        except ValueError:
            raise ItemError("invalid_params", f"params.frequency {options.frequency!r} is not a pandas "
                            "frequency alias (e.g. 'D', 'h', 'W', 'MS', '15min')") from None
        return options.frequency
    inferred = pd.infer_freq(pd.DatetimeIndex(series.stamps)) if len(series.stamps) >= 3 else None
    frequency = getattr(inferred, "freqstr", inferred)  # a string today, an offset in later pandas
    if frequency is None:
        raise ItemError("irregular_dates", "the dates are not evenly spaced, so future dates are unknown: "
                        "give params.frequency (e.g. 'D', 'h', 'W', 'MS')")
    return frequency


def future_stamps(last: datetime, frequency: str, horizon: int) -> list[str]:
    import pandas as pd

    stamps = pd.date_range(pd.Timestamp(last), periods=horizon + 1, freq=frequency)[1:]
    return [stamp.isoformat() for stamp in stamps]


def dated(series: Series, output: dict[str, Any]) -> dict[str, Any]:
    if series.stamps is not None:
        output["ds"] = [stamp.isoformat() for stamp in series.stamps]
    return output


# --- forecasting ------------------------------------------------------------------------------------------

def _arima_trend(d: int) -> str:
    # Drift for a differenced series (a linear trend continues), a constant for a level series; a
    # twice-differenced series already extrapolates its trend.
    return {0: "c", 1: "t"}.get(d, "n")


def _fit_arima(values: np.ndarray, order: tuple[int, int, int]) -> Any:
    from statsmodels.tsa.arima.model import ARIMA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on short or flat series
        model = ARIMA(values, order=order, trend=_arima_trend(order[1]))
        try:
            # Innovations MLE is several times faster than the state-space default, to the same optimum;
            # it fails on degenerate series (zero variance after differencing), which the default fits.
            return model.fit(method="innovations_mle")
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            return model.fit()


def forecast_arima(values: np.ndarray, options: SeriesParams, period: int | None) -> dict[str, Any]:
    """ARIMA on the series with its (robust STL) seasonal component removed; the last cycle of that
    component is added back to the forecast and its bounds (as statsmodels' STLForecast does)."""
    seasonal = np.asarray(stl_fit(values, period).seasonal) if period else np.zeros(len(values))
    adjusted = values - seasonal
    orders = [options.order] if options.order else list(ARIMA_CANDIDATE_ORDERS)
    fitted: list[tuple[float, tuple[int, int, int], Any]] = []
    for order in orders:
        try:
            result = _fit_arima(adjusted, order)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            log.info("arima order %s failed: %s", order, exc)
            continue
        aic = float(result.aic)
        fitted.append((aic if np.isfinite(aic) else float("inf"), order, result))
    if not fitted:
        raise ItemError("fit_failed", "no ARIMA model could be fitted to this series")
    _, order, result = min(fitted, key=lambda candidate: candidate[0])
    horizon = options.horizon or 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = result.get_forecast(horizon).summary_frame(alpha=1 - options.interval_width)
    cycle = period or 1
    future_season = seasonal[len(values) - cycle + np.arange(horizon) % cycle]
    return {"yhat": rounded(np.asarray(frame["mean"]) + future_season),
            "yhat_lower": rounded(np.asarray(frame["mean_ci_lower"]) + future_season),
            "yhat_upper": rounded(np.asarray(frame["mean_ci_upper"]) + future_season), "order": list(order)}


_prophet_lock = threading.Lock()


def _quiet_prophet() -> None:
    # Prophet logs every fit at INFO through cmdstanpy, and complains at import that plotly is missing.
    for name in ("cmdstanpy", "prophet"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)


def forecast_prophet(series: Series, options: SeriesParams, period: int | None,
                     frequency: str | None) -> dict[str, Any]:
    import pandas as pd

    _quiet_prophet()
    from prophet import Prophet

    horizon = options.horizon or 1
    if series.stamps is None:
        # Undated steps become days so that Prophet's time axis counts steps; calendar seasonalities
        # would be meaningless there, the series' own period is not.
        stamps = pd.date_range(UNDATED_ORIGIN, periods=len(series.values), freq="D")
        model = Prophet(interval_width=options.interval_width, weekly_seasonality=False,
                        yearly_seasonality=False, daily_seasonality=False)
        step_days = 1.0
        frequency = "D"
    else:
        stamps = pd.DatetimeIndex(series.stamps)
        model = Prophet(interval_width=options.interval_width)
        # params.period counts steps; Prophet counts days (a month's step is its typical length).
        step_days = float(np.median(np.diff(stamps.asi8))) / 86_400e9 if len(stamps) > 1 else 1.0
    if period is not None:
        model.add_seasonality(name="period", period=period * step_days, fourier_order=max(1, min(10, period // 2)))
    with _prophet_lock:
        model.fit(pd.DataFrame({"ds": stamps, "y": series.values}))
        future = model.make_future_dataframe(periods=horizon, freq=frequency, include_history=False)
        # Intervals are simulated with numpy's global generator: seeded, the answer is repeatable.
        np.random.seed(RANDOM_STATE)
        frame = model.predict(future)
    return {"yhat": rounded(frame["yhat"]), "yhat_lower": rounded(frame["yhat_lower"]),
            "yhat_upper": rounded(frame["yhat_upper"])}


def forecast(series: Series, options: SeriesParams) -> dict[str, Any]:
    values = np.asarray(series.values, dtype=float)
    frequency = series_frequency(series, options)
    horizon = options.horizon or 1
    if options.method == "prophet" and series.stamps is not None:
        # Dated series: Prophet's calendar seasonalities, plus params.period if given.
        period, detected = options.period, False
        if period is not None and 2 * period > len(values):
            raise ItemError("series_too_short", f"period {period} needs at least {2 * period} points")
    else:
        period, detected = choose_period(values, options, required=False)
    if options.method == "prophet":
        output = forecast_prophet(series, options, period, frequency)
    else:
        output = forecast_arima(values, options, period)
    answer: dict[str, Any] = {"method": options.method, "horizon": horizon,
                              "interval_width": options.interval_width, **output,
                              "period": period, "period_detected": detected}
    if series.stamps is not None and frequency is not None:
        answer["ds"] = future_stamps(series.stamps[-1], frequency, horizon)
        answer["frequency"] = frequency
    return answer


# --- anomaly and decomposition -----------------------------------------------------------------------------

def series_anomalies(series: Series, options: SeriesParams) -> dict[str, Any]:
    """Robust z-scores of each point against a baseline: trend + seasonal profile when the series has a
    period (params.period or detected), else the median of its neighbours."""
    values = np.asarray(series.values, dtype=float)
    answer: dict[str, Any] = {"method": options.method, "threshold": options.threshold}
    period, detected = choose_period(values, options, required=False)
    if period is not None:
        baseline = seasonal_baseline(values, period, options.threshold)
        answer.update(baseline="seasonal", period=period, period_detected=detected)
    else:
        window = options.window or DEFAULT_WINDOW
        baseline = neighbour_median(values, window)
        answer.update(baseline="neighbour_median", window=window, period=None, period_detected=False)
    scores = zscores(values - baseline, options.threshold)
    anomalies = []
    for index in np.flatnonzero(np.abs(scores) > options.threshold).tolist():
        anomaly = {"index": index, "value": series.values[index], "score": round(float(scores[index]), DECIMALS)}
        if series.stamps is not None:
            anomaly["ds"] = series.stamps[index].isoformat()
        anomalies.append(anomaly)
    answer.update(anomalies=anomalies, scores=rounded(scores))
    return answer


def row_anomalies(rows: FeatureRows, options: SeriesParams) -> dict[str, Any]:
    scores, outliers, threshold = isolation_scores(np.asarray(rows.rows, dtype=float), options.contamination)
    return {"method": "isolation_forest", "contamination": options.contamination,
            "threshold": round(threshold, DECIMALS),
            "anomalies": [{"index": index, "score": round(float(scores[index]), DECIMALS)}
                          for index in np.flatnonzero(outliers).tolist()],
            "scores": rounded(scores)}


def decompose(series: Series, options: SeriesParams) -> dict[str, Any]:
    values = np.asarray(series.values, dtype=float)
    period, detected = choose_period(values, options, required=True)
    assert period is not None
    if options.method == "stl":
        result = stl_fit(values, period, options.robust)
    else:
        from statsmodels.tsa.seasonal import seasonal_decompose

        # extrapolate_trend fills the half-window at each end that a centred moving average leaves empty.
        result = seasonal_decompose(values, period=period, model="additive", extrapolate_trend="freq")
    trend, seasonal, residual = (np.asarray(part, dtype=float) for part in (result.trend, result.seasonal, result.resid))
    answer = {"method": options.method, "period": period, "period_detected": detected,
              "trend": rounded(trend), "seasonal": rounded(seasonal), "residual": rounded(residual),
              "strength": {"seasonal": seasonal_strength(seasonal, residual),
                           "trend": seasonal_strength(trend, residual)}}
    return dated(series, answer)


# --- backends -----------------------------------------------------------------------------------------------

class _SeriesBackend(ABC):
    """One method of one time-series task behind the common model interface; subclasses answer one item."""

    task = ""

    def __init__(self, name: str, version: str) -> None:
        self.info = ModelInfo(name=name, version=version, task=self.task, device="cpu",
                              max_input_chars=MAX_POINTS, max_batch_size=32)

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        options = read_params(self.task, self.info.name, params)
        # Every item is checked before any is fitted (a bad one makes the batcher retry item by item).
        parsed = [check_item(self.task, options, item) for item in inputs]
        return [self.answer(item, options) for item in parsed]

    @abstractmethod
    def answer(self, item: Series | FeatureRows, options: SeriesParams) -> dict[str, Any]:
        """The task's answer for one checked item."""


class AnomalyDetector(_SeriesBackend):
    task = "anomaly"

    def answer(self, item: Series | FeatureRows, options: SeriesParams) -> dict[str, Any]:
        if isinstance(item, FeatureRows):
            return row_anomalies(item, options)
        return series_anomalies(item, options)


class Forecaster(_SeriesBackend):
    task = "forecast"

    def answer(self, item: Series | FeatureRows, options: SeriesParams) -> dict[str, Any]:
        assert isinstance(item, Series)
        return forecast(item, options)


class Decomposer(_SeriesBackend):
    task = "decompose"

    def answer(self, item: Series | FeatureRows, options: SeriesParams) -> dict[str, Any]:
        assert isinstance(item, Series)
        return decompose(item, options)


def trained_forecast(forecaster: Any, horizon: int) -> dict[str, Any]:
    """A forecaster trained by training/trainers/forecast.py, answering in the shape of `forecast`."""
    _quiet_prophet()
    with _prophet_lock:
        np.random.seed(RANDOM_STATE)  # Prophet's intervals are sampled: repeatable answers
        output = forecaster.forecast(horizon)
    method = forecaster.method
    answer = {"method": method, "horizon": horizon, "interval_width": TRAINED_INTERVAL_WIDTH, **output,
              "frequency": forecaster.payload.get("freq")}
    if method == "arima":
        answer["order"] = forecaster.payload.get("order")
    return answer
