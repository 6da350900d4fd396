"""Job records in PostgreSQL: the durable truth about every job (the Celery result backend is transport).

Status moves queued -> running -> succeeded | failed | cancelled; a prediction that finishes quickly is
written once, finished (record_finished). Every transition is one guarded statement (it changes only a
job still queued or running), so a redelivered message can neither run a finished job again nor record
its result twice.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from prometheus_client import Counter
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError

from cortex_tasks.core.storage.db import quick_write_engine, session_scope
from cortex_tasks.core.storage.sealing import SealedValueError, ValueNotKept, protect, reveal
from cortex_tasks.core.storage.tables import Job
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.core.usage.worker_time import WorkerTime, usage_columns, with_ledger_rows

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)

# Counted by the process that records the outcome (a worker, for the jobs it runs), once per recorded job.
JOBS_FINISHED = Counter("cortex_jobs_finished_total",
                        "Jobs recorded as finished, by status and, for failures, stable error code",
                        ["status", "code"])


def _count_finished(outcomes: dict[str, tuple[str, Any]], recorded: set[str]) -> None:
    counts: dict[tuple[str, str], int] = {}
    for job_id in recorded:
        status, payload = outcomes[job_id]
        code = "" if status == SUCCEEDED else str((payload if isinstance(payload, dict) else {}).get("code") or "unknown")
        counts[(status, code)] = counts.get((status, code), 0) + 1
    for (status, code), count in counts.items():
        JOBS_FINISHED.labels(status, code).inc(count)


@dataclass(frozen=True)
class NewJob:
    owner: str
    kind: str
    task: str
    model: str | None = None
    priority: int = 4
    total: int = 0
    params: dict[str, Any] | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    # Past this, the stale-job sweep fails the job (its message was lost), so nothing stays queued forever.
    deadline_seconds: int = 3600
    # Its params and result are sealed or not kept at rest (core/storage/sealing.py).
    sensitive: bool = False
    # The tenant the job belongs to. None: the tenant in scope when the row is written (tenancy.py); a
    # record that leaves the request's thread (the coalescer sends from its own) must name it.
    tenant: str | None = None

    def owning_tenant(self) -> str:
        return self.tenant if self.tenant is not None else current_tenant()


def stored_params(job_id: str, job: NewJob) -> dict[str, Any] | None:
    """The params column of a new job: a sensitive job's params are sealed (or not kept)."""
    return protect(job.params, f"jobs/{job_id}/params") if job.sensitive else job.params


def stored_result(job_id: str, result: Any, sensitive: bool) -> Any:
    return protect(result, f"jobs/{job_id}/result") if sensitive else result


def job_result(job: Job) -> tuple[Any, dict[str, Any] | None]:
    """A job's result for its owner (opened if it was sealed), or None and why it cannot be given: it was
    sensitive and not kept, or it was sealed under a data key that is no longer configured."""
    try:
        return reveal(job.result, f"jobs/{job.id}/result"), None
    except ValueNotKept:
        return None, {"code": ValueNotKept.code,
                      "message": "The result held personal data and was not kept (CORTEX_SENSITIVE_STORAGE="
                                 "discard, or no data key configured): it was given only to a caller "
                                 "waiting for it."}
    except SealedValueError as exc:
        return None, {"code": exc.code, "message": f"The result cannot be read: {exc}."}


class IdempotencyConflict(Exception):
    """The same idempotency key was used before with a different request body."""


def new_job_id() -> str:
    return str(uuid.uuid4())


def create_job(job: NewJob, job_id: str | None = None) -> tuple[Job, bool]:
    """Insert a job; returns (job, created). With an idempotency key an existing job is returned instead."""
    job_id = job_id or new_job_id()
    row = Job(
        id=job_id, owner=job.owner, kind=job.kind, task=job.task, model=job.model,
        status=QUEUED, priority=job.priority, progress_total=job.total, params=stored_params(job_id, job),
        idempotency_key=job.idempotency_key, request_hash=job.request_hash, tenant=job.owning_tenant(),
        # The database's clock, as the stale-job sweep compares it (runtime/maintenance/service.py): a
        # gateway whose clock lagged wrote deadlines the sweep found passed minutes early.
        deadline_at=func.now() + timedelta(seconds=job.deadline_seconds),
    )
    try:
        with session_scope() as session:
            session.add(row)
        return row, True
    except IntegrityError:
        if job.idempotency_key is None:
            raise
    with session_scope() as session:
        existing = session.scalars(
            select(Job).where(Job.owner == job.owner, Job.idempotency_key == job.idempotency_key)
        ).one()
    if existing.request_hash != job.request_hash:
        raise IdempotencyConflict(job.idempotency_key)
    return existing, False


def get_job(job_id: str) -> Job | None:
    """The job, if it belongs to the tenant in scope: another tenant's job is None, exactly like a missing
    one (the storage layer adds the tenant to the statement, core/tenancy.py)."""
    try:
        uuid.UUID(job_id)
    except ValueError:
        return None
    with session_scope() as session:
        return session.get(Job, job_id)


def begin_attempt(job_id: str, max_deliveries: int) -> int | None:
    """Count one delivery of the job's message and mark it running.

    Returns the attempt number, or None when the job must not run: it is already finished (a duplicate
    delivery), or it has been delivered more than `max_deliveries` times (it is then marked failed, so a
    message that keeps killing its worker cannot loop forever).
    """
    # Still raw SQL: every job's delivery runs this, and the same update() construct built per call took
    # ~20x the Python time of text() (about 190 us against 10 us, timeit). Built once at import with bound
    # parameters its cache key is memoized and it costs less than text(): the way to convert this module.
    with session_scope() as session:
        attempt = session.execute(
            text(
                "UPDATE jobs SET attempts = attempts + 1, status = 'running', "
                "started_at = coalesce(started_at, now()) "
                "WHERE id = :id AND status IN ('queued', 'running') RETURNING attempts"
            ),
            {"id": job_id},
        ).scalar()
    if attempt is None:
        return None
    if attempt > max_deliveries:
        fail_job(job_id, {
            "code": "redelivery_limit",
            "message": f"The job was delivered {attempt} times without finishing "
                       f"(its worker died each time); giving up after {max_deliveries}.",
        })
        return None
    return attempt


def finish_job(job_id: str, result: Any = None, result_ref: str | None = None, sensitive: bool = False,
               usage: WorkerTime | Sequence[WorkerTime] | None = None) -> bool:
    """Record success once; returns False if the job was already finished. `usage`: the job's worker
    time (one entry per model that spent it), recorded in the same transaction only if the job was
    (core/usage/worker_time.py)."""
    result = stored_result(job_id, result, sensitive)
    with session_scope() as session:
        changed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_((QUEUED, RUNNING)))
            .values(status=SUCCEEDED, result=result, result_ref=result_ref,
                    progress_done=Job.progress_total, finished_at=func.now())
        ).rowcount
        if changed:
            _record_usage(session, job_id, usage)
    if changed:
        JOBS_FINISHED.labels(SUCCEEDED, "").inc()
    return bool(changed)


def record_worker_time(session: Any, job_id: str, usage: WorkerTime) -> None:
    """One job's worker time, in the caller's transaction, with the tenant, owner and model of its row."""
    session.execute(text(
        "INSERT INTO worker_usage (tenant, job_id, owner, model, task, worker_kind, items, worker_seconds, "
        "cost_usd, created_at) SELECT tenant, id, owner, coalesce(CAST(:model AS text), model, :task), :task, "
        ":kind, :items, :seconds, :cost, now() FROM jobs WHERE id = :id"),
        {"id": job_id, "model": usage.model, "task": usage.task, "kind": usage.worker_kind, "items": usage.items,
         "seconds": usage.seconds, "cost": usage.cost_usd})


def _record_usage(session: Any, job_id: str, usage: WorkerTime | Sequence[WorkerTime] | None) -> None:
    for spent in (usage,) if isinstance(usage, WorkerTime) else usage or ():
        record_worker_time(session, job_id, spent)


def fail_job(job_id: str, error: dict[str, Any], usage: WorkerTime | Sequence[WorkerTime] | None = None) -> bool:
    """Record failure once; `usage` as for finish_job (a failed job's model time was spent all the same)."""
    with session_scope() as session:
        changed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_((QUEUED, RUNNING)))
            .values(status=FAILED, error=error, finished_at=func.now())
        ).rowcount
        if changed:
            _record_usage(session, job_id, usage)
    if changed:
        JOBS_FINISHED.labels(FAILED, str(error.get("code") or "unknown")).inc()
    return bool(changed)


def cancel_job(job_id: str, reason: str) -> bool:
    with session_scope() as session:
        changed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_((QUEUED, RUNNING)))
            .values(status=CANCELLED, error={"code": "cancelled", "message": reason}, finished_at=func.now())
        ).rowcount
    if changed:
        JOBS_FINISHED.labels(CANCELLED, "").inc()
    return bool(changed)


def set_progress(job_id: str, done: int, total: int | None = None) -> None:
    values: dict[str, Any] = {"progress_done": done}
    if total is not None:
        values["progress_total"] = total
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def job_to_api(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {
        "job_id": job.id,
        "kind": job.kind,
        "task": job.task,
        "status": job.status,
        "progress": {"done": job.progress_done, "total": job.progress_total},
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempts": job.attempts,
    }
    if job.model:
        body["model"] = job.model
    if job.status == SUCCEEDED:
        body["result"], unavailable = job_result(job)
        if unavailable is not None:
            body["result_unavailable"] = unavailable
        if job.result_ref:
            body["result_ref"] = job.result_ref
    if job.error:
        body["error"] = job.error
    return body


# --- Bulk forms, for many small jobs travelling in one message (coalesced predictions). ---
#
# A prediction message carries each job's record, and the worker creates the row if the gateway has not
# (record_finished, or begin_attempts for a job that runs long or is redelivered): the gateway then writes
# nothing to the database for a prediction answered within its wait budget. It inserts the row itself
# only before answering 202, so that a status URL always exists.

def job_record(job: NewJob) -> dict[str, Any]:
    """What a message carries for the worker to create the job's row (JSON-safe)."""
    return {"owner": job.owner, "kind": job.kind, "task": job.task, "model": job.model, "priority": job.priority,
            "total": job.total, "params": job.params, "deadline_seconds": job.deadline_seconds,
            "sensitive": job.sensitive, "tenant": job.owning_tenant()}


def _record_columns(jobs: list[tuple[str, NewJob]]) -> dict[str, Any]:
    return {
        "ids": [job_id for job_id, _ in jobs],
        "owners": [job.owner for _, job in jobs],
        "kinds": [job.kind for _, job in jobs],
        "tasks": [job.task for _, job in jobs],
        "models": [job.model for _, job in jobs],
        "priorities": [job.priority for _, job in jobs],
        "totals": [job.total for _, job in jobs],
        "params": [orjson.dumps(params).decode() if (params := stored_params(job_id, job)) else None
                   for job_id, job in jobs],
        "deadlines": [job.deadline_seconds for _, job in jobs],
        "tenants": [job.owning_tenant() for _, job in jobs],
    }


# Rows from arrays in one statement (plain SQL: ORM unit-of-work bookkeeping cost the gateway more CPU
# than the insert itself; SQLAlchemy constructs, too, cost more to build per message than text(), see
# begin_attempt, and these are written once per coalesced message on every prediction's path). {status}, {attempts} and {started} are filled in by the caller.
# The columns of _record_columns as a row source `d`, for unnest(...) AS d(...).
_RECORD_ARRAYS = (
    "CAST(:ids AS text[]), CAST(:owners AS text[]), CAST(:kinds AS text[]), CAST(:tasks AS text[]), "
    "CAST(:models AS text[]), CAST(:priorities AS int[]), CAST(:totals AS int[]), CAST(:params AS text[]), "
    "CAST(:deadlines AS int[]), CAST(:tenants AS text[])"
)
_RECORD_NAMES = "id, owner, kind, task, model, priority, total, params, deadline, tenant"
_INSERT_FROM_ARRAYS = (
    "INSERT INTO jobs (id, owner, kind, task, model, status, priority, progress_total, progress_done, params, "  # nosec B608 - constant SQL, values bound
    "attempts, created_at, started_at, deadline_at, tenant) "
    "SELECT d.id, d.owner, d.kind, d.task, d.model, {status}, d.priority, d.total, 0, d.params::jsonb, {attempts}, "
    "now(), {started}, now() + make_interval(secs => d.deadline), d.tenant "
    f"FROM unnest({_RECORD_ARRAYS}) AS d({_RECORD_NAMES}) "
)


def create_jobs(jobs: list[tuple[str, NewJob]]) -> None:
    """Insert many queued jobs in one statement; a row that already exists (its worker was quicker) stays
    as it is. No idempotency keys on this path."""
    if not jobs:
        return
    with session_scope() as session:
        session.execute(text(
            _INSERT_FROM_ARRAYS.format(status="'queued'", attempts="0", started="NULL")
            + "ON CONFLICT (id) DO NOTHING"
        ), _record_columns(jobs))


def begin_attempts(job_ids: list[str], max_deliveries: int,
                   records: dict[str, NewJob] | None = None) -> tuple[dict[str, int], list[str]]:
    """Bulk begin_attempt: returns ({job_id: attempt} for jobs to run, [job_ids over the delivery cap]).

    Jobs with a record in `records` get their row created here if it does not exist yet."""
    records = records or {}
    with_record = [(job_id, records[job_id]) for job_id in job_ids if job_id in records]
    without_record = [job_id for job_id in job_ids if job_id not in records]
    rows: list[Any] = []
    with quick_write_engine().connect() as connection:
        if with_record:
            rows += connection.execute(text(
                _INSERT_FROM_ARRAYS.format(status="'running'", attempts="1", started="now()")
                + "ON CONFLICT (id) DO UPDATE SET attempts = jobs.attempts + 1, status = 'running', "  # nosec B608 - constants
                "started_at = coalesce(jobs.started_at, now()) "
                "WHERE jobs.status IN ('queued', 'running') RETURNING id, attempts"
            ), _record_columns(with_record)).all()
        if without_record:  # messages queued before records travelled with them
            rows += connection.execute(
                text(
                    "UPDATE jobs SET attempts = attempts + 1, status = 'running', "
                    "started_at = coalesce(started_at, now()) "
                    "WHERE id = ANY(:ids) AND status IN ('queued', 'running') RETURNING id, attempts"
                ),
                {"ids": without_record},
            ).all()
    runnable = {job_id: attempt for job_id, attempt in rows if attempt <= max_deliveries}
    over_cap = [job_id for job_id, attempt in rows if attempt > max_deliveries]
    if over_cap:
        # By id, in plain SQL like the rest of this path: it may run on the deferred-call thread, where no
        # tenant is in scope (the ids are the gateway's own UUIDs, taken from the message).
        error = orjson.dumps({
            "code": "redelivery_limit",
            "message": f"The job was delivered more than {max_deliveries} times without finishing "
                       "(its worker died each time).",
        }).decode()
        with quick_write_engine().connect() as connection:
            connection.execute(text(
                "UPDATE jobs SET status = 'failed', error = CAST(:error AS jsonb), finished_at = now() "
                "WHERE id = ANY(:ids) AND status IN ('queued', 'running')"), {"ids": over_cap, "error": error})
        JOBS_FINISHED.labels(FAILED, "redelivery_limit").inc(len(over_cap))
    return runnable, over_cap


def finish_jobs(outcomes: dict[str, tuple[str, Any]], sensitive: frozenset[str] = frozenset(),
                usage: dict[str, WorkerTime] | None = None) -> set[str]:
    """Record many outcomes in one statement each for successes and failures: {job_id: (status, payload)}.
    The results of the jobs in `sensitive` are sealed (or not kept). `usage`: the jobs' worker time,
    written by the same statements for the jobs they record (core/usage/worker_time.py).

    Only jobs still queued or running change, so a redelivered message cannot record a result twice;
    returns the ids recorded.
    """
    # orjson: these payloads are mostly floats (embeddings), which the json module formats slowly.
    succeeded = [(job_id, orjson.dumps(stored_result(job_id, payload, job_id in sensitive)).decode())
                 for job_id, (status, payload) in outcomes.items() if status == SUCCEEDED]
    failed = [(job_id, orjson.dumps(payload).decode()) for job_id, (status, payload) in outcomes.items()
              if status == FAILED]
    # This hot path neither waits for the WAL flush nor opens a transaction (quick_write_engine): a write
    # lost in a database crash leaves the job running (its caller was answered through the reply channel)
    # until the stale-job sweep takes it up.
    recorded: set[str] = set()
    with quick_write_engine().connect() as connection:
        if succeeded:
            recorded.update(row[0] for row in connection.execute(*_recording(
                "UPDATE jobs AS j SET status = 'succeeded', result = d.payload::jsonb, "
                "progress_done = j.progress_total, finished_at = now() "
                "FROM unnest(CAST(:ids AS text[]), CAST(:payloads AS text[])) AS d(id, payload) "
                "WHERE j.id = d.id AND j.status IN ('queued', 'running') RETURNING j.id",
                {"ids": [s[0] for s in succeeded], "payloads": [s[1] for s in succeeded]}, usage,
                ", j.tenant, j.owner, j.model")))
        if failed:
            recorded.update(row[0] for row in connection.execute(*_recording(
                "UPDATE jobs AS j SET status = 'failed', error = d.payload::jsonb, finished_at = now() "
                "FROM unnest(CAST(:ids AS text[]), CAST(:payloads AS text[])) AS d(id, payload) "
                "WHERE j.id = d.id AND j.status IN ('queued', 'running') RETURNING j.id",
                {"ids": [f[0] for f in failed], "payloads": [f[1] for f in failed]}, usage,
                ", j.tenant, j.owner, j.model")))
    _count_finished(outcomes, recorded)
    return recorded


def _recording(statement: str, values: dict[str, Any], usage: dict[str, WorkerTime] | None,
               returning_more: str) -> tuple[Any, dict[str, Any]]:
    """A statement that records jobs (ending in RETURNING of their id), and its values; when some of its
    jobs spent worker time, the statement that also writes their ledger rows (worker_time.py)."""
    timed = usage_columns(values["ids"], usage or {})
    if not timed["u_ids"]:
        return text(statement), values
    return text(with_ledger_rows(statement + returning_more)), {**values, **timed}


# A first delivery's jobs written once, finished: the row is created (or, if the gateway created it,
# updated) with the outcome and this delivery counted. Rows no longer queued or running (cancelled
# meanwhile) keep what they say; RETURNING tells which jobs were recorded.
_RECORD_FINISHED = (
    "INSERT INTO jobs (id, owner, kind, task, model, status, priority, progress_total, progress_done, "  # nosec B608 - constant SQL
    "params, attempts, created_at, started_at, finished_at, deadline_at, result, error, tenant) "
    "SELECT d.id, d.owner, d.kind, d.task, d.model, d.status, d.priority, d.total, "
    "CASE WHEN d.status = 'succeeded' THEN d.total ELSE 0 END, d.params::jsonb, 1, "
    "to_timestamp(d.started), to_timestamp(d.started), now(), "
    "now() + make_interval(secs => d.deadline), d.result::jsonb, d.error::jsonb, d.tenant "
    f"FROM unnest({_RECORD_ARRAYS}, CAST(:statuses AS text[]), CAST(:results AS text[]), "
    f"CAST(:errors AS text[]), CAST(:started AS float8[])) AS d({_RECORD_NAMES}, status, result, error, started) "
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, result = excluded.result, "
    "error = excluded.error, "
    "attempts = jobs.attempts + 1, started_at = coalesce(jobs.started_at, excluded.started_at), "
    "finished_at = now(), "
    "progress_done = CASE WHEN excluded.status = 'succeeded' THEN jobs.progress_total "
    "ELSE jobs.progress_done END "
    "WHERE jobs.status IN ('queued', 'running') RETURNING id"
)
_RECORDED_ROW = ", tenant, owner, model"


def record_finished(outcomes: dict[str, tuple[str, Any]], records: dict[str, NewJob],
                    started: float | Mapping[str, float], usage: dict[str, WorkerTime] | None = None) -> set[str]:
    """Record jobs whose delivery was not counted yet, finished, in one statement: {job_id: (status,
    payload)}, with each job's record to create its row from and when the worker started it (Unix time,
    one for all or {job_id: time}; a row created here was created then too). Returns the ids recorded; a
    job missing from it was finished or cancelled before (its row is unchanged)."""
    if not outcomes:
        return set()
    jobs = [(job_id, records[job_id]) for job_id in outcomes]
    payloads = [(status, orjson.dumps(stored_result(job_id, payload, records[job_id].sensitive
                                                    and status == SUCCEEDED)).decode())
                for job_id, (status, payload) in outcomes.items()]
    columns = {**_record_columns(jobs), "statuses": [status for status, _ in payloads],
               "results": [payload if status == SUCCEEDED else None for status, payload in payloads],
               "errors": [payload if status != SUCCEEDED else None for status, payload in payloads],
               "started": [started if isinstance(started, (int, float)) else started[job_id]
                           for job_id in outcomes]}
    with quick_write_engine().connect() as connection:
        recorded = {row[0] for row in connection.execute(*_recording(_RECORD_FINISHED, columns, usage, _RECORDED_ROW))}
    _count_finished(outcomes, recorded)
    return recorded


def get_jobs(job_ids: list[str]) -> list[Job]:
    with session_scope() as session:
        return list(session.scalars(select(Job).where(Job.id.in_(job_ids))).all())
