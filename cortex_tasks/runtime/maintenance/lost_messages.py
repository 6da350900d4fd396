"""Jobs whose messages Redis lost with its data (called by the stale-job sweep).

A Redis that restarts empty (no append-only file, a lost disk, a FLUSHALL) loses every waiting and every
delivered-but-unacknowledged message, while the jobs' rows stay `queued` or `running` in PostgreSQL. The
workers' lease-based restore cannot help (the `unacked` hash went with the rest), and the deadline sweep
would fail them only an hour later. So every sweep pass first asks Redis whether it is the same Redis
as at the last pass: it keeps a marker key there, which an empty Redis no longer has. When the marker is
gone, the pass compares the open jobs that existed before this Redis started with the messages Redis
holds (every list and the `unacked` hash, read twice a few seconds apart), and takes up each job that
has no message and did not move in between:

- a batch: its chunks are in PostgreSQL, so the chunks that were in flight are sent again (a chunk
  already finished is skipped by its guard), or the finish message if every chunk is done;
- a training run: sent again, and it resumes from its last checkpoint;
- every other job (predictions, chats, agents, documents...) is failed with `message_lost`: its inputs
  travelled only in its message (they are not kept at rest, by design), so it cannot run again, and a
  clear failure the client can act on beats a job "running" until its deadline.

A Redis that kept its data can still have lost single messages: kombu's Redis transport takes a message
off its queue (BRPOP) and records it as delivered (the `unacked` hash) in two steps, so a worker SIGKILLed
between them loses that one message; a Redis killed and restarted from its append-only file loses the
writes of its last second. So every pass where the marker is there looks for orphans instead: open jobs
older than ORPHAN_AGE_SECONDS that no message names, twice a few seconds apart, taken up the same way.

Each pass logs what it found and counts it (cortex_jobs_lost_messages_total), so what was lost is reported
rather than silently failed an hour later. RabbitMQ keeps its queues on disk: nothing to do there.
"""
from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
import redis
from prometheus_client import Counter
from sqlalchemy import case, func, select, update

from cortex_tasks.core.batch.submission import send_chunks, send_finish
from cortex_tasks.core.broker import redis_holding_queues
from cortex_tasks.core.jobs.store import FAILED, JOBS_FINISHED, QUEUED, RUNNING, SUCCEEDED
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import BatchChunk, Job, TrainingRun
from cortex_tasks.core.tenancy import all_tenants
from cortex_tasks.core.training import runs
from cortex_tasks.core.training.submission import send_training

log = logging.getLogger(__name__)

# Written by the sweep, never expiring: a Redis without it has lost its data since the last pass (or it is
# the first pass ever, when the comparison below finds every message where it should be).
MARKER_KEY = "cortex:broker:incarnation"
LOCK_KEY = "cortex:broker:reconciling"
UNACKED_KEY = "unacked"  # kombu's Redis transport's default, which Cortex keeps
# Workers need a moment after Redis comes back to reconnect, and publishers to flush what they held: a
# gateway keeps a prediction it answered 202 unsent while its group's messages in flight await replies,
# for up to its in-flight timeout (60 s, cortex_web/coalescer.py), and those replies died with Redis. A
# pass sooner than this after Redis started leaves the check to the next one.
SETTLE_AFTER_START_SECONDS = 60 + 15
# Between the two reads of the broker: a message being moved between a list and `unacked`, or a job a
# surviving worker is finishing, shows up in one of them or moves its row.
SECOND_LOOK_SECONDS = 5
# A prediction's row is written when its caller's wait ends (up to 60 s after the message was sent), so
# a prediction sent to the lost Redis can have a row younger than the new Redis by that much.
PREDICTION_ROW_DELAY_SECONDS = 60 + 10
# Redis counts its uptime in whole seconds of the clock (now's second less its start's), up to a second
# more than has passed: rows written that much after the computed start may still be the lost Redis's.
# Counting a few more is safe: a job of the new Redis has its message there, or has moved.
START_MARGIN_SECONDS = 5
# An open job this old has had its message in Redis for minutes, whatever held it back: a gateway keeps a
# prediction unsent for at most its in-flight timeout (60 s) and writes its row at most 60 s after sending;
# a job waiting in a backlog, running, or retrying later has its message in a list or in `unacked`.
ORPHAN_AGE_SECONDS = 5 * 60
PAGE = 1000

LOST_MESSAGES = Counter("cortex_jobs_lost_messages_total",
                        "Jobs whose message Redis lost with its data, by job kind and what the sweep did "
                        "(resent or failed)", ["kind", "action"])

MESSAGE_LOST = {
    "code": "message_lost",
    "message": "Redis lost this job's message with its data (it restarted empty) before the job finished. "
               "The job's inputs travelled only in that message, so it cannot run again: submit it again.",
}
MESSAGE_ORPHANED = {
    "code": "message_lost",
    "message": "The broker no longer holds this job's message (a worker killed as it took the message, or "
               "Redis restarted without its last writes). The job's inputs travelled only in that message, "
               "so it cannot run again: submit it again.",
}


@dataclass(frozen=True)
class OpenJob:
    id: str
    kind: str
    status: str
    attempts: int
    progress_done: int
    priority: int
    tenant: str
    queue: str | None


def recover_lost_messages() -> dict[str, Any]:
    settings = get_settings()
    if not settings.broker_is_redis:
        return {}
    client = redis_holding_queues(redis.Redis.from_url(settings.redis_url, socket_timeout=10))
    if client.exists(MARKER_KEY):
        return _recover_orphans(client)
    uptime = int(client.info("server")["uptime_in_seconds"])
    if uptime < SETTLE_AFTER_START_SECONDS:
        return {"lost_messages": "checked at the next pass (Redis started moments ago)"}
    if not client.set(LOCK_KEY, "1", nx=True, ex=300):
        return {}
    try:
        outcome = _reconcile(client, uptime)
        client.set(MARKER_KEY, orjson.dumps({"checked_at": time.time(), **outcome}))
        return outcome
    finally:
        client.delete(LOCK_KEY)


def _recover_orphans(client: redis.Redis) -> dict[str, Any]:
    """Open jobs older than ORPHAN_AGE_SECONDS whose single message was lost (see the module's docstring)."""
    cutoff = func.now() - timedelta(seconds=ORPHAN_AGE_SECONDS)  # the database's clock, at each query
    if not _open_jobs_created_before(cutoff, limit=1):
        return {}  # nothing that old is open: no need to read the broker
    if not client.set(LOCK_KEY, "1", nx=True, ex=300):
        return {}
    try:
        lost = _without_message(client, lambda: _open_jobs_created_before(cutoff))
        if not lost:
            return {}
        resent, failed = _take_up(lost, MESSAGE_ORPHANED)
        log.warning("%d open jobs older than %d s had no message in the broker (lost one by one: a worker "
                    "killed as it took them, or Redis's last writes); %d sent again, %d failed (message_lost)",
                    len(lost), ORPHAN_AGE_SECONDS, len(resent), len(failed),
                    extra={"resent_job_ids": resent[:200], "failed_job_ids": failed[:200]})
        return {"orphaned_messages": len(lost), "orphans_resent": len(resent), "orphans_failed": len(failed)}
    finally:
        client.delete(LOCK_KEY)


def _without_message(client: redis.Redis, open_jobs: Callable[[], dict[str, OpenJob]]) -> list[OpenJob]:
    """Of the open jobs `open_jobs()` lists, those that no message in the broker names, in two reads a few
    seconds apart (a message moving between a list and `unacked` is in one of them), and whose rows did not
    move meanwhile."""
    first_look = broker_job_ids(client)
    before = open_jobs()
    if not before:
        return []
    time.sleep(SECOND_LOOK_SECONDS)
    present = first_look | broker_job_ids(client)
    after = {job.id: job for job in _open_jobs(list(before))}
    return [job for job_id, job in before.items() if job_id not in present and after.get(job_id) == job]


def _reconcile(client: redis.Redis, uptime: int) -> dict[str, Any]:
    lost = _without_message(client, lambda: _open_jobs_older_than(uptime))
    if not lost:
        log.info("the broker's marker was missing (Redis started empty, or a first check): every open job "
                 "still has its message")
        return {"lost_messages": 0}
    resent, failed = _take_up(lost, MESSAGE_LOST)
    log.warning("Redis lost its data: %d open jobs had no message left; %d sent again, %d failed "
                "(message_lost)", len(lost), len(resent), len(failed),
                extra={"resent_job_ids": resent[:200], "failed_job_ids": failed[:200]})
    return {"lost_messages": len(lost), "lost_resent": len(resent), "lost_failed": len(failed)}


def broker_job_ids(client: redis.Redis) -> set[str]:
    """The ids of every job a message in Redis is for: waiting in a queue's lists or delivered and not yet
    acknowledged (kombu's `unacked` hash)."""
    ids: set[str] = set()
    for key in client.scan_iter(count=PAGE, _type="list"):
        start = 0
        while items := client.lrange(key, start, start + PAGE - 1):
            for item in items:
                ids.update(_message_job_ids(item))
            start += PAGE
    for _, item in client.hscan_iter(UNACKED_KEY, count=PAGE):
        try:
            delivered = orjson.loads(item)  # [message, exchange, routing key]
        except orjson.JSONDecodeError:
            continue
        if isinstance(delivered, list) and delivered:
            ids.update(_message_job_ids(delivered[0]))
    return ids


def _message_job_ids(raw: Any) -> Iterable[str]:
    """The job ids in one kombu message (raw or parsed): its task id, and the `job_id`s of its kwargs (a
    prediction message carries several jobs). Anything else in a list (not a message) names none."""
    try:
        message = orjson.loads(raw) if isinstance(raw, (bytes, str)) else raw
        if not isinstance(message, dict) or not isinstance(message.get("headers"), dict):
            return ()
        ids = [message["headers"].get("id")]
        body: Any = message.get("body")
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = orjson.loads(body) if isinstance(body, (str, bytes)) else body
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return ()
    kwargs = args[1] if isinstance(args, list) and len(args) > 1 and isinstance(args[1], dict) else {}
    ids.append(kwargs.get("job_id"))
    ids.extend(job.get("job_id") for job in kwargs.get("jobs") or () if isinstance(job, dict))
    return [job_id for job_id in ids if isinstance(job_id, str)]


def _columns() -> tuple[Any, ...]:
    return (Job.id, Job.kind, Job.status, Job.attempts, Job.progress_done, Job.priority, Job.tenant,
            Job.params["queue"].astext)


def _open_jobs_older_than(uptime: int) -> dict[str, OpenJob]:
    """Open jobs whose messages went to the Redis that was lost: rows written before this Redis started
    (a prediction's, PREDICTION_ROW_DELAY_SECONDS after)."""
    started = func.now() - timedelta(seconds=uptime - START_MARGIN_SECONDS)
    row_delay = case((Job.kind == "predict", timedelta(seconds=PREDICTION_ROW_DELAY_SECONDS)),
                     else_=timedelta(0))
    with all_tenants(), session_scope() as session:
        rows = session.execute(
            select(*_columns()).where(Job.status.in_((QUEUED, RUNNING)), Job.created_at < started + row_delay)
        ).all()
    return {row[0]: OpenJob(*row) for row in rows}


def _open_jobs_created_before(moment: Any, limit: int | None = None) -> dict[str, OpenJob]:
    with all_tenants(), session_scope() as session:
        rows = session.execute(
            select(*_columns()).where(Job.status.in_((QUEUED, RUNNING)), Job.created_at < moment).limit(limit)
        ).all()
    return {row[0]: OpenJob(*row) for row in rows}


def _open_jobs(job_ids: list[str]) -> list[OpenJob]:
    with all_tenants(), session_scope() as session:
        rows = session.execute(select(*_columns()).where(Job.id.in_(job_ids), Job.status.in_((QUEUED, RUNNING))))
        return [OpenJob(*row) for row in rows.all()]


def _take_up(lost: list[OpenJob], error: dict[str, str]) -> tuple[list[str], list[str]]:
    resent: list[str] = []
    to_fail: list[OpenJob] = []
    resend = {"batch": _resend_batch, "training": _resend_training}
    for job in lost:
        if job.kind not in resend:
            to_fail.append(job)
        elif resend[job.kind](job):
            resent.append(job.id)
    failed = _fail(to_fail, error)
    for job in lost:
        if job.id in resent:
            LOST_MESSAGES.labels(job.kind, "resent").inc()
    for job in to_fail:
        if job.id in failed:
            LOST_MESSAGES.labels(job.kind, "failed").inc()
    return resent, failed


def _resend_batch(job: OpenJob) -> bool:
    """The chunks that were queued or running (their messages are gone) are sent again; if none was, the
    first pending one (the follow-up send was lost); if all are done, the finish message."""
    with all_tenants(), session_scope() as session:
        chunks = session.execute(
            update(BatchChunk)
            .where(BatchChunk.job_id == job.id, BatchChunk.status.in_((QUEUED, RUNNING)))
            .values(status=QUEUED, queued_at=func.now(), updated_at=func.now())
            .returning(BatchChunk.chunk_index)
            .execution_options(synchronize_session=False)
        ).scalars().all()
        statuses = session.execute(
            select(BatchChunk.chunk_index, BatchChunk.status).where(BatchChunk.job_id == job.id)
            .order_by(BatchChunk.chunk_index)).all()
        if not chunks:
            pending = [index for index, status in statuses if status == "pending"]
            if pending:
                session.execute(update(BatchChunk)
                                .where(BatchChunk.job_id == job.id, BatchChunk.chunk_index == pending[0])
                                .values(status=QUEUED, queued_at=func.now(), updated_at=func.now())
                                .execution_options(synchronize_session=False))
                chunks = [pending[0]]
    queue = job.queue or "batch"
    if chunks:
        send_chunks(job.id, sorted(chunks), queue, job.priority, job.tenant)
        return True
    if statuses and all(status == SUCCEEDED for _, status in statuses):
        send_finish(job.id, queue, job.priority, job.tenant)
        return True
    return False  # no chunk rows: left to the deadline sweep


def _resend_training(job: OpenJob) -> bool:
    with all_tenants(), session_scope() as session:
        changed = session.execute(
            update(Job).where(Job.id == job.id, Job.status.in_((QUEUED, RUNNING)))
            .values(status=QUEUED).execution_options(synchronize_session=False)).rowcount
        if not changed:
            return False
        session.execute(update(TrainingRun)
                        .where(TrainingRun.id == job.id, TrainingRun.tenant == job.tenant,
                               TrainingRun.phase.not_in(runs.FINISHED_PHASES))
                        .values(phase=runs.QUEUED, updated_at=func.now())
                        .execution_options(synchronize_session=False))
    send_training(job.id, job.priority, job.tenant)
    return True


def _fail(jobs: list[OpenJob], error: dict[str, str]) -> list[str]:
    if not jobs:
        return []
    with all_tenants(), session_scope() as session:
        failed = session.execute(
            update(Job)
            .where(Job.id.in_([job.id for job in jobs]), Job.status.in_((QUEUED, RUNNING)))
            .values(status=FAILED, error=error, finished_at=func.now())
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).scalars().all()
    if failed:
        JOBS_FINISHED.labels(FAILED, error["code"]).inc(len(failed))
    return list(failed)
