"""Forecasting one series with Prophet or ARIMA (statsmodels), or both with `params.method="auto"`.

Rows are {"ds": date or timestamp, "y": number}. The last `params.horizon` points are held out: each
candidate is fitted on the rest and scored there (MAE, RMSE, MAPE, sMAPE); the best one is refitted on
the whole series and registered. ARIMA orders are searched one candidate at a time, so a pause keeps
the candidates already scored. Artifacts are JSON (Prophet's own serialisation, or the ARIMA order and
fitted parameters with the series), never pickles.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.training.datasets import ValidationReport, require_mapping_rows
from cortex_tasks.core.training.outcome import TrainedModel, param_int
from cortex_tasks.runtime.models.forecaster import quiet_prophet_logs
from cortex_tasks.runtime.training.context import TrainingContext

ARIMA_ORDERS = [(p, d, q) for d in (0, 1) for p in (0, 1, 2) for q in (0, 1, 2)]
METHODS = ("prophet", "arima", "auto")


def validate(rows: list[Any], params: dict[str, Any]) -> tuple[ValidationReport, Any]:
    import pandas as pd

    report = ValidationReport(rows=len(rows))
    usable = require_mapping_rows(rows, report, ("ds", "y"))
    stamps, values = [], []
    for index in usable:
        y = rows[index]["y"]
        if isinstance(y, str):
            try:
                y = float(y)
            except ValueError:
                pass
        if isinstance(y, bool) or not isinstance(y, (int, float)) or not math.isfinite(y):
            report.error(index, "y", f"must be a finite number, not {rows[index]['y']!r}")
            continue
        try:
            stamp = pd.Timestamp(rows[index]["ds"])
        except (ValueError, TypeError):
            report.error(index, "ds", f"{rows[index]['ds']!r} is not a date or timestamp")
            continue
        if stamp is pd.NaT:
            report.error(index, "ds", "is empty")
            continue
        stamps.append(stamp.tz_localize(None) if stamp.tzinfo else stamp)
        values.append(float(y))
    method = params.get("method", "auto")
    if method not in METHODS:
        report.error(None, None, f"params.method is one of {list(METHODS)}")
    frame = pd.DataFrame({"ds": stamps, "y": values})
    if frame["ds"].duplicated().any():
        report.error(None, "ds", f"{int(frame['ds'].duplicated().sum())} duplicate timestamp(s)")
    if not frame["ds"].is_monotonic_increasing:
        report.warnings.append("rows are not in time order; they were sorted")
    frame = frame.sort_values("ds").reset_index(drop=True)
    minimum = param_int(params, "min_points", 12, 4, 100_000)
    if len(frame) < minimum:
        report.error(None, None, f"at least {minimum} points are needed, found {len(frame)}")
    freq = pd.infer_freq(frame["ds"]) if len(frame) >= 3 and not frame["ds"].duplicated().any() else None
    report.summary.update({"points": len(frame), "frequency": freq,
                           "start": str(frame["ds"].iloc[0]) if len(frame) else None,
                           "end": str(frame["ds"].iloc[-1]) if len(frame) else None})
    if freq is None and len(frame) >= 3:
        if method == "arima":
            report.error(None, "ds", "ARIMA needs evenly spaced timestamps; this series has no regular frequency")
        else:
            report.warnings.append("timestamps are not evenly spaced; only Prophet is fitted")
    horizon = param_int(params, "horizon", max(1, len(frame) // 10), 1, 10_000)
    if len(frame) and horizon >= len(frame) // 2:
        report.error(None, None, f"params.horizon ({horizon}) must be less than half the series ({len(frame)} points)")
    return report, frame


def errors(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    difference = predicted - actual
    denominator = np.abs(actual) + np.abs(predicted)
    nonzero = np.abs(actual) > 1e-12
    return {
        "mae": float(np.mean(np.abs(difference))),
        "rmse": float(np.sqrt(np.mean(difference ** 2))),
        "mape": float(np.mean(np.abs(difference[nonzero] / actual[nonzero]))) if nonzero.any() else float("nan"),
        "smape": float(np.mean(np.where(denominator > 0, 2 * np.abs(difference) / np.where(denominator > 0, denominator, 1), 0))),
    }


def fit_prophet(frame: Any) -> Any:
    from prophet import Prophet

    quiet_prophet_logs()
    return Prophet().fit(frame)


def fit_arima(values: np.ndarray, order: tuple[int, int, int]) -> Any:
    import warnings

    from statsmodels.tsa.arima.model import ARIMA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ARIMA(values, order=order).fit()


def train(context: TrainingContext, frame: Any, params: dict[str, Any]) -> TrainedModel:
    import pandas as pd

    method = params.get("method", "auto")
    horizon = param_int(params, "horizon", max(1, len(frame) // 10), 1, 10_000)
    freq = pd.infer_freq(frame["ds"]) if len(frame) >= 3 else None
    fit_part, held = frame.iloc[:-horizon], frame.iloc[-horizon:]
    actual = held["y"].to_numpy()
    candidates: list[dict[str, Any]] = []
    resumed = context.resume_state()
    if resumed is not None:
        candidates = json.loads(resumed[1])["candidates"]
    plan: list[tuple[str, Any]] = []
    if method in ("prophet", "auto"):
        plan.append(("prophet", None))
    if method in ("arima", "auto") and freq is not None:
        plan += [("arima", order) for order in ARIMA_ORDERS]
    if not plan:
        raise JobInputError("invalid_params", "no model can be fitted to this series (ARIMA needs a regular frequency)")

    context.phase("training", epochs=len(plan))
    for step, (name, order) in enumerate(plan, start=1):
        if step <= len(candidates):
            continue  # scored before the pause
        try:
            if name == "prophet":
                fitted = fit_prophet(fit_part)
                future = pd.DataFrame({"ds": held["ds"]})
                predicted = fitted.predict(future)["yhat"].to_numpy()
            else:
                predicted = np.asarray(fit_arima(fit_part["y"].to_numpy(), order).forecast(horizon))
            scores = errors(actual, predicted)
            candidates.append({"method": name, "order": list(order) if order else None, **scores})
        except Exception as exc:  # noqa: BLE001 (one order that does not converge is not a failed job)
            candidates.append({"method": name, "order": list(order) if order else None, "error": str(exc)[:200]})
        context.epoch_done(step, {key: value for key, value in candidates[-1].items()
                                  if isinstance(value, (int, float)) and math.isfinite(value)}
                           | {"candidate": f"{name}{tuple(order) if order else ''}"})
        if step < len(plan):
            context.obey(step, lambda: json.dumps({"candidates": candidates}).encode())

    scored = [c for c in candidates if "smape" in c and math.isfinite(c["smape"])]
    if not scored:
        raise JobInputError("training_failed", "no candidate model could be fitted", {"candidates": candidates})
    best = min(scored, key=lambda c: c["smape"])
    context.phase("evaluating")
    payload: dict[str, Any] = {"method": best["method"], "freq": freq, "default_horizon": horizon,
                               "last_ds": str(frame["ds"].iloc[-1])}
    if best["method"] == "prophet":
        from prophet.serialize import model_to_json

        payload["model"] = model_to_json(fit_prophet(frame))
        framework = "prophet"
    else:
        final = fit_arima(frame["y"].to_numpy(), tuple(best["order"]))
        payload.update({"order": best["order"], "params": np.asarray(final.params).tolist(),
                        "y": frame["y"].tolist()})
        framework = "statsmodels-arima"
    metrics = {key: best[key] for key in ("mae", "rmse", "mape", "smape") if math.isfinite(best[key])}
    metrics.update({"held_out_points": horizon, "candidates": len(candidates)})
    return TrainedModel(
        framework=framework, artifact=json.dumps(payload).encode(), artifact_filename="forecaster.json",
        metrics=metrics,
        parameters={"method": best["method"], "order": best.get("order"), "horizon": horizon, "frequency": freq,
                    "searched": method, "points": len(frame),
                    "intended_use": f"Forecasts the next periods of the series it was fitted on ({freq or 'irregular'})."},
        description=f"{best['method']} forecaster ({len(frame)} points, frequency {freq or 'irregular'})",
    )
