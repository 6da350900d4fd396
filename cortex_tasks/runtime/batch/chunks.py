"""Running one chunk of a batch in a worker: claim it, run the same inference service as /predict over
its items, store its results, and count it done, all guarded so that a redelivered or duplicated chunk
message is harmless.

The chunk's items go through the model's dynamic batcher (inference/batcher.py), the one /predict's items
use, so concurrent chunks and predictions of one model and params share its calls and the worker's cores.
A chunk whose model call fails is retried whole (`retry_count` times, with backoff); after that, and at
once for errors that retrying cannot fix (a bad item, bad params), its items run one by one (the batcher
does that for any failed call), so a bad item fails alone and every other item still gets its answer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session, aliased

from cortex_tasks.core.batch import results
from cortex_tasks.core.batch.config import batch_config
from cortex_tasks.core.batch.submission import send_chunks, send_finish
from cortex_tasks.core.catalogue import TASKS, find_model
from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.jobs import store
from cortex_tasks.core.openai.config import is_openai_model
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS, dependency_error
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.sealing import chunk_inputs_place, reveal
from cortex_tasks.core.storage.tables import BatchChunk, Job
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.core.usage.worker_time import worker_time
from cortex_tasks.core.validation.items import check_text, check_vector
from cortex_tasks.runtime.inference import runner
from cortex_tasks.runtime.inference.batcher import ItemFailure

log = logging.getLogger(__name__)
PENDING = "pending"  # a chunk waiting for a free place among the batch's parallel chunks

# How many chunk items one model call may hold (the batcher's call_size). Chunks waiting for one model are
# run a few hundred texts at once, which the model sorts by length as it would the whole dataset: far less
# padding than 100 texts (one chunk) at a time. /predict's items keep their model's max_batch_size.
CHUNK_CALL_SIZE = 300


class ChunkModelFailure(Exception):
    """The model failed on the whole chunk for a reason a retry may fix."""


@dataclass(frozen=True)
class ClaimedChunk:
    job_id: str
    chunk_index: int
    start_index: int
    inputs: list[Any]
    attempts: int
    task: str
    model: str
    params: dict[str, Any]
    queue: str
    priority: int
    chunk_size: int
    batchable: bool = True
    sensitive: bool = False  # its inputs were sealed; its results are too


@dataclass
class ChunkResult:
    outputs: list[Any]
    errors: dict[int, dict[str, Any]] = field(default_factory=dict)  # batch position -> error
    # The chunk's model time for the usage ledger: its items' shares of the calls that computed them.
    items_computed: int = 0
    worker_seconds: float = 0.0


def _no_wal_wait(session: Session) -> None:
    """SET LOCAL synchronous_commit TO off, as set_config(..., is_local => true): for this transaction only."""
    session.execute(select(func.set_config("synchronous_commit", "off", True)))


def _chunk(job_id: str, chunk_index: int) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return BatchChunk.job_id == job_id, BatchChunk.chunk_index == chunk_index


def claim(job_id: str, chunk_index: int) -> ClaimedChunk | None:
    """Mark the chunk running and count the attempt; None if the chunk or its job is already finished."""
    with session_scope() as session:
        # Chunk bookkeeping is recoverable (a chunk whose record a crash loses runs again), so it need not
        # wait for the WAL flush: three fewer fsyncs per chunk.
        _no_wal_wait(session)
        job = session.execute(select(Job.status, Job.task, Job.model, Job.params, Job.priority)
                              .where(Job.id == job_id, Job.kind == "batch")).one_or_none()
        if job is None or job.status not in (store.QUEUED, store.RUNNING):
            return None
        row = session.execute(
            update(BatchChunk)
            .where(*_chunk(job_id, chunk_index), BatchChunk.status.in_((PENDING, store.QUEUED, store.RUNNING)))
            .values(status=store.RUNNING, attempts=BatchChunk.attempts + 1, started_at=func.now(),
                    updated_at=func.now())
            .returning(BatchChunk.attempts, BatchChunk.start_index, BatchChunk.inputs)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if row is None:
            return None
        session.execute(update(Job).where(Job.id == job_id, Job.status == store.QUEUED)
                        .values(status=store.RUNNING, started_at=func.coalesce(Job.started_at, func.now()))
                        .execution_options(synchronize_session=False))
    params = job.params or {}
    return ClaimedChunk(job_id, chunk_index, row.start_index,
                        reveal(row.inputs, chunk_inputs_place(job_id, chunk_index)), row.attempts, job.task,
                        job.model, reveal(params.get("params"), f"jobs/{job_id}/params/params") or {},
                        params.get("queue") or "batch", job.priority,
                        int(params.get("chunk_size") or batch_config().chunk_size),
                        batchable=bool(params.get("batchable", True)), sensitive=bool(params.get("sensitive")))


def release(job_id: str, chunk_index: int) -> None:
    """Back to queued before a retry, so progress views do not show it running while it waits."""
    with session_scope() as session:
        session.execute(update(BatchChunk).where(*_chunk(job_id, chunk_index), BatchChunk.status == store.RUNNING)
                        .values(status=store.QUEUED, queued_at=func.now(), updated_at=func.now())
                        .execution_options(synchronize_session=False))


def item_problem(task: str, item: Any) -> dict[str, Any] | None:
    """The same checks /predict makes on each input, as a per-item error instead of a 422."""
    kind = getattr(TASKS.get(task), "input_kind", "text")
    if kind not in ("text", "text_or_vector"):
        return None  # structured inputs (series, rows) are checked by their model
    try:  # the shared item rules (core/validation/items.py), as /predict applies them
        if isinstance(item, str):
            check_text(item, "the text")
            return None
        if kind == "text_or_vector" and isinstance(item, list):
            check_vector(item, "the vector")
            return None
    except ItemError as exc:
        return {"code": exc.code, "message": exc.message}
    expected = "a string or a list of numbers" if kind == "text_or_vector" else "a string"
    return {"code": "invalid_input", "message": f"the input must be {expected}, not {type(item).__name__}"}


def _answers(chunk: ClaimedChunk, values: list[Any], per_job: bool) -> tuple[list[Any], float]:
    """One output (or ItemFailure) per value, from the model's batcher in this process: the chunk's items
    share model calls, lanes and cores with /predict's items and other chunks' of the same model and
    params, at the chunk's priority. The batcher runs the items of a failed call one by one. With the
    seconds of model time the values took (their shares of the calls)."""
    batcher = runner.batcher_for(chunk.task, chunk.model, chunk.params)
    if not per_job:
        answers, spent = batcher.submit_measured(values, chunk.priority, call_size=CHUNK_CALL_SIZE)
        return answers, sum(spent)
    # A model that answers per job sees the chunk's values together, as one value (a failure fails them all).
    answers, spent = batcher.submit_measured([values], chunk.priority)
    whole = _per_job_outputs(answers[0], len(values))
    return ([whole] * len(values) if isinstance(whole, ItemFailure) else whole), sum(spent)


def _one_by_one(chunk: ClaimedChunk, values: list[Any]) -> tuple[list[Any], float]:
    """A model that answers per job, given each value alone, so that a bad item fails alone."""
    batcher = runner.batcher_for(chunk.task, chunk.model, chunk.params)
    answers, spent = batcher.submit_measured([[value] for value in values], chunk.priority)
    answers = [_per_job_outputs(answer, 1) for answer in answers]
    return [answer if isinstance(answer, ItemFailure) else answer[0] for answer in answers], sum(spent)


def _per_job_outputs(answer: Any, count: int) -> Any:
    if isinstance(answer, ItemFailure) or (isinstance(answer, list) and len(answer) == count):
        return answer
    size = len(answer) if isinstance(answer, list) else "no list of"
    return ItemFailure("model_error", f"RuntimeError: model returned {size} outputs for {count} inputs")


def infer(chunk: ClaimedChunk, whole_chunk_allowed: bool) -> ChunkResult:
    """Outputs for every item of the chunk (None where it failed) and the failures by batch position.

    Raises ChunkModelFailure when the model failed on any item and `whole_chunk_allowed` (retries left);
    a bad item (ItemError) fails alone at once."""
    outputs: list[Any] = [None] * len(chunk.inputs)
    errors: dict[int, dict[str, Any]] = {}
    runnable: list[int] = []
    for offset, item in enumerate(chunk.inputs):
        problem = item_problem(chunk.task, item)
        if problem is None:
            runnable.append(offset)
        else:
            errors[chunk.start_index + offset] = problem
    if not runnable:
        return ChunkResult(outputs, errors)
    entry = find_model(chunk.model)
    if entry is None:  # removed since the batch was submitted
        message = f"model {chunk.model!r} does not serve task {chunk.task!r}"
        unknown = {"code": "unknown_model", "message": message}
        errors.update({chunk.start_index + offset: unknown for offset in runnable})
        return ChunkResult(outputs, errors)
    values = [chunk.inputs[offset] for offset in runnable]
    per_job = runner.answers_per_job(entry, chunk.params)
    answers, seconds = _answers(chunk, values, per_job)
    failures = [answer for answer in answers if isinstance(answer, ItemFailure)]
    for failure in failures:
        if isinstance(failure.cause, TRANSIENT_ERRORS):
            raise failure.cause  # a lost connection: the task retries the chunk (autoretry_for)
    model_failures = [failure for failure in failures if failure.code == "model_error"]
    if model_failures and whole_chunk_allowed:
        raise ChunkModelFailure(model_failures[0].message)
    if failures and per_job:
        if model_failures:
            log.warning("chunk %s/%d failed after its retries (%s); running its items one by one",
                        chunk.job_id, chunk.chunk_index, model_failures[0].message)
        answers, retried = _one_by_one(chunk, values)
        seconds += retried
    for offset, answer in zip(runnable, answers):
        if isinstance(answer, ItemFailure):
            errors[chunk.start_index + offset] = {"code": answer.code, "message": answer.message}
        else:
            outputs[offset] = answer
    return ChunkResult(outputs, errors, len(values), seconds)


@dataclass(frozen=True)
class Recorded:
    counted: bool  # False: another delivery had already recorded this chunk
    next_chunks: list[int]
    all_finished: bool


def record(chunk: ClaimedChunk, result: ChunkResult, result_ref: str) -> Recorded:
    """Count the chunk done and pick the next chunk to enqueue, in one transaction holding the job row
    lock, so that concurrent chunks of one batch agree on who enqueues what and who finishes the batch."""
    failed = len(result.errors)
    errors = [{"index": index, "error": error} for index, error in sorted(result.errors.items())]
    with session_scope() as session:
        _no_wal_wait(session)
        job_status = session.execute(select(Job.status).where(Job.id == chunk.job_id).with_for_update()).scalar()
        counted = session.execute(
            update(BatchChunk)
            .where(*_chunk(chunk.job_id, chunk.chunk_index), BatchChunk.status != store.SUCCEEDED)
            .values(status=store.SUCCEEDED, succeeded_count=len(chunk.inputs) - failed, failed_count=failed,
                    errors=errors, result_ref=result_ref, finished_at=func.now(), updated_at=func.now())
            .execution_options(synchronize_session=False)
        ).rowcount
        if not counted:
            return Recorded(False, [], False)
        session.execute(update(Job).where(Job.id == chunk.job_id)
                        .values(progress_done=Job.progress_done + len(chunk.inputs))
                        .execution_options(synchronize_session=False))
        if result.worker_seconds > 0 and not is_openai_model(chunk.model):
            # Recorded with the chunk, once (only the delivery that counts it): one ledger row per chunk.
            store.record_worker_time(session, chunk.job_id, worker_time(
                chunk.task, TASKS[chunk.task].queue, result.items_computed, result.worker_seconds))
        next_chunks: list[int] = []
        if job_status in (store.QUEUED, store.RUNNING):
            # An alias, so the subquery reads the job's chunks instead of correlating with the updated row.
            pending = aliased(BatchChunk)
            first_pending = (select(func.min(pending.chunk_index))
                             .where(pending.job_id == chunk.job_id, pending.status == PENDING).scalar_subquery())
            next_chunks = list(session.execute(
                update(BatchChunk)
                .where(BatchChunk.job_id == chunk.job_id, BatchChunk.chunk_index == first_pending)
                .values(status=store.QUEUED, queued_at=func.now(), updated_at=func.now())
                .returning(BatchChunk.chunk_index)
                .execution_options(synchronize_session=False)
            ).scalars())
        unfinished = session.execute(
            select(func.count()).select_from(BatchChunk)
            .where(BatchChunk.job_id == chunk.job_id, BatchChunk.status != store.SUCCEEDED)).scalar()
    return Recorded(True, next_chunks, unfinished == 0)


def give_up(chunk: ClaimedChunk, reason: dict[str, Any]) -> Recorded:
    """Every item of the chunk fails with `reason` (a chunk that keeps killing its worker)."""
    result = ChunkResult([None] * len(chunk.inputs),
                         {chunk.start_index + offset: reason for offset in range(len(chunk.inputs))})
    ref = results.write_chunk(chunk.job_id, chunk.chunk_index,
                              results.chunk_table(chunk.start_index, result.outputs, result.errors), chunk.sensitive)
    return record(chunk, result, ref)


def max_chunk_attempts() -> int:
    """Whole-chunk retries plus the deliveries a dying worker may cost."""
    return batch_config().retry_count + 1 + get_settings().max_deliveries


def run_chunk(job_id: str, chunk_index: int, retries_done: int) -> dict[str, Any]:
    """Returns a small summary; raises ChunkModelFailure when the task should retry the chunk."""
    chunk = claim(job_id, chunk_index)
    if chunk is None:
        return {"job_id": job_id, "chunk": chunk_index, "skipped": True}
    if chunk.attempts > max_chunk_attempts():
        recorded = give_up(chunk, {"code": "redelivery_limit",
                                   "message": f"the chunk was started {chunk.attempts} times without finishing"})
    else:
        try:
            result = infer(chunk, whole_chunk_allowed=retries_done < batch_config().retry_count)
        except ChunkModelFailure:
            release(job_id, chunk_index)
            raise
        table = results.chunk_table(chunk.start_index, result.outputs, result.errors)
        recorded = record(chunk, result, results.write_chunk(job_id, chunk_index, table, chunk.sensitive))
    after_recording(chunk, recorded)
    return {"job_id": job_id, "chunk": chunk_index, "counted": recorded.counted}


def stop_batch(job_id: str, chunk_index: int, exc: BaseException) -> dict[str, Any]:
    """A chunk whose results could not be computed or written through every retry (the object store or
    the database away): the batch is failed with the reason rather than left running for the stale sweep.
    Finished chunks keep their results; no merged result file is written, so nothing half-written is
    ever offered for download."""
    error = {**dependency_error(exc), "details": {"chunk": chunk_index}}
    try:
        release(job_id, chunk_index)
        failed = store.fail_job(job_id, error)
    except TRANSIENT_ERRORS:
        raise exc from None  # the database itself is away: the stale-chunk sweep takes the chunk up later
    log.warning("batch %s stopped at chunk %d: %s", job_id, chunk_index, error["message"])
    return {"job_id": job_id, "chunk": chunk_index, "stopped": failed}


def after_recording(chunk: ClaimedChunk, recorded: Recorded) -> None:
    # This task runs in its job's tenant (the message's): the follow-up messages stay in it.
    tenant = current_tenant()
    if recorded.next_chunks:
        send_chunks(chunk.job_id, recorded.next_chunks, chunk.queue, chunk.priority, tenant)
    if recorded.all_finished:
        send_finish(chunk.job_id, chunk.queue, chunk.priority, tenant)


def finish_batch(job_id: str) -> dict[str, Any]:
    """Merge the chunk results into the job's Parquet file and finish the job. Idempotent: a second run
    rewrites the same file and changes nothing in the job row."""
    with session_scope() as session:
        job = session.execute(select(Job.status, Job.progress_total, Job.params)
                              .where(Job.id == job_id, Job.kind == "batch")).one_or_none()
        chunks = session.execute(
            select(BatchChunk.chunk_index, BatchChunk.status, BatchChunk.result_ref, BatchChunk.succeeded_count,
                   BatchChunk.failed_count, BatchChunk.attempts)
            .where(BatchChunk.job_id == job_id).order_by(BatchChunk.chunk_index)).all()
    if job is None or job.status not in (store.QUEUED, store.RUNNING):
        return {"job_id": job_id, "finished": False, "reason": "not running"}
    if not chunks or any(chunk.status != "succeeded" for chunk in chunks):
        return {"job_id": job_id, "finished": False, "reason": "chunks unfinished"}
    chunk_size = int((job.params or {}).get("chunk_size") or batch_config().chunk_size)
    name, size = results.write_merged(job_id, [chunk.result_ref for chunk in chunks], chunk_size,
                                      bool((job.params or {}).get("sensitive")))
    succeeded = sum(chunk.succeeded_count for chunk in chunks)
    failed = sum(chunk.failed_count for chunk in chunks)
    summary = {"total": job.progress_total, "done": succeeded, "failed": failed, "result_ref": name,
               "format": "parquet", "size_bytes": size, "chunks": len(chunks)}
    # A batch's deliveries are its chunks': it took as many attempts as its most retried chunk (the job
    # row's own counter is never incremented for a batch, so it said 0).
    attempts = max(chunk.attempts for chunk in chunks)
    if succeeded == 0:
        with session_scope() as session:
            session.execute(
                update(Job).where(Job.id == job_id, Job.status.in_((store.QUEUED, store.RUNNING)))
                .values(status=store.FAILED, result=summary, result_ref=name, progress_done=Job.progress_total,
                        finished_at=func.now(), attempts=attempts,
                        error={"code": "all_items_failed", "message": f"All {failed} items failed; see /batch/errors.",
                               "details": {"failed": failed}})
                .execution_options(synchronize_session=False))
    else:
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id).values(attempts=attempts)
                            .execution_options(synchronize_session=False))
        store.finish_job(job_id, summary, result_ref=name)
    return {"job_id": job_id, "finished": True, **summary}
