"""Thin Celery tasks for inference, one per queue so that routing follows the hardware a model needs.

A message carries one or more prediction jobs for the same task, model and params (the gateway
coalesces concurrent requests): its contract is core.contracts.messages.PredictionMessage.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import StreamGenerationMessage
from cortex_tasks.core.contracts.messages import (
    JobRecord,
    MessageRefused,
    read_message,
    read_prediction_message,
)
from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.outcomes import publish_outcomes
from cortex_tasks.core.jobs.running import refuse_message
from cortex_tasks.core.observability import tracing
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS, run_kept_while_database_away
from cortex_tasks.core.storage.sealing import SealedValueError
from cortex_tasks.core.tenancy import DEFAULT_TENANT, TENANT_ID, tenant_scope
from cortex_tasks.runtime.inference import streaming
from cortex_tasks.runtime.inference.runner import run_jobs

log = logging.getLogger(__name__)

# Outcomes travel back on the caller's reply channel and live in the job rows, so the result backend
# would only duplicate them.
LIMITS: dict[str, Any] = {"soft_time_limit": 120, "time_limit": 180, "autoretry_for": TRANSIENT_ERRORS,
                          "retry_backoff": True, "max_retries": 3, "ignore_result": True}


def _run_kept(task: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    # PostgreSQL away through every retry: the message is kept, its jobs run once it answers (retry_policy).
    return run_kept_while_database_away(lambda: _run(task.request, kwargs), task)


def _run(request: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        message = read_prediction_message(kwargs)
    except (MessageRefused, SealedValueError) as exc:
        return _refuse(kwargs, exc)
    # Redis restores a dead worker's unacknowledged messages marked redelivered; a retry is a new message.
    first_delivery = not request.retries and not (request.delivery_info or {}).get("redelivered")
    # A span per job, each in the trace its request started (a message may hold several requests' jobs).
    with tracing.running_jobs([(job.job_id, job.trace) for job in message.jobs], task=message.task,
                              model=message.model, tenant=message.tenant):
        reply = run_jobs(message.task, message.model, message.params, message.jobs, message.priority,
                         first_delivery, message.sensitive)
        reply.publish(message.reply_to, message.message_id)
    reply.finish()
    return {"jobs": len(message.jobs),
            "succeeded": sum(o["status"] == "succeeded" for o in reply.outcomes.values())}


def _refuse(kwargs: dict[str, Any], exc: MessageRefused | SealedValueError) -> dict[str, Any]:
    """Fail every job of a message this worker cannot read, with the reason, instead of raising: a retry or
    another worker of the same release would refuse it again. The job ids and records are taken from the
    raw message where they can be (a sender's caller still learns the outcome and its row is written)."""
    log.error("refused a prediction message: %s", exc)
    # The jobs' tenant as the raw message names it (the contract's default where it names none or a bad one).
    tenant = kwargs.get("tenant")
    with tenant_scope(tenant if isinstance(tenant, str) and TENANT_ID.fullmatch(tenant) else DEFAULT_TENANT):
        return _refuse_in_scope(kwargs, exc)


def _refuse_in_scope(kwargs: dict[str, Any], exc: MessageRefused | SealedValueError) -> dict[str, Any]:
    error = {"code": exc.code, "message": str(exc)}
    raw_jobs = kwargs.get("jobs")
    new_rows: dict[str, store.NewJob] = {}
    existing: list[str] = []
    for job in raw_jobs if isinstance(raw_jobs, list) else []:
        job_id = job.get("job_id") if isinstance(job, dict) else None
        if not isinstance(job_id, str):
            continue
        try:  # a record is used only if it is one: it may be what made the message unreadable
            new_rows[job_id] = store.NewJob(**dict(JobRecord.model_validate(job["record"])))
        except (KeyError, ValidationError):  # no usable record: the sender created the row (or nobody did)
            existing.append(job_id)
    recorded = store.record_finished({job_id: (store.FAILED, error) for job_id in new_rows}, new_rows, time.time())
    if existing:
        recorded |= store.finish_jobs({job_id: (store.FAILED, error) for job_id in existing})
    reply_to, message_id = kwargs.get("reply_to"), kwargs.get("message_id")
    publish_outcomes(reply_to if isinstance(reply_to, str) else None,
                     message_id if isinstance(message_id, str) else None,
                     {job_id: {"status": store.FAILED, "error": error} for job_id in [*new_rows, *existing]})
    return {"jobs": len(new_rows) + len(existing), "succeeded": 0, "refused": str(exc), "recorded": len(recorded)}


# The kwargs are the message (messages.PredictionMessage): read through the contract, not as parameters.
@app.task(name=task_names.RUN_GPU_JOBS, bind=True, **LIMITS)
def run_gpu_jobs(self: Any, **message: Any) -> dict[str, Any]:
    return _run_kept(self, message)


@app.task(name=task_names.RUN_NLP_JOBS, bind=True, **LIMITS)
def run_nlp_jobs(self: Any, **message: Any) -> dict[str, Any]:
    return _run_kept(self, message)


@app.task(name=task_names.STREAM_GENERATION, soft_time_limit=300, time_limit=360,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3, ignore_result=True)
def stream_generation(**kwargs: Any) -> dict[str, Any]:
    """The kwargs are the message (core.contracts.job_messages.StreamGenerationMessage). An unreadable one
    fails its job and ends the stream with the error, so the client is not left waiting for tokens."""
    try:
        message = read_message(StreamGenerationMessage, kwargs)
    except MessageRefused as exc:
        outcome = refuse_message(kwargs, exc)
        if outcome["recorded"]:
            streaming.publish_event(kwargs["job_id"], {"type": "error", "error": outcome["error"]})
        return {"status": outcome["status"], "refused": str(exc)}
    # Its job's inputs travel only in the message: kept while PostgreSQL is away, like a prediction's.
    return {"status": run_kept_while_database_away(lambda: streaming.stream_generation(
        message.job_id, message.model, message.inputs, message.params or {}, message.sensitive))}
