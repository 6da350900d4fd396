"""Putting stalled batches back on their feet (called by the stale-job sweep).

Chunk messages are at-least-once already (acks_late, redelivered when a worker dies); this covers what
redelivery cannot: a message lost with Redis, a send that failed after its chunk was marked queued, a
finish message lost after the last chunk. Re-enqueueing is safe because a chunk is claimed and counted
under guards: a duplicate message for a finished chunk is skipped.
"""
from __future__ import annotations

from sqlalchemy import text

from cortex_tasks.core.batch.config import batch_config
from cortex_tasks.core.batch.submission import send_chunks, send_finish
from cortex_tasks.core.storage.db import session_scope


def requeue_stalled_batches() -> dict[str, int]:
    stale = batch_config().stale_chunk_seconds
    with session_scope() as session:
        # Queued or running without news for longer than a chunk may run: its message or worker is gone.
        chunks = session.execute(text(
            "UPDATE batch_chunks c SET status = 'queued', queued_at = now(), updated_at = now() FROM jobs j "
            "WHERE j.id = c.job_id AND j.status IN ('queued', 'running') AND c.status IN ('queued', 'running') "
            "AND c.updated_at < now() - make_interval(secs => :stale) "
            "RETURNING c.job_id, c.chunk_index, j.params->>'queue' AS queue, j.priority"
        ), {"stale": stale}).all()
        # Pending chunks with nothing of theirs in flight: the follow-up send was lost.
        idle = session.execute(text(
            "SELECT c.job_id, min(c.chunk_index) AS chunk_index, j.params->>'queue' AS queue, j.priority "
            "FROM batch_chunks c JOIN jobs j ON j.id = c.job_id WHERE j.status IN ('queued', 'running') "
            "AND c.status = 'pending' AND NOT EXISTS (SELECT 1 FROM batch_chunks o WHERE o.job_id = c.job_id "
            "AND o.status IN ('queued', 'running')) AND j.created_at < now() - make_interval(secs => :stale) "
            "GROUP BY c.job_id, j.params, j.priority"), {"stale": 60}).all()
        for row in idle:
            session.execute(text("UPDATE batch_chunks SET status = 'queued', queued_at = now(), updated_at = now() "
                                 "WHERE job_id = :job AND chunk_index = :chunk AND status = 'pending'"),
                            {"job": row.job_id, "chunk": row.chunk_index})
        # Every chunk done but the job still open: the finish message was lost.
        unfinished = session.execute(text(
            "SELECT j.id, j.params->>'queue' AS queue, j.priority FROM jobs j WHERE j.kind = 'batch' "
            "AND j.status IN ('queued', 'running') AND EXISTS (SELECT 1 FROM batch_chunks c WHERE c.job_id = j.id) "
            "AND NOT EXISTS (SELECT 1 FROM batch_chunks c WHERE c.job_id = j.id AND c.status <> 'succeeded') "
            "AND (SELECT max(finished_at) FROM batch_chunks c WHERE c.job_id = j.id) < now() - interval '60 seconds'"
        )).all()
    for row in [*chunks, *idle]:
        send_chunks(row.job_id, [row.chunk_index], row.queue or "batch", row.priority)
    for row in unfinished:
        send_finish(row.id, row.queue or "batch", row.priority)
    return {"chunks_requeued": len(chunks) + len(idle), "batches_finished": len(unfinished)}
