"""POST /api/v1/predict: validate, authorize, enqueue on the task's queue, answer within the wait budget."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, url_for

from cortex_tasks.auth.roles import PREDICT
from cortex_tasks.catalogue import QUEUE_TASK_NAMES, UnknownName, model_entry, task_entry
from cortex_tasks.jobs.store import NewJob
from cortex_tasks.queues import priority_of
from cortex_tasks.settings import get_settings
from cortex_web.auth import current_principal, require
from cortex_web.dispatch import submit_and_wait
from cortex_web.errors import ApiError
from cortex_web.metrics import JOB_OUTCOMES
from cortex_web.request_body import parse_body
from cortex_web.schemas import PredictRequest, check_text

bp = Blueprint("predict", __name__, url_prefix="/api/v1")


def resolve(task_name: str, model_ref: str | None):
    try:
        task = task_entry(task_name)
        model = model_entry(task, model_ref.split("@", 1)[0] if model_ref else None)
    except UnknownName as exc:
        raise ApiError(404, f"unknown_{exc.kind}", f"Unknown {exc.kind} {exc.name!r}.",
                       {"valid": exc.valid}) from None
    return task, model


def validate_inputs(inputs: list[Any]) -> None:
    for index, item in enumerate(inputs):
        if not isinstance(item, str):
            raise ApiError(422, "invalid_request", f"inputs[{index}] must be a string")
        try:
            check_text(index, item)
        except ValueError as exc:
            raise ApiError(422, "invalid_input", str(exc), {"index": index}) from None


@bp.post("/predict")
@require(PREDICT)
def predict() -> tuple[Response, int]:
    settings = get_settings()
    body = parse_body(PredictRequest, settings.max_json_depth)
    task, model = resolve(body.task, body.model)
    validate_inputs(body.inputs)
    wait = settings.default_wait_seconds if body.wait is None else body.wait
    submitted = submit_and_wait(
        NewJob(owner=current_principal().key_id, kind="predict", task=task.name, model=model.name,
               priority=priority_of(body.priority), total=len(body.inputs)),
        QUEUE_TASK_NAMES[task.queue], task.queue,
        {"task": task.name, "model": model.name, "inputs": body.inputs, "params": body.params},
        wait,
    )
    outcome = submitted.outcome
    if outcome is None:
        return jsonify({"job_id": submitted.job_id, "status": "queued",
                        "status_url": url_for("jobs.show_job", job_id=submitted.job_id)}), 202
    JOB_OUTCOMES.labels(task.name, outcome["status"]).inc()
    if outcome["status"] != "succeeded":
        error = outcome.get("error") or {"code": "job_failed", "message": "the job failed"}
        # A failure inside the worker is not the client's fault (502); anything else it reports is (422).
        raise ApiError(502 if error.get("code") == "job_failed" else 422, error["code"], error["message"],
                       {"job_id": submitted.job_id, **error.get("details", {})})
    return jsonify({"job_id": submitted.job_id, "cached": False, **outcome["result"]}), 200
