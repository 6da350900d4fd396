"""Which errors are worth retrying: transient I/O only, never bad input or bugs."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import sqlalchemy.exc

log = logging.getLogger(__name__)

T = TypeVar("T")

DATABASE_ERRORS: tuple[type[BaseException], ...] = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    *DATABASE_ERRORS,
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def current_retries() -> int:
    """How many times the Celery task running now has been retried (0 outside a task). Each retry is a
    delivery of the job's message that the redelivery cap must not count as a worker's death."""
    from celery import current_task

    # current_task is a proxy: outside a task it stands for None, and is false (it is never None itself).
    task = current_task
    if not task or task.request is None or task.request.id is None:
        return 0
    return int(task.request.retries or 0)


def retries_exhausted() -> bool:
    """Whether the Celery task running now will not be retried again (its `max_retries` are used up). A job
    left "running" when its last retry raises would wait for the deadline sweep, an hour later: a task sees
    this and fails its job with the reason instead. False outside a task (nothing retries there)."""
    from celery import current_task

    task = current_task
    if not task or task.request is None or task.request.id is None:
        return False
    return task.max_retries is not None and (task.request.retries or 0) >= task.max_retries


def dependency_error(exc: BaseException) -> dict[str, str]:
    """The job error of a transient failure that outlasted every retry: which service, and what it said."""
    from cortex_tasks.core.storage.object_store import ObjectStoreUnavailable

    service = ("the object store" if isinstance(exc, ObjectStoreUnavailable)
               else "PostgreSQL" if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
               else "Redis" if isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
               else "a service the job needs")
    return {"code": "dependency_unavailable",
            "message": f"{service} could not be reached through every retry ({type(exc).__name__}: {exc}); "
                       "the job was stopped. Submit it again once the service is back."}


# How often a message whose jobs wait for PostgreSQL is tried again once the task's own retries are used up.
DATABASE_AWAY_RETRY_SECONDS = 30
# For how long at least such a message is kept: a job's deadline (the default every prediction and every
# single job is given, jobs/store.NewJob.deadline_seconds; a unit test holds them equal). Past it the
# stale-job sweep fails the job as soon as PostgreSQL answers again, so a message kept longer could only race
# the sweep, and a database gone for good would keep messages going round forever.
DATABASE_AWAY_KEEP_SECONDS = 3600


def kept_long_enough(retries: int, max_retries: int | None) -> bool:
    """Whether a message retried `retries` times, `max_retries` of them the task's own, has been kept for
    PostgreSQL for DATABASE_AWAY_KEEP_SECONDS. Each kept retry waited at least DATABASE_AWAY_RETRY_SECONDS
    (more behind a backlog), so this never gives up before a job's deadline has passed."""
    kept = retries - (max_retries or 0)
    return kept * DATABASE_AWAY_RETRY_SECONDS >= DATABASE_AWAY_KEEP_SECONDS


def keep_while_database_away(task: Any, exc: BaseException) -> Exception:
    """The retry to raise when PostgreSQL has been away through every retry of `task`: its jobs can then be
    neither run nor failed (their rows are out of reach), and a task that fails has its message acknowledged,
    which would lose jobs whose inputs travel only in it (the stale-job sweep would later fail them as
    `message_lost`). The message is kept instead: sent again every DATABASE_AWAY_RETRY_SECONDS, past
    `max_retries`, until PostgreSQL answers."""
    log.warning("PostgreSQL away through every retry of %s; its message is kept and tried again in %d s",
                task.name, DATABASE_AWAY_RETRY_SECONDS)
    kept = task.retry(exc=exc, countdown=DATABASE_AWAY_RETRY_SECONDS, max_retries=task.request.retries + 1,
                      throw=False)
    # Celery remembers a max_retries given to retry() on the task object, which every message the process
    # runs next shares, until an autoretry clears it: this message's allowance must not become theirs.
    if hasattr(task, "override_max_retries"):
        delattr(task, "override_max_retries")
    return kept


def run_kept_while_database_away(run: Callable[[], T], task: Any = None) -> T:
    """Run a task's body (`task`: the bound task, else the one running now). PostgreSQL away through
    every retry of the task keeps its message (keep_while_database_away), however far the body got: at the
    job's first statement, in its work, or at the record of its outcome (the guarded statements of
    core/jobs/store.py then run it again only if its row is still open). Until a job's deadline: past it
    the message is given up, acknowledged as a failed task, and the stale-job sweep fails the job once
    PostgreSQL answers. Other errors, and PostgreSQL errors while retries are left, go on unchanged."""
    try:
        return run()
    except DATABASE_ERRORS as exc:
        if not retries_exhausted():
            raise  # the task's autoretry, with back-off
        if task is None:
            from celery import current_task

            task = current_task
        if kept_long_enough(task.request.retries or 0, task.max_retries):
            log.error("PostgreSQL away for over %d s through the retries of %s; its message is given up: the "
                      "stale-job sweep fails its jobs once PostgreSQL is back", DATABASE_AWAY_KEEP_SECONDS,
                      task.name)
            raise
        raise keep_while_database_away(task, exc) from exc
