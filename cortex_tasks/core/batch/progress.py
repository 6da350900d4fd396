"""Where a batch job stands, read from its chunk rows: items done and failed, chunk states, the time left,
the finished chunks' result files, and the items that failed with their inputs."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select

from cortex_tasks.core.batch.results import ChunkRef
from cortex_tasks.core.jobs.store import FINISHED_STATES
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.sealing import chunk_inputs_place, reveal
from cortex_tasks.core.storage.tables import BatchChunk, Job

CHUNK_STATES = ("pending", "queued", "running", "succeeded")


def chunk_rows(job_id: str) -> list[Row[Any]]:
    """Each chunk's bounds, state, counts and result file, in chunk order (not its inputs: they are large)."""
    with session_scope() as session:
        return list(session.execute(
            select(BatchChunk.chunk_index, BatchChunk.start_index, BatchChunk.stop_index, BatchChunk.status,
                   BatchChunk.succeeded_count, BatchChunk.failed_count, BatchChunk.result_ref)
            .where(BatchChunk.job_id == job_id).order_by(BatchChunk.chunk_index)).all())


def database_now() -> datetime:
    """The database's clock, which wrote started_at: by this host's (minutes off, perhaps) the estimate
    came out negative."""
    with session_scope() as session:
        return session.scalar(select(func.now()))


def progress_report(job: Job) -> dict[str, Any]:
    """Items done and failed so far (counted by finished chunks), chunk states, and while the job runs an
    estimate of the time left at the rate so far."""
    chunks, now = chunk_rows(job.id), database_now()
    done = sum(chunk.succeeded_count for chunk in chunks if chunk.status == "succeeded")
    failed = sum(chunk.failed_count for chunk in chunks if chunk.status == "succeeded")
    states = {state: sum(chunk.status == state for chunk in chunks) for state in CHUNK_STATES}
    report: dict[str, Any] = {
        "job_id": job.id, "status": job.status, "done": done, "failed": failed, "total": job.progress_total,
        "chunks": {"total": len(chunks), "finished": states.pop("succeeded"), **states},
        "created_at": job.created_at.isoformat(), "started_at": job.started_at and job.started_at.isoformat(),
        "finished_at": job.finished_at and job.finished_at.isoformat(),
    }
    processed = done + failed
    if job.status not in FINISHED_STATES and job.started_at and processed:
        elapsed = (now - job.started_at).total_seconds()  # both by the database's clock
        report["eta_seconds"] = round(elapsed / processed * (job.progress_total - processed), 1)
        report["items_per_second"] = round(processed / elapsed, 2) if elapsed > 0 else None
    if job.error:
        report["error"] = job.error
    return report


def result_chunks(job_id: str) -> list[ChunkRef]:
    """Every chunk with its result file; an unfinished chunk has none yet."""
    return [ChunkRef(chunk.chunk_index, chunk.start_index, chunk.stop_index,
                     chunk.result_ref if chunk.status == "succeeded" else None) for chunk in chunk_rows(job_id)]


def failed_items(job_id: str) -> list[dict[str, Any]]:
    """The items of finished chunks that failed, in input order: index, the input itself, and the error."""
    with session_scope() as session:
        rows = session.execute(
            select(BatchChunk.chunk_index, BatchChunk.start_index, BatchChunk.inputs, BatchChunk.errors)
            .where(BatchChunk.job_id == job_id, BatchChunk.status == "succeeded", BatchChunk.failed_count > 0)
            .order_by(BatchChunk.chunk_index)).all()
    items = []
    for row in rows:
        inputs = reveal(row.inputs, chunk_inputs_place(job_id, row.chunk_index))  # sealed for sensitive jobs
        items.extend({"index": entry["index"], "input": inputs[entry["index"] - row.start_index],
                      "error": entry["error"]} for entry in row.errors or [])
    return items
