"""Thin Celery tasks for inference, one per queue so that routing follows the hardware a model needs."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.inference import service
from cortex_tasks.jobs.outcomes import publish_outcome
from cortex_tasks.jobs.running import run_job
from cortex_tasks.retry_policy import TRANSIENT_ERRORS

# Outcomes travel back on the caller's reply channel and live in the job row, so the result backend
# would only duplicate them.
LIMITS: dict[str, Any] = {"soft_time_limit": 120, "time_limit": 180, "autoretry_for": TRANSIENT_ERRORS,
                          "retry_backoff": True, "max_retries": 3, "ignore_result": True}


@app.task(name="cortex.inference.run_gpu_job", **LIMITS)
def run_gpu_job(*, job_id: str, task: str, model: str, inputs: list[Any],
                params: dict[str, Any] | None = None, reply_to: str | None = None) -> dict[str, Any]:
    outcome = run_job(job_id, lambda: service.predict(task, model, inputs, params or {}))
    publish_outcome(reply_to, job_id, outcome)
    return outcome


@app.task(name="cortex.inference.run_nlp_job", **LIMITS)
def run_nlp_job(*, job_id: str, task: str, model: str, inputs: list[Any],
                params: dict[str, Any] | None = None, reply_to: str | None = None) -> dict[str, Any]:
    outcome = run_job(job_id, lambda: service.predict(task, model, inputs, params or {}))
    publish_outcome(reply_to, job_id, outcome)
    return outcome
