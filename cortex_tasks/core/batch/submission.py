"""Creating a batch job (gateway side, torch-free): the job row and all its chunk rows in one transaction,
then the first chunks enqueued.

Idempotency (the `Idempotency-Key` header): the jobs table has a unique (owner, idempotency_key). The INSERT ... ON CONFLICT DO
NOTHING makes concurrent duplicate submissions safe: the second one waits on the first one's index entry,
inserts nothing, and reads the job the first one created. Only the submission that created the job
enqueues its chunks, so duplicates never run a batch twice.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Text, bindparam, cast, func, insert, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cortex_tasks import app as celery_app
from cortex_tasks.core.batch.config import batch_config, batch_queue
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import BatchChunkMessage, BatchFinishMessage
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.jobs.store import QUEUED, IdempotencyConflict
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.sealing import ENCRYPT, chunk_inputs_place, protect, storage_mode
from cortex_tasks.core.storage.tables import BatchChunk, Job
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.core.validation.items import check_finite

CHUNK_TASK = task_names.BATCH_RUN_CHUNK
FINISH_TASK = task_names.BATCH_FINISH


@dataclass(frozen=True)
class BatchRequest:
    owner: str
    task: str
    model: str
    inputs: list[Any]
    params: dict[str, Any]
    priority: int
    idempotency_key: str | None = None
    batchable: bool = True  # False: the model needs all inputs together (one chunk)
    # Inputs, params and results sealed at rest (core/storage/sealing.py); refused with no key to do it.
    sensitive: bool = False


def refuse_unsealable(sensitive: bool) -> None:
    """A batch's inputs wait in PostgreSQL for their chunk and its results for the client: a sensitive one
    can only be stored sealed, so without a data key (or with CORTEX_SENSITIVE_STORAGE=discard) it is
    refused rather than kept in clear."""
    if sensitive and storage_mode() != ENCRYPT:
        raise CortexError("sensitive_storage_unavailable",
                          "Sensitive batch jobs (pii_detect, pii_mask, or \"sensitive\": true) are stored sealed, and "
                          "no data key is configured (CORTEX_DATA_KEYS) or CORTEX_SENSITIVE_STORAGE is discard; "
                          "send the inputs to /predict instead.", status=503)


@dataclass(frozen=True)
class SubmittedBatch:
    job_id: str
    created: bool
    chunks: int


def check_batch_inputs(inputs: list[Any]) -> None:
    """At most `max_batch_size` inputs. Items are otherwise checked in the worker, where a bad one fails
    alone; a non-finite number cannot even be stored with the batch, so that item rule refuses the whole
    request, with the same invalid_input as a worker would report."""
    limit = batch_config().max_batch_size
    if len(inputs) > limit:
        raise CortexError("too_many_inputs", f"A batch holds at most {limit} inputs, not {len(inputs)}; "
                          "split it into several batches.", {"max": limit, "given": len(inputs)})
    for index, item in enumerate(inputs):
        check_finite(item, f"inputs[{index}]", {"index": index})


def request_hash(task: str, model: str | None, inputs: list[Any], params: dict[str, Any], priority: str) -> str:
    """What "the same body" means for an idempotency key: the request's content, canonically encoded."""
    canonical = json.dumps({"task": task, "model": model, "inputs": inputs, "params": params,
                            "priority": priority}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def chunk_bounds(total: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, total)) for start in range(0, total, chunk_size)]


def create_batch(request: BatchRequest, hash_of_request: str | None) -> SubmittedBatch:
    config = batch_config()
    size = config.chunk_size if request.batchable else max(1, len(request.inputs))
    bounds = chunk_bounds(len(request.inputs), size)
    queue = batch_queue()
    job_id = str(uuid.uuid4())
    tenant = current_tenant()  # a Core insert: the storage layer's stamping covers ORM rows only
    # The database's clock, as the stale-job sweep compares it, not this host's (which may be minutes off).
    deadline = func.now() + timedelta(seconds=config.deadline_seconds)
    refuse_unsealable(request.sensitive)
    # queue, chunk_size and chunks stay readable: the stale-chunk sweep and progress views read them.
    job_params = {"params": protect(request.params, f"jobs/{job_id}/params/params") if request.sensitive
                  else request.params, "queue": queue, "chunk_size": size, "chunks": len(bounds),
                  "batchable": request.batchable, "sensitive": request.sensitive}
    with session_scope() as session:
        inserted = session.execute(
            pg_insert(Job).values(
                id=job_id, owner=request.owner, kind="batch", task=request.task, model=request.model,
                status=QUEUED, priority=request.priority, progress_done=0, progress_total=len(request.inputs),
                attempts=0, idempotency_key=request.idempotency_key, request_hash=hash_of_request,
                params=job_params, deadline_at=deadline, tenant=tenant)
            .on_conflict_do_nothing(index_elements=[Job.owner, Job.idempotency_key])
            .returning(Job.id)).scalar()
        if inserted is None:
            existing = session.execute(
                select(Job.id, Job.request_hash, Job.params)
                .where(Job.owner == request.owner, Job.idempotency_key == request.idempotency_key)).one()
            if existing.request_hash != hash_of_request:
                raise IdempotencyConflict(request.idempotency_key)
            return SubmittedBatch(existing.id, False, int((existing.params or {}).get("chunks", 0)))
        first_wave = config.parallel_workers
        now = datetime.now(UTC)
        # One executemany on the connection, as before: the inputs are serialized here (non-ASCII kept as
        # is, not escaped) and cast by the database, so the ORM's bulk path and its serializer stay out.
        chunk_insert = insert(BatchChunk).values(
            job_id=bindparam("job_id"), chunk_index=bindparam("chunk_index"), start_index=bindparam("start"),
            stop_index=bindparam("stop"), inputs=cast(bindparam("inputs", type_=Text), JSONB),
            status=bindparam("status"), queued_at=bindparam("queued_at"))
        session.connection().execute(chunk_insert, [{"job_id": job_id, "chunk_index": index, "start": start, "stop": stop,
             "inputs": json.dumps(protect(request.inputs[start:stop], chunk_inputs_place(job_id, index))
                                  if request.sensitive else request.inputs[start:stop], ensure_ascii=False),
             "status": "queued" if index < first_wave else "pending",
             "queued_at": now if index < first_wave else None}
            for index, (start, stop) in enumerate(bounds)])
    send_chunks(job_id, list(range(min(first_wave, len(bounds)))), queue, request.priority, tenant)
    return SubmittedBatch(job_id, True, len(bounds))


def send_chunks(job_id: str, chunk_indexes: list[int], queue: str, priority: int, tenant: str) -> None:
    """Enqueue chunk tasks (run in the job's tenant). A lost send is not lost work: the chunk row stays
    `queued` and the stale-job sweep enqueues it again."""
    for index in chunk_indexes:
        message = BatchChunkMessage(job_id=job_id, chunk_index=index, tenant=tenant)
        celery_app.send_task(CHUNK_TASK, kwargs=message.to_kwargs(), queue=queue, priority=priority)


def send_finish(job_id: str, queue: str, priority: int, tenant: str) -> None:
    celery_app.send_task(FINISH_TASK, kwargs=BatchFinishMessage(job_id=job_id, tenant=tenant).to_kwargs(),
                         queue=queue, priority=priority)
