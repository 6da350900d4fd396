"""Thin Celery tasks for the Haystack document store. They run on the gpu queue: indexing embeds with
MiniLM and answering also generates with SmolLM2, both loaded in the gpu worker."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import DocumentIndexMessage, QuestionMessage
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.jobs.outcomes import publish_outcome
from cortex_tasks.core.jobs.running import refuse_message, run_job, shown_outcome
from cortex_tasks.core.queues import GPU
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.core.usage.worker_time import ModelClock
from cortex_tasks.runtime.documents import service

RETRIES: dict[str, Any] = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": True, "max_retries": 3,
                           "ignore_result": True}


# The kwargs of each task are its message (core.contracts.job_messages): read through the contract.
# 50 documents of 50,000 characters are about 20,000 passages to embed: minutes on a small CPU.
@app.task(name=task_names.DOCUMENTS_INDEX, soft_time_limit=600, time_limit=660, **RETRIES)
def index_documents(**kwargs: Any) -> dict[str, Any]:
    try:
        message = read_message(DocumentIndexMessage, kwargs)
    except MessageRefused as exc:
        return refuse_message(kwargs, exc)
    outcome = run_job(message.job_id, lambda: service.index_documents(message.collection, message.documents,
                                                                      message.indexed_by),
                      clock=ModelClock("documents.index", GPU))
    publish_outcome(message.reply_to, message.job_id, outcome)
    return shown_outcome(outcome)


@app.task(name=task_names.DOCUMENTS_ANSWER, soft_time_limit=120, time_limit=180, **RETRIES)
def answer_question(**kwargs: Any) -> dict[str, Any]:
    try:
        message = read_message(QuestionMessage, kwargs)
    except MessageRefused as exc:
        return refuse_message(kwargs, exc)
    outcome = run_job(message.job_id, lambda: service.answer_question(
        message.question, message.top_k, message.collection, message.filters, message.generate,
        message.max_tokens))
    publish_outcome(message.reply_to, message.job_id, outcome)
    return shown_outcome(outcome)
