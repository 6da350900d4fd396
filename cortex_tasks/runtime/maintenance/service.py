"""Housekeeping over the job table: stale jobs and expired job records."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, update

from cortex_tasks.core.jobs.store import FAILED, FINISHED_STATES, QUEUED, RUNNING
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Job
from cortex_tasks.core.tenancy import all_tenants

_STALE_ERROR = {"code": "stale_job",
                "message": "The job did not finish before its deadline; its message was probably lost."}


def fail_stale_jobs() -> int:
    """Fail jobs still queued or running past their deadline (their message was lost, e.g. Redis lost
    its data), so that no job stays pending forever."""
    # Every tenant's jobs: a deadline is the same rule for all of them.
    with all_tenants(), session_scope() as session:
        # No session synchronization: nothing is loaded, and 'auto' would add a RETURNING of every id.
        return session.execute(
            update(Job)
            .where(Job.status.in_((QUEUED, RUNNING)), Job.deadline_at.is_not(None), Job.deadline_at < func.now())
            .values(status=FAILED, finished_at=func.now(), error=_STALE_ERROR)
            .execution_options(synchronize_session=False)
        ).rowcount


def delete_expired_jobs(retention_days: int) -> int:
    # Retention is the platform's rule, applied to every tenant's job records.
    with all_tenants(), session_scope() as session:
        return session.execute(
            delete(Job)
            .where(Job.status.in_(FINISHED_STATES),
                   Job.finished_at < func.now() - timedelta(days=retention_days))
            .execution_options(synchronize_session=False)
        ).rowcount
