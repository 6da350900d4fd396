"""Thin Celery tasks for inference, one per queue so that routing follows the hardware a model needs.

A message carries one or more prediction jobs for the same task, model and params (the gateway
coalesces concurrent requests); `jobs` is a list of {"job_id", "inputs", "inline_errors"?}.
"""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.jobs.outcomes import publish_outcomes
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.runtime.inference import streaming
from cortex_tasks.runtime.inference.runner import AfterReply, run_jobs

# Outcomes travel back on the caller's reply channel and live in the job rows, so the result backend
# would only duplicate them.
LIMITS: dict[str, Any] = {"soft_time_limit": 120, "time_limit": 180, "autoretry_for": TRANSIENT_ERRORS,
                          "retry_backoff": True, "max_retries": 3, "ignore_result": True}


def _run(request: Any, task: str, model: str, jobs: list[dict[str, Any]], params: dict[str, Any] | None,
         priority: int, reply_to: str | None, message_id: str | None) -> dict[str, Any]:
    # Redis restores a dead worker's unacknowledged messages marked redelivered; a retry is a new message.
    first_delivery = not request.retries and not (request.delivery_info or {}).get("redelivered")
    after_reply: AfterReply = []
    outcomes = run_jobs(task, model, params or {}, jobs, priority, first_delivery, after_reply)
    publish_outcomes(reply_to, message_id, outcomes)
    for work in after_reply:  # the shared cache is filled once the callers have their answers
        work()
    return {"jobs": len(jobs), "succeeded": sum(o["status"] == "succeeded" for o in outcomes.values())}


@app.task(name="cortex.inference.run_gpu_jobs", bind=True, **LIMITS)
def run_gpu_jobs(self: Any, *, task: str, model: str, jobs: list[dict[str, Any]],
                 params: dict[str, Any] | None = None, priority: int = 4, reply_to: str | None = None,
                 message_id: str | None = None) -> dict[str, Any]:
    return _run(self.request, task, model, jobs, params, priority, reply_to, message_id)


@app.task(name="cortex.inference.run_nlp_jobs", bind=True, **LIMITS)
def run_nlp_jobs(self: Any, *, task: str, model: str, jobs: list[dict[str, Any]],
                 params: dict[str, Any] | None = None, priority: int = 4, reply_to: str | None = None,
                 message_id: str | None = None) -> dict[str, Any]:
    return _run(self.request, task, model, jobs, params, priority, reply_to, message_id)


@app.task(name="cortex.inference.stream_generation", soft_time_limit=300, time_limit=360,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3, ignore_result=True)
def stream_generation(*, job_id: str, model: str, inputs: list[str],
                      params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": streaming.stream_generation(job_id, model, inputs, params or {})}
