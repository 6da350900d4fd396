"""Housekeeping over the job table: stale jobs, the deployments their activation jobs left pending, and
expired job records."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, update

from cortex_tasks.core.jobs.store import CANCELLED, FAILED, FINISHED_STATES, QUEUED, RUNNING
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Deployment, Job
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


def settle_abandoned_deployments() -> int:
    """Fail the pending deployments whose activation job ended without switching: failed or cancelled
    (its message lost with an emptied Redis, its deadline passed, a worker that gave up before it could
    fail the deployment itself). A pending deployment blocks every later promotion of its model until it
    expires (15 minutes, core/registry/records.py); once its job is known lost there is nothing to wait
    for. Run by each stale-job sweep, after the lost-message and deadline passes have failed such jobs."""
    with all_tenants(), session_scope() as session:
        abandoned = session.execute(
            select(Deployment.id, Job.id, Job.status, Job.error)
            .join(Job, (Job.id == Deployment.job_id) & (Job.tenant == Deployment.tenant))
            .where(Deployment.status == "pending", Job.status.in_((FAILED, CANCELLED)))
        ).all()
        for deployment_id, job_id, status, error in abandoned:
            reason = (error or {}).get("code") or status
            session.execute(
                update(Deployment).where(Deployment.id == deployment_id, Deployment.status == "pending")
                .values(status=FAILED, finished_at=func.now(),
                        error={"code": reason,
                               "message": f"Its activation job {job_id} ended {status} ({reason}) before the "
                                          "switch; promote again."})
                .execution_options(synchronize_session=False))
    return len(abandoned)


def delete_expired_jobs(retention_days: int) -> int:
    # Retention is the platform's rule, applied to every tenant's job records.
    with all_tenants(), session_scope() as session:
        return session.execute(
            delete(Job)
            .where(Job.status.in_(FINISHED_STATES),
                   Job.finished_at < func.now() - timedelta(days=retention_days))
            .execution_options(synchronize_session=False)
        ).rowcount
