"""Time-series service code (runtime/models/timeseries.py, core/validation/timeseries.py), called directly."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.validation.timeseries import (
    MAX_POINTS,
    FeatureRows,
    Series,
    check_item,
    check_request,
    implied_model,
    parse_item,
    read_params,
)
from cortex_tasks.runtime.models.timeseries import (
    centred_trend,
    decompose,
    detect_period,
    forecast,
    neighbour_median,
    row_anomalies,
    series_anomalies,
    zscores,
)

SPIKES = {3: -4.0, 37: 6.0, 120: -5.0, 201: 7.0}


def seasonal(n: int = 240, period: int = 24, amplitude: float = 4.0, slope: float = 0.05, noise: float = 0.3,
             seed: int = 0) -> np.ndarray:
    steps = np.arange(n)
    rng = np.random.default_rng(seed)
    return 20 + slope * steps + amplitude * np.sin(2 * np.pi * steps / period) + rng.normal(0, noise, n)


def with_spikes(values: np.ndarray) -> np.ndarray:
    spiked = values.copy()
    for index, jump in SPIKES.items():
        spiked[index] += jump
    return spiked


# --- pure functions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("period", [7, 12, 24, 30])
def test_detect_period_finds_the_season_not_a_multiple(period):
    found, strength = detect_period(seasonal(period=period))
    assert found == period and strength > 0.5


def test_detect_period_finds_none_in_noise_or_a_straight_line():
    rng = np.random.default_rng(3)
    assert detect_period(rng.normal(0, 1, 300))[0] is None
    assert detect_period(np.arange(100, dtype=float))[0] is None


def test_centred_trend_cancels_the_season_and_continues_a_line_at_the_ends():
    steps = np.arange(120)
    line = 3 + 0.5 * steps
    trend = centred_trend(line + 4 * np.sin(2 * np.pi * steps / 12), 12)
    assert np.allclose(trend, line, atol=1e-9)


def test_neighbour_median_leaves_the_point_out():
    values = np.array([1.0, 1.0, 50.0, 1.0, 1.0])
    assert neighbour_median(values, 3).tolist() == [1.0, 25.5, 1.0, 25.5, 1.0]


def test_zscores_are_scaled_by_the_inliers():
    rng = np.random.default_rng(5)
    residuals = rng.normal(0, 2.0, 2000)
    residuals[10] = 40.0
    scores = zscores(residuals, 4.0)
    assert scores[10] == pytest.approx(20.0, rel=0.1)
    assert np.std(np.delete(scores, 10)) == pytest.approx(1.0, rel=0.05)


# --- anomaly ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("period", [12, 24])
def test_seasonal_series_flags_exactly_the_injected_spikes(period):
    values = with_spikes(seasonal(period=period))
    answer = series_anomalies(Series(values.tolist()), read_params("anomaly", "robust-zscore", {}))
    assert [anomaly["index"] for anomaly in answer["anomalies"]] == sorted(SPIKES)
    assert answer["period"] == period and answer["period_detected"] and answer["baseline"] == "seasonal"
    assert all(math.copysign(1, a["score"]) == math.copysign(1, SPIKES[a["index"]]) for a in answer["anomalies"])
    assert len(answer["scores"]) == len(values)


def test_series_without_a_season_uses_the_neighbours_median():
    rng = np.random.default_rng(0)
    values = 5 + 0.02 * np.arange(200) + rng.normal(0, 1, 200)
    values[[0, 50, 150]] += [8, -9, 10]
    answer = series_anomalies(Series(values.tolist()), read_params("anomaly", "robust-zscore", {}))
    assert answer["baseline"] == "neighbour_median" and answer["period"] is None
    assert [anomaly["index"] for anomaly in answer["anomalies"]] == [0, 50, 150]


def test_isolation_forest_finds_the_far_rows_and_is_repeatable():
    rng = np.random.default_rng(2)
    rows = rng.normal(0, 1, (100, 3))
    rows[[5, 50]] += 8
    options = read_params("anomaly", "isolation-forest", {"contamination": 0.02})
    first = row_anomalies(FeatureRows(rows.tolist()), options)
    assert [anomaly["index"] for anomaly in first["anomalies"]] == [5, 50]
    assert row_anomalies(FeatureRows(rows.tolist()), options) == first
    assert all(0 < score <= 1 for score in first["scores"])


# --- forecast and decompose -----------------------------------------------------------------------------

def truth(steps: np.ndarray) -> np.ndarray:
    return 10 + 0.5 * steps + 5 * np.sin(2 * np.pi * steps / 12)


def test_arima_forecast_continues_trend_and_season():
    rng = np.random.default_rng(1)
    history = truth(np.arange(240)) + rng.normal(0, 0.3, 240)
    answer = forecast(Series(history.tolist()), read_params("forecast", "arima", {"horizon": 24}))
    error = np.abs(np.array(answer["yhat"]) - truth(np.arange(240, 264)))
    # Without drift the forecast would flatten (12 units off by the end); without the season, 5 off.
    assert error.max() < 1.0 and answer["period"] == 12 and answer["period_detected"]
    assert all(low <= mid <= high for low, mid, high in zip(answer["yhat_lower"], answer["yhat"], answer["yhat_upper"]))


def test_arima_forecast_of_dated_series_has_future_dates():
    stamps = [f"2024-01-{day:02d}" for day in range(1, 31)]
    series = parse_item([{"ds": stamp, "y": float(i)} for i, stamp in enumerate(stamps)])
    answer = forecast(series, read_params("forecast", "arima", {"horizon": 3}))
    assert answer["ds"] == ["2024-01-31T00:00:00", "2024-02-01T00:00:00", "2024-02-02T00:00:00"]
    assert answer["frequency"] == "D"
    assert np.allclose(answer["yhat"], [30, 31, 32], atol=0.5)


def test_decompose_recovers_the_period_and_the_season():
    steps = np.arange(144)
    values = 3 + 0.1 * steps + 2 * np.cos(2 * np.pi * steps / 12)
    for model in ("stl-decompose", "classical-decompose"):
        answer = decompose(Series(values.tolist()), read_params("decompose", model, {}))
        assert answer["period"] == 12 and answer["period_detected"]
        assert np.abs(np.array(answer["seasonal"]) - 2 * np.cos(2 * np.pi * steps / 12)).max() < 0.2
        assert answer["strength"]["seasonal"] > 0.9


def test_robust_stl_keeps_spikes_in_the_residual():
    steps = np.arange(144)
    values = 3 + 0.1 * steps + 2 * np.cos(2 * np.pi * steps / 12) + np.random.default_rng(0).normal(0, 0.2, 144)
    values[[20, 70]] += 5
    answer = decompose(Series(values.tolist()), read_params("decompose", "stl-decompose", {"period": 12}))
    assert answer["period_detected"] is False
    assert np.abs(np.array(answer["trend"]) - (3 + 0.1 * steps)).max() < 0.3
    assert [round(answer["residual"][i]) for i in (20, 70)] == [5, 5]


def test_decompose_without_a_period_asks_for_one():
    rng = np.random.default_rng(4)
    with pytest.raises(ItemError, match="params.period") as caught:
        decompose(Series(rng.normal(0, 1, 100).tolist()), read_params("decompose", "stl-decompose", {}))
    assert caught.value.code == "no_period_found"


# --- inputs and params ------------------------------------------------------------------------------------

@pytest.mark.parametrize("item,code", [
    ([1.0, float("inf")], "invalid_input"),
    ([1.0, "2"], "invalid_input"),
    ([1.0, True], "invalid_input"),
    ([[1.0, 2.0], [1.0]], "ragged_rows"),
    ([0.0] * (MAX_POINTS + 1), "series_too_long"),
    ([{"ds": "2024-01-02", "y": 1}, {"ds": "2024-01-01", "y": 2}], "invalid_input"),
    ([{"ds": "yesterday", "y": 1}], "invalid_input"),
    ("1,2,3", "invalid_input"),
])
def test_bad_items(item, code):
    with pytest.raises(ItemError) as caught:
        parse_item(item, allow_rows=True)
    assert caught.value.code == code


def test_dated_points_accept_both_spellings_and_time_zones():
    series = parse_item([{"timestamp": "2024-01-01T00:00:00Z", "value": 1},
                         {"ds": "2024-01-01T02:00:00+01:00", "y": 2.5}])
    assert isinstance(series, Series) and series.values == [1.0, 2.5]
    assert [stamp.hour for stamp in series.stamps] == [0, 1]


@pytest.mark.parametrize("task,model,params,fragment", [
    ("forecast", "prophet", {}, "horizon"),
    ("forecast", "prophet", {"horizon": 0}, "horizon"),
    ("forecast", "prophet", {"horizon": 1001}, "horizon"),
    ("forecast", "prophet", {"horizon": 3, "method": "lstm"}, "method"),
    ("forecast", "prophet", {"horizon": 3, "method": "arima"}, "served by model 'arima'"),
    ("forecast", "prophet", {"horizon": 3, "order": [1, 1, 1]}, "order"),
    ("forecast", "arima", {"horizon": 3, "order": [1, 3, 1]}, "order"),
    ("forecast", "prophet", {"horizon": 3, "interval_width": 1.5}, "interval_width"),
    ("anomaly", "robust-zscore", {"threshold": -1}, "threshold"),
    ("anomaly", "robust-zscore", {"window": 4}, "odd"),
    ("anomaly", "isolation-forest", {"contamination": 0.9}, "contamination"),
    ("decompose", "stl-decompose", {"period": 1}, "period"),
])
def test_bad_params(task, model, params, fragment):
    with pytest.raises(JobInputError, match=fragment) as caught:
        read_params(task, model, params)
    assert caught.value.code == "invalid_params"


def test_series_too_short_for_the_period_or_method():
    options = read_params("decompose", "stl-decompose", {"period": 12})
    with pytest.raises(ItemError, match="two full cycles of period 12") as caught:
        check_item("decompose", options, list(range(20)))
    assert caught.value.code == "series_too_short"
    with pytest.raises(ItemError, match="at least 8 rows"):
        check_item("anomaly", read_params("anomaly", "isolation-forest", {}), [[1.0]] * 5)
    with pytest.raises(ItemError, match="isolation_forest"):
        check_item("anomaly", read_params("anomaly", "robust-zscore", {}), [[1.0, 2.0]] * 10)


def test_implied_model_from_method_or_feature_rows():
    assert implied_model("forecast", {"method": "arima"}, [[1, 2]]) == "arima"
    assert implied_model("forecast", {}, [[1, 2]]) is None
    assert implied_model("anomaly", {}, [[[1, 2], [3, 4]]]) == "isolation-forest"
    assert implied_model("anomaly", {}, [[1, 2], [[1, 2]]]) is None
    assert implied_model("embed", {"method": "arima"}, ["x"]) is None


def test_check_request_names_the_bad_item_and_trained_forecasters_take_empty_inputs():
    with pytest.raises(JobInputError) as caught:
        check_request("forecast", "arima", "x:Forecaster", [[1.0] * 10, [1.0, 2.0]], {"horizon": 2})
    assert caught.value.code == "series_too_short" and caught.value.details == {"index": 1}
    trained = "cortex_tasks.runtime.models.registry_models:RegisteredForecaster"
    check_request("forecast", "demand@1", trained, [[]], {})
    with pytest.raises(JobInputError, match="send \\[\\]"):
        check_request("forecast", "demand@1", trained, [[1.0, 2.0]], {"horizon": 2})
