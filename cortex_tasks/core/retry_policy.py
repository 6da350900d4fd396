"""Which errors are worth retrying: transient I/O only, never bad input or bugs."""
from __future__ import annotations

import logging
from typing import Any

import redis
import sqlalchemy.exc

log = logging.getLogger(__name__)

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


def keep_while_database_away(task: Any, exc: BaseException) -> Exception:
    """The retry to raise when PostgreSQL has been away through every retry of `task`: its jobs can then be
    neither run nor failed (their rows are out of reach), and a task that fails has its message acknowledged,
    which would lose jobs whose inputs travel only in it (the stale-job sweep would later fail them as
    `message_lost`). The message is kept instead: sent again every DATABASE_AWAY_RETRY_SECONDS, past
    `max_retries`, until PostgreSQL answers."""
    log.warning("PostgreSQL away through every retry of %s; its message is kept and tried again in %d s",
                task.name, DATABASE_AWAY_RETRY_SECONDS)
    return task.retry(exc=exc, countdown=DATABASE_AWAY_RETRY_SECONDS, max_retries=task.request.retries + 1)
