"""Putting stalled batches back on their feet (called by the stale-job sweep).

Chunk messages are at-least-once already (acks_late, redelivered when a worker dies); this covers what
redelivery cannot: a message lost with Redis, a send that failed after its chunk was marked queued, a
finish message lost after the last chunk. Re-enqueueing is safe because a chunk is claimed and counted
under guards: a duplicate message for a finished chunk is skipped.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import aliased

from cortex_tasks.core.batch.config import batch_config
from cortex_tasks.core.batch.submission import send_chunks, send_finish
from cortex_tasks.core.jobs.store import QUEUED, RUNNING, SUCCEEDED
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import BatchChunk, Job
from cortex_tasks.core.tenancy import all_tenants


def requeue_stalled_batches() -> dict[str, int]:
    stale = timedelta(seconds=batch_config().stale_chunk_seconds)
    open_job = Job.status.in_((QUEUED, RUNNING))
    in_flight = BatchChunk.status.in_((QUEUED, RUNNING))
    queue = Job.params["queue"].astext.label("queue")
    # The sweep looks after every tenant's batches; each message it sends again names its job's tenant.
    with all_tenants(), session_scope() as session:
        # Queued or running without news for longer than a chunk may run: its message or worker is gone.
        chunks = session.execute(
            update(BatchChunk)
            .where(Job.id == BatchChunk.job_id, open_job, in_flight, BatchChunk.updated_at < func.now() - stale)
            .values(status=QUEUED, queued_at=func.now(), updated_at=func.now())
            .returning(BatchChunk.job_id, BatchChunk.chunk_index, queue, Job.priority, Job.tenant)
            .execution_options(synchronize_session=False)
        ).all()
        # Pending chunks with nothing of theirs in flight: the follow-up send was lost.
        other = aliased(BatchChunk)
        idle = session.execute(
            select(BatchChunk.job_id, func.min(BatchChunk.chunk_index).label("chunk_index"), queue, Job.priority,
                   Job.tenant)
            .join(Job, Job.id == BatchChunk.job_id)
            .where(open_job, BatchChunk.status == "pending",
                   ~select(1).where(other.job_id == BatchChunk.job_id, other.status.in_((QUEUED, RUNNING)))
                   .exists(),
                   Job.created_at < func.now() - timedelta(seconds=60))
            .group_by(BatchChunk.job_id, Job.params, Job.priority, Job.tenant)
        ).all()
        for row in idle:
            session.execute(
                update(BatchChunk)
                .where(BatchChunk.job_id == row.job_id, BatchChunk.chunk_index == row.chunk_index,
                       BatchChunk.status == "pending")
                .values(status=QUEUED, queued_at=func.now(), updated_at=func.now())
                .execution_options(synchronize_session=False))
        # Every chunk done but the job still open: the finish message was lost.
        chunk = aliased(BatchChunk)
        of_job = chunk.job_id == Job.id
        unfinished = session.execute(
            select(Job.id, queue, Job.priority, Job.tenant)
            .where(Job.kind == "batch", open_job,
                   select(1).where(of_job).exists(),
                   ~select(1).where(of_job, chunk.status != SUCCEEDED).exists(),
                   select(func.max(chunk.finished_at)).where(of_job).scalar_subquery()
                   < func.now() - timedelta(seconds=60))
        ).all()
    for row in [*chunks, *idle]:
        send_chunks(row.job_id, [row.chunk_index], row.queue or "batch", row.priority, row.tenant)
    for row in unfinished:
        send_finish(row.id, row.queue or "batch", row.priority, row.tenant)
    return {"chunks_requeued": len(chunks) + len(idle), "batches_finished": len(unfinished)}
