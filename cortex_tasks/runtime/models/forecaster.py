"""A forecaster trained by Cortex (Prophet or ARIMA), loaded from its JSON artifact: Prophet's own
serialisation, or the ARIMA order and fitted parameters with the series, never a pickle."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np


def quiet_prophet_logs() -> None:
    for name in ("cmdstanpy", "prophet"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class Forecaster:
    """A fitted model that forecasts the periods after its series."""

    method: str
    payload: dict[str, Any]
    default_horizon: int
    _model: Any = None

    def forecast(self, horizon: int) -> dict[str, Any]:
        import pandas as pd

        if self.method == "prophet":
            future = self._model.make_future_dataframe(periods=horizon, freq=self.payload.get("freq") or "D",
                                                       include_history=False)
            frame = self._model.predict(future)
            return {"ds": [str(ts) for ts in frame["ds"]], "yhat": frame["yhat"].round(6).tolist(),
                    "yhat_lower": frame["yhat_lower"].round(6).tolist(),
                    "yhat_upper": frame["yhat_upper"].round(6).tolist()}
        summary = self._model.get_forecast(horizon).summary_frame(alpha=0.2)
        last = pd.Timestamp(self.payload["last_ds"])
        freq = self.payload.get("freq") or "D"
        stamps = pd.date_range(last, periods=horizon + 1, freq=freq)[1:]
        return {"ds": [str(ts) for ts in stamps], "yhat": summary["mean"].round(6).tolist(),
                "yhat_lower": summary["mean_ci_lower"].round(6).tolist(),
                "yhat_upper": summary["mean_ci_upper"].round(6).tolist()}


def load_forecaster(data: bytes) -> Forecaster:
    payload = json.loads(data)
    method = payload.get("method")
    if method == "prophet":
        from prophet.serialize import model_from_json

        quiet_prophet_logs()
        model = model_from_json(payload["model"])
    elif method == "arima":
        import warnings

        from statsmodels.tsa.arima.model import ARIMA

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ARIMA(np.asarray(payload["y"], dtype=float), order=tuple(payload["order"])).filter(
                np.asarray(payload["params"], dtype=float))
    else:
        raise ValueError(f"unknown forecaster {method!r}")
    return Forecaster(method, payload, int(payload.get("default_horizon", 1)), model)
