"""Thin Celery tasks for vector collections. They run on the gpu queue because texts must be embedded
by a worker that holds the embedding model (the gateway never imports torch)."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.jobs.outcomes import publish_outcome
from cortex_tasks.core.jobs.running import JobInputError, run_job
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.core.storage.vector_store import VectorStoreError
from cortex_tasks.core.vectors.service import vector_store
from cortex_tasks.runtime.vectors import service

LIMITS: dict[str, Any] = {"soft_time_limit": 120, "time_limit": 180, "autoretry_for": TRANSIENT_ERRORS,
                          "retry_backoff": True, "max_retries": 3, "ignore_result": True}


@app.task(name=task_names.VECTORS_UPSERT_ITEMS, **LIMITS)
def upsert_items(*, job_id: str, collection: str, items: list[dict[str, Any]], created_by: str | None = None,
                 reply_to: str | None = None) -> dict[str, Any]:
    outcome = run_job(job_id, lambda: service.upsert_items(collection, items, created_by))
    publish_outcome(reply_to, job_id, outcome)
    return outcome


@app.task(name=task_names.VECTORS_SEARCH_TEXT, **LIMITS)
def search_text(*, job_id: str, collection: str, text: str, k: int = 10, filter: dict[str, Any] | None = None,
                reply_to: str | None = None) -> dict[str, Any]:
    outcome = run_job(job_id, lambda: service.search_text(collection, text, k, filter))
    publish_outcome(reply_to, job_id, outcome)
    return outcome


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
def build_index(*, job_id: str, collection: str, reply_to: str | None = None) -> dict[str, Any]:
    outcome = run_job(job_id, lambda: _build_index(collection))
    publish_outcome(reply_to, job_id, outcome)
    return outcome
