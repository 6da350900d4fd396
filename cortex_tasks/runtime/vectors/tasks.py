"""Thin Celery tasks for vector collections. They run on the gpu queue because texts must be embedded
by a worker that holds the embedding model (the gateway never imports torch)."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import (
    VectorIndexMessage,
    VectorSearchMessage,
    VectorUpsertMessage,
)
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.jobs.outcomes import publish_outcome
from cortex_tasks.core.jobs.running import JobInputError, refuse_message, run_job, shown_outcome
from cortex_tasks.core.queues import GPU
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.core.storage.vector_store import VectorStoreError
from cortex_tasks.core.usage.worker_time import ModelClock
from cortex_tasks.core.vectors.service import vector_store
from cortex_tasks.runtime.vectors import service

LIMITS: dict[str, Any] = {"soft_time_limit": 120, "time_limit": 180, "autoretry_for": TRANSIENT_ERRORS,
                          "retry_backoff": True, "max_retries": 3, "ignore_result": True}


# The kwargs of each task are its message (core.contracts.job_messages): read through the contract.
@app.task(name=task_names.VECTORS_UPSERT_ITEMS, **LIMITS)
def upsert_items(**kwargs: Any) -> dict[str, Any]:
    try:
        message = read_message(VectorUpsertMessage, kwargs)
    except MessageRefused as exc:
        return refuse_message(kwargs, exc)
    outcome = run_job(message.job_id,
                      lambda: service.upsert_items(message.collection, message.items, message.created_by),
                      clock=ModelClock("vectors.upsert", GPU))
    publish_outcome(message.reply_to, message.job_id, outcome)
    return shown_outcome(outcome)


@app.task(name=task_names.VECTORS_SEARCH_TEXT, **LIMITS)
def search_text(**kwargs: Any) -> dict[str, Any]:
    try:
        message = read_message(VectorSearchMessage, kwargs)
    except MessageRefused as exc:
        return refuse_message(kwargs, exc)
    outcome = run_job(message.job_id,
                      lambda: service.search_text(message.collection, message.text, message.k, message.filter,
                                                         message.image))
    publish_outcome(message.reply_to, message.job_id, outcome)
    return shown_outcome(outcome)


def _build_index(collection: str) -> dict[str, Any]:
    try:
        seconds = vector_store().build_index(collection)
        return {"collection": collection, "index_build_seconds": round(seconds, 3),
                **{key: value for key, value in vector_store().describe(collection).items()
                   if key in ("index", "count", "index_bytes")}}
    except VectorStoreError as exc:
        raise JobInputError(exc.code, exc.message, {**exc.details, "status": exc.status}) from None


# An index build over a large collection takes minutes: it runs on the maintenance queue, not the gpu one.
@app.task(name=task_names.VECTORS_BUILD_INDEX, soft_time_limit=3300, time_limit=3600,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3, ignore_result=True)
def build_index(**kwargs: Any) -> dict[str, Any]:
    try:
        message = read_message(VectorIndexMessage, kwargs)
    except MessageRefused as exc:
        return refuse_message(kwargs, exc)
    outcome = run_job(message.job_id, lambda: _build_index(message.collection))
    publish_outcome(message.reply_to, message.job_id, outcome)
    return shown_outcome(outcome)
