"""Housekeeping over the job table: stale jobs and expired job records."""
from __future__ import annotations

from sqlalchemy import text

from cortex_tasks.core.storage.db import session_scope


def fail_stale_jobs() -> int:
    """Fail jobs still queued or running past their deadline (their message was lost, e.g. Redis lost
    its data), so that no job stays pending forever."""
    with session_scope() as session:
        return session.execute(text(
            "UPDATE jobs SET status = 'failed', finished_at = now(), "
            "error = jsonb_build_object('code', 'stale_job', 'message', "
            "'The job did not finish before its deadline; its message was probably lost.') "
            "WHERE status IN ('queued', 'running') AND deadline_at IS NOT NULL AND deadline_at < now()"
        )).rowcount


def delete_expired_jobs(retention_days: int) -> int:
    with session_scope() as session:
        return session.execute(text(
            "DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') "
            "AND finished_at < now() - make_interval(days => :days)"
        ), {"days": retention_days}).rowcount
