"""The time-series tasks (anomaly, forecast, decompose) through the HTTP API, answered by the real
prefork worker on the nlp queue; a forecaster trained by Cortex's training pipeline served as name@version."""
from __future__ import annotations

import datetime
import math
import time
import uuid
from typing import Any

import numpy as np
import pytest

from cortex_tasks.core.jobs import store
from tests.integration.test_bad_input import assert_error, nothing_enqueued  # noqa: F401 (a fixture)
from tests.integration.test_predict_endpoints import sse_events

# These tests read or write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("in_default_tenant")

# A fresh pool child imports statsmodels (~2 s) or Prophet (~2 s, its Stan model on first fit); far
# longer on a busy machine.
POLL_SECONDS = 240
SPIKES = {3: -4.0, 37: 6.0, 120: -5.0, 201: 7.0}


def predict(api, task: str, inputs: list[Any], **extra: Any) -> dict[str, Any]:
    return api.predict(task, inputs, poll_seconds=POLL_SECONDS, **extra)


def seasonal_with_spikes(period: int = 24, seed: int = 0) -> list[float]:
    steps = np.arange(240)
    values = 20 + 0.05 * steps + 4 * np.sin(2 * np.pi * steps / period) + np.random.default_rng(seed).normal(0, 0.3, 240)
    for index, jump in SPIKES.items():
        values[index] += jump
    return [round(float(value), 4) for value in values]


def truth(steps: np.ndarray) -> np.ndarray:
    """A clean linear trend plus a 12-step season: what the forecasters must continue."""
    return 10 + 0.5 * steps + 5 * np.sin(2 * np.pi * steps / 12)


def noisy_history(n: int = 240) -> list[float]:
    values = truth(np.arange(n)) + np.random.default_rng(1).normal(0, 0.3, n)
    return [round(float(value), 4) for value in values]


# --- anomaly ------------------------------------------------------------------------------------------------

def test_anomaly_flags_exactly_the_injected_spikes(api, workers):
    series = seasonal_with_spikes(24)
    start = datetime.datetime(2024, 1, 1)
    dated = [{"ds": (start + datetime.timedelta(hours=i)).isoformat(), "y": y} for i, y in enumerate(seasonal_with_spikes(12))]
    body = predict(api, "anomaly", [series, dated])
    assert body["model"]["name"] == "robust-zscore"
    undated, hourly = body["outputs"]
    assert [anomaly["index"] for anomaly in undated["anomalies"]] == sorted(SPIKES)
    assert undated["period"] == 24 and undated["period_detected"] and undated["threshold"] == 4.0
    assert len(undated["scores"]) == len(series)
    assert [anomaly["index"] for anomaly in hourly["anomalies"]] == sorted(SPIKES)
    assert hourly["period"] == 12
    assert hourly["anomalies"][1]["ds"] == "2024-01-02T13:00:00"  # index 37, an hour per step
    # A lower threshold flags more (the threshold is a z-score, not a probability).
    looser = predict(api, "anomaly", [series], params={"threshold": 2.0})["outputs"][0]
    assert set(SPIKES) < {anomaly["index"] for anomaly in looser["anomalies"]}


def test_anomaly_feature_rows_use_isolation_forest(api, workers):
    rng = np.random.default_rng(2)
    rows = rng.normal(0, 1, (100, 3))
    rows[[5, 50]] += 8
    inputs = [[[round(float(x), 4) for x in row] for row in rows]]
    body = predict(api, "anomaly", inputs, params={"contamination": 0.02})
    assert body["model"]["name"] == "isolation-forest"  # chosen for feature rows
    output = body["outputs"][0]
    assert [anomaly["index"] for anomaly in output["anomalies"]] == [5, 50]
    assert output["method"] == "isolation_forest" and len(output["scores"]) == 100
    # Seeded: the same rows give the same scores (here answered from the cache).
    again = api.post("/api/v1/predict", {"task": "anomaly", "inputs": inputs, "params": {"contamination": 0.02},
                                         "wait": 30}).get_json()
    assert again["cached"] is True and again["outputs"] == body["outputs"]


# --- forecast -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["prophet", "arima"])
def test_forecast_continues_a_linear_seasonal_series(api, workers, method):
    body = predict(api, "forecast", [noisy_history()], params={"horizon": 24, "method": method})
    assert body["model"]["name"] == method
    output = body["outputs"][0]
    expected = truth(np.arange(240, 264))
    error = np.abs(np.array(output["yhat"]) - expected)
    # A forecast without the trend is 12 units off at the end, one without the season up to 5.
    assert error.max() < 1.0, error
    assert len(output["yhat_lower"]) == len(output["yhat_upper"]) == 24
    assert all(low <= mid <= high for low, mid, high in zip(output["yhat_lower"], output["yhat"], output["yhat_upper"]))
    inside = np.mean((np.array(output["yhat_lower"]) <= expected) & (expected <= np.array(output["yhat_upper"])))
    assert inside >= 0.75  # an 80% interval
    assert output["period"] == 12 and output["interval_width"] == 0.8 and output["horizon"] == 24


def test_forecast_of_dated_series_returns_future_dates(api, workers):
    start = datetime.date(2024, 1, 1)
    history = [{"ds": (start + datetime.timedelta(days=i)).isoformat(), "y": y} for i, y in enumerate(noisy_history(60))]
    body = predict(api, "forecast", [history], model="arima", params={"horizon": 3})
    output = body["outputs"][0]
    assert output["ds"] == ["2024-03-01T00:00:00", "2024-03-02T00:00:00", "2024-03-03T00:00:00"]
    assert np.abs(np.array(output["yhat"]) - truth(np.arange(60, 63))).max() < 1.5


def test_forecast_through_batch_stream_and_job_status(api, workers):
    history = noisy_history(120)
    batch = api.post("/api/v1/predict/batch", {"task": "forecast", "model": "arima", "inputs": [history, history[:60]],
                                                 "params": {"horizon": 2}})
    assert batch.status_code == 200, batch.get_json()
    assert batch.get_json()["errors"] == 0 and [len(o["yhat"]) for o in batch.get_json()["outputs"]] == [2, 2]
    stream = api.post("/api/v1/predict/stream", {"task": "decompose", "inputs": [history, history[:48]],
                                                 "params": {"period": 12}})
    events = sse_events(stream)
    assert [name for name, _ in events] == ["start", "item", "item", "done"]
    assert [data["output"]["period"] for name, data in events if name == "item"] == [12, 12]
    job = api.get(f"/api/v1/jobs/{events[0][1]['job_id']}").get_json()
    assert job["status"] == "succeeded" and len(job["result"]["outputs"][0]["trend"]) == 120


def test_trained_forecaster_is_served_by_name_at_version(api, workers):
    from cortex_tasks.core.training.submission import TrainingRequest, submit_training
    from cortex_tasks.runtime.training.service import run_training

    start = datetime.date(2024, 1, 1)
    rows = [{"ds": (start + datetime.timedelta(days=i)).isoformat(),
             "y": round(50 + 0.3 * i + 6 * math.sin(2 * math.pi * i / 7), 3)} for i in range(84)]
    name = f"sales-{uuid.uuid4().hex[:6]}"
    job_id = submit_training(TrainingRequest(owner="timeseries-test", kind="forecast", model=name,
                                             dataset={"rows": rows}, params={"method": "arima", "horizon": 14},
                                             priority=4), send=False)
    assert run_training(job_id)["status"] == "succeeded"

    body = predict(api, "forecast", [[]], model=f"{name}@1", params={"horizon": 7})
    assert body["model"] == {"name": name, "version": "1"}
    output = body["outputs"][0]
    assert output["method"] == "arima" and output["horizon"] == 7
    assert output["ds"][0].startswith("2024-03-25") and len(output["yhat"]) == 7
    # The very artifact the training run registered answers (loaded here independently of the worker).
    from cortex_tasks.core.registry import artifacts, service
    from cortex_tasks.runtime.models.forecaster import load_forecaster

    record = service.get_version(name, 1)
    direct = load_forecaster(artifacts.fetch_artifact(record).read_bytes()).forecast(7)
    assert output["yhat"] == direct["yhat"] and output["yhat_upper"] == direct["yhat_upper"]
    # The trainer's ARIMA has no seasonal term, so it is only roughly right a week ahead.
    expected = [50 + 0.3 * i + 6 * math.sin(2 * math.pi * i / 7) for i in range(84, 91)]
    assert np.abs(np.array(output["yhat"]) - expected).max() < 4.0
    # The trained model's default horizon is the one it was trained with.
    assert len(predict(api, "forecast", [[]], model=f"{name}@1")["outputs"][0]["yhat"]) == 14


def test_trained_forecaster_refuses_history(api, nothing_enqueued, workers):  # noqa: F811
    from cortex_tasks.core.registry import service

    name = f"held-{uuid.uuid4().hex[:6]}"
    service.register_version(name, task="forecast", framework="statsmodels-arima", artifact=b"{}")
    response = api.post("/api/v1/predict", {"task": "forecast", "model": f"{name}@1", "inputs": [[1.0, 2.0]]})
    assert_error(response, 422, "invalid_input")
    assert "send []" in response.get_json()["error"]["message"]


# --- decompose ----------------------------------------------------------------------------------------------

def test_decompose_recovers_the_period_and_components(api, workers):
    steps = np.arange(144)
    season = 2 * np.cos(2 * np.pi * steps / 12)
    values = [round(float(v), 6) for v in 3 + 0.1 * steps + season]
    body = predict(api, "decompose", [values])
    assert body["model"]["name"] == "stl-decompose"
    output = body["outputs"][0]
    assert output["period"] == 12 and output["period_detected"] is True
    assert np.abs(np.array(output["seasonal"]) - season).max() < 0.2
    assert np.abs(np.array(output["trend"]) - (3 + 0.1 * steps)).max() < 0.2
    classical = predict(api, "decompose", [values], params={"method": "classical"})
    assert classical["model"]["name"] == "classical-decompose" and classical["outputs"][0]["period"] == 12


# --- bad input ----------------------------------------------------------------------------------------------

BAD = [
    ("text in a series", {"task": "forecast", "inputs": [["1", "2"]], "params": {"horizon": 1}}, "invalid_input"),
    ("a string input", {"task": "decompose", "inputs": ["1,2,3"]}, "invalid_input"),
    ("too short for the period", {"task": "decompose", "inputs": [list(range(20))], "params": {"period": 12}},
     "series_too_short"),
    ("too short to forecast", {"task": "forecast", "inputs": [[1.0, 2.0]], "params": {"horizon": 1}},
     "series_too_short"),
    ("ragged feature rows", {"task": "anomaly", "inputs": [[[1.0, 2.0]] * 9 + [[1.0]]]}, "ragged_rows"),
    ("too long", {"task": "anomaly", "inputs": [[1.0] * 5001]}, "series_too_long"),
    ("missing horizon", {"task": "forecast", "inputs": [list(range(30))]}, "invalid_params"),
    ("horizon out of range", {"task": "forecast", "inputs": [list(range(30))], "params": {"horizon": 5000}},
     "invalid_params"),
    ("unknown method", {"task": "forecast", "inputs": [list(range(30))], "params": {"horizon": 2, "method": "lstm"}},
     "invalid_params"),
    ("method of another model", {"task": "decompose", "model": "stl-decompose", "inputs": [list(range(30))],
                                 "params": {"method": "classical"}}, "invalid_params"),
    ("rows for a series method", {"task": "anomaly", "model": "robust-zscore", "inputs": [[[1.0, 2.0]] * 10]},
     "invalid_input"),
    ("unsorted dates", {"task": "forecast", "params": {"horizon": 1}, "inputs": [[
        {"ds": f"2024-01-0{day}", "y": 1.0} for day in (1, 2, 4, 3, 5, 6)]]}, "invalid_input"),
    ("bad threshold", {"task": "anomaly", "inputs": [list(range(30))], "params": {"threshold": "high"}},
     "invalid_params"),
]


@pytest.mark.parametrize("name,body,code", BAD, ids=[case[0] for case in BAD])
def test_bad_timeseries_input_is_422_and_nothing_is_queued(api, nothing_enqueued, name, body, code):  # noqa: F811
    response = api.post("/api/v1/predict", body)
    assert_error(response, 422, code)


def test_overflowing_number_is_422(api, nothing_enqueued):  # noqa: F811
    # 1e999 is valid JSON that parses to infinity (NaN/Infinity literals are refused earlier, with a 400).
    raw = '{"task": "anomaly", "inputs": [[1.0, 2.0, 1e999, 3.0, 4.0, 5.0]]}'
    response = api.client.post("/api/v1/predict", data=raw, content_type="application/json", headers=api.headers())
    assert_error(response, 422, "invalid_input")
    assert "finite" in response.get_json()["error"]["message"]


def test_bad_item_names_its_index(api, nothing_enqueued):  # noqa: F811
    response = api.post("/api/v1/predict", {"task": "anomaly", "inputs": [list(range(30)), [1.0, None, 2.0]]})
    assert_error(response, 422, "invalid_input")
    assert response.get_json()["error"]["details"]["index"] == 1
    assert "inputs[1]" in response.get_json()["error"]["message"]


def test_worker_checks_batch_job_items_too(api, workers):
    """/batch/submit is not checked item by item in the gateway: the worker fails the bad item alone."""
    response = api.post("/api/v1/batch/submit", {"task": "decompose", "inputs": [noisy_history(48), [1.0, 2.0]],
                                                 "params": {"period": 12}})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=POLL_SECONDS)
    while datetime.datetime.now() < deadline:
        progress = api.get(f"/api/v1/batch/progress/{job_id}").get_json()
        if progress["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    assert progress["done"] + progress["failed"] == 2 and progress["failed"] == 1, progress
    errors = api.get(f"/api/v1/batch/errors/{job_id}").get_json()
    assert "series_too_short" in str(errors)
    assert store.get_job(job_id) is not None
