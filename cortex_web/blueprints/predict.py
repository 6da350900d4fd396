"""Prediction endpoints: /predict, /predict/batch and /predict/pipeline.

Each parses its body and hands it to the prediction service (cortex_web/predictions.py), then answers
with the result when it is ready within the wait budget, or 202 with the job's status URL.
"""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from cortex_tasks.core.auth.roles import PREDICT
from cortex_tasks.core.settings import get_settings
from cortex_web.auth import require
from cortex_web.limits import limit_prediction
from cortex_web.predictions import (
    parse_prediction,
    raise_for_failure,
    run_pipeline,
    run_prediction,
    success_body,
)
from cortex_web.request_body import accepts_images, parse_body
from cortex_web.schemas import PipelineRequest

bp = Blueprint("predict", __name__, url_prefix="/api/v1")


def accepted(job_id: str) -> tuple[Response, int]:
    return jsonify({"job_id": job_id, "status": "queued",
                    "status_url": url_for("jobs.show_job", job_id=job_id)}), 202


@bp.post("/predict")
@accepts_images()
@require(PREDICT)
@limit_prediction
def predict() -> tuple[Response, int]:
    """Run one prediction job; the result when ready within `wait`, else 202 with a status URL."""
    body, task, model, wait = parse_prediction()
    prediction = run_prediction(task, model, body.inputs, body.params, body.priority, wait,
                                sensitive=body.sensitive)
    if prediction.outcome is None:
        return accepted(prediction.job_id)
    raise_for_failure(prediction)
    return jsonify(success_body(prediction)), 200


@bp.post("/predict/batch")
@accepts_images()
@require(PREDICT)
@limit_prediction
def predict_batch() -> tuple[Response, int]:
    """Up to 32 inputs, always waits; a failed item is reported in place of its output."""
    body, task, model, _ = parse_prediction()
    wait = get_settings().max_wait_seconds if body.wait is None else max(body.wait, 1.0)
    prediction = run_prediction(task, model, body.inputs, body.params, body.priority, wait, inline_errors=True,
                                sensitive=body.sensitive)
    if prediction.outcome is None:
        return accepted(prediction.job_id)
    raise_for_failure(prediction)
    response = success_body(prediction)
    response["errors"] = sum(1 for output in response["outputs"]
                             if isinstance(output, dict) and set(output) == {"index", "error"})
    return jsonify(response), 200


@bp.post("/predict/pipeline")
@require(PREDICT)
@limit_prediction
def predict_pipeline() -> tuple[Response, int]:
    """Steps run in order, each on the previous step's output where that makes sense; every step shown."""
    settings = get_settings()
    body = parse_body(PipelineRequest, settings.max_json_depth)
    results = run_pipeline(body, settings.max_wait_seconds if body.wait is None else body.wait)
    return jsonify({"steps": results, "outputs": results[-1]["outputs"]}), 200
