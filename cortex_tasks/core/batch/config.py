"""`batch_config` from the architecture document, overridable from the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from cortex_tasks.core.settings import env_int


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 1000
    chunk_size: int = 100
    # Chunks of one batch in flight at once: a big batch cannot take every worker thread, and its
    # chunks finish roughly in input order, so the first results are ready early.
    parallel_workers: int = 4
    retry_count: int = 3
    # Pagination of /batch/results (architecture document: response_config.pagination).
    default_page_size: int = 50
    max_page_size: int = 200
    # A batch job's deadline; past it the stale-job sweep fails what is still unfinished.
    deadline_seconds: int = 24 * 3600
    # A chunk queued or running this long without news is re-enqueued by the sweep (its message or its
    # worker was lost). Longer than a chunk's hard time limit, so a slow chunk is never run twice at once.
    stale_chunk_seconds: int = 900
    # Result objects are deleted this long after the batch finished (the job row says so).
    result_retention_days: int = 7


@lru_cache(maxsize=1)
def batch_config() -> BatchConfig:
    return BatchConfig(
        max_batch_size=env_int("CORTEX_BATCH_MAX_SIZE", 1000),
        chunk_size=env_int("CORTEX_BATCH_CHUNK_SIZE", 100),
        parallel_workers=env_int("CORTEX_BATCH_PARALLEL_WORKERS", 4),
        retry_count=env_int("CORTEX_BATCH_RETRY_COUNT", 3),
        stale_chunk_seconds=env_int("CORTEX_BATCH_STALE_CHUNK_SECONDS", 900),
        result_retention_days=env_int("CORTEX_BATCH_RESULT_RETENTION_DAYS", 7),
    )


def batch_queue() -> str:
    """The queue chunk tasks go to. Read per submission (not at import) so that a deployment, or a test,
    can give batches a queue of their own; the queue is recorded with the job, so every follow-up chunk
    goes where the first ones went."""
    return os.environ.get("CORTEX_BATCH_QUEUE") or "batch"
