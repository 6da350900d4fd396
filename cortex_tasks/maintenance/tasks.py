"""Periodic housekeeping tasks (scheduled by beat_schedule.py)."""
from __future__ import annotations

from cortex_tasks import app
from cortex_tasks.maintenance import service
from cortex_tasks.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.settings import get_settings


@app.task(name="cortex.maintenance.sweep_stale_jobs", soft_time_limit=60, time_limit=90,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3)
def sweep_stale_jobs() -> dict[str, int]:
    return {"failed": service.fail_stale_jobs()}


@app.task(name="cortex.maintenance.expire_job_records", soft_time_limit=300, time_limit=360,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3)
def expire_job_records() -> dict[str, int]:
    return {"deleted": service.delete_expired_jobs(get_settings().job_retention_days)}
