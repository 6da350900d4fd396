"""Thin Celery tasks for the Haystack document store. They run on the gpu queue: indexing embeds with
MiniLM and answering also generates with SmolLM2, both loaded in the gpu worker."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.jobs.outcomes import publish_outcome
from cortex_tasks.core.jobs.running import run_job
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.runtime.documents import service

RETRIES: dict[str, Any] = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": True, "max_retries": 3,
                           "ignore_result": True}


# 50 documents of 50,000 characters are about 20,000 passages to embed: minutes on a small CPU.
@app.task(name=task_names.DOCUMENTS_INDEX, soft_time_limit=600, time_limit=660, **RETRIES)
def index_documents(*, job_id: str, collection: str, documents: list[dict[str, Any]],
                    indexed_by: str | None = None, reply_to: str | None = None) -> dict[str, Any]:
    outcome = run_job(job_id, lambda: service.index_documents(collection, documents, indexed_by))
    publish_outcome(reply_to, job_id, outcome)
    return outcome


@app.task(name=task_names.DOCUMENTS_ANSWER, soft_time_limit=120, time_limit=180, **RETRIES)
def answer_question(*, job_id: str, question: str, top_k: int = 5, collection: str = "default",
                    filters: dict[str, Any] | None = None, generate: bool = True, max_tokens: int = 96,
                    reply_to: str | None = None) -> dict[str, Any]:
    outcome = run_job(job_id, lambda: service.answer_question(question, top_k, collection, filters,
                                                              generate, max_tokens))
    publish_outcome(reply_to, job_id, outcome)
    return outcome
