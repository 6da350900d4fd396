"""Thin Celery tasks for batch jobs (routed to the `batch` queue by `cortex.batch.*`)."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.batch.config import batch_config
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import BatchChunkMessage, BatchFinishMessage
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.jobs.running import refuse_message
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS, retries_exhausted
from cortex_tasks.runtime.batch import chunks

# A chunk is 100 items: seconds for embeddings, minutes for generation. The stale-chunk sweep waits
# longer than the hard limit before it re-enqueues a chunk, so a slow chunk is never run twice at once.
CHUNK_LIMITS: dict[str, Any] = {"soft_time_limit": 1200, "time_limit": 1260, "ignore_result": True}


# The kwargs of each task are its message (core.contracts.job_messages): read through the contract. A
# chunk or finish message that cannot be read fails the whole batch job: its result would be incomplete.
@app.task(name=task_names.BATCH_RUN_CHUNK, bind=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True,
          max_retries=5, **CHUNK_LIMITS)
def run_chunk(self, **kwargs: Any) -> dict[str, Any]:
    try:
        message = read_message(BatchChunkMessage, kwargs)
    except MessageRefused as exc:
        return refuse_message(kwargs, exc)
    try:
        return chunks.run_chunk(message.job_id, message.chunk_index, retries_done=self.request.retries)
    except chunks.ChunkModelFailure as exc:
        # Whole-chunk retries (batch_config.retry_count) with backoff; after the last one the chunk's
        # items run one by one and failures are recorded per item.
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30),
                         max_retries=batch_config().retry_count) from None
    except TRANSIENT_ERRORS as exc:
        if not retries_exhausted():
            raise
        return chunks.stop_batch(message.job_id, message.chunk_index, exc)


@app.task(name=task_names.BATCH_FINISH, soft_time_limit=300, time_limit=360, ignore_result=True,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=5)
def finish_batch(**kwargs: Any) -> dict[str, Any]:
    try:
        message = read_message(BatchFinishMessage, kwargs)
    except MessageRefused as exc:
        return refuse_message(kwargs, exc)
    return chunks.finish_batch(message.job_id)
