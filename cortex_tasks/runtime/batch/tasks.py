"""Thin Celery tasks for batch jobs (routed to the `batch` queue by `cortex.batch.*`)."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.batch.config import batch_config
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.runtime.batch import chunks

# A chunk is 100 items: seconds for embeddings, minutes for generation. The stale-chunk sweep waits
# longer than the hard limit before it re-enqueues a chunk, so a slow chunk is never run twice at once.
CHUNK_LIMITS: dict[str, Any] = {"soft_time_limit": 1200, "time_limit": 1260, "ignore_result": True}


@app.task(name=task_names.BATCH_RUN_CHUNK, bind=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True,
          max_retries=5, **CHUNK_LIMITS)
def run_chunk(self, *, job_id: str, chunk_index: int) -> dict[str, Any]:
    try:
        return chunks.run_chunk(job_id, chunk_index, retries_done=self.request.retries)
    except chunks.ChunkModelFailure as exc:
        # Whole-chunk retries (batch_config.retry_count) with backoff; after the last one the chunk's
        # items run one by one and failures are recorded per item.
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30),
                         max_retries=batch_config().retry_count) from None


@app.task(name=task_names.BATCH_FINISH, soft_time_limit=300, time_limit=360, ignore_result=True,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=5)
def finish_batch(*, job_id: str) -> dict[str, Any]:
    return chunks.finish_batch(job_id)
