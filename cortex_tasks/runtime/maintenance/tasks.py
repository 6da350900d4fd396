"""Periodic housekeeping tasks (scheduled by beat_schedule.py)."""
from __future__ import annotations

import logging
from typing import Any

from cortex_tasks import app
from cortex_tasks.core.audit.service import purge_older_than
from cortex_tasks.core.batch.config import batch_config
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import MaintenanceMessage
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.load_control.aging import promote_aged
from cortex_tasks.core.queues import GPU, NLP
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.training.schedules import retrain_due_models as start_due
from cortex_tasks.runtime.alerting import retention
from cortex_tasks.runtime.batch.recovery import requeue_stalled_batches
from cortex_tasks.runtime.maintenance import housekeeping, service
from cortex_tasks.runtime.maintenance.lost_messages import recover_lost_messages
from cortex_tasks.runtime.training.recovery import fail_orphaned_runs, requeue_dead_training

log = logging.getLogger(__name__)

HOUSEKEEPING: dict[str, Any] = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": True, "max_retries": 3}


def _refused(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a message this worker cannot read (core.contracts.job_messages.MaintenanceMessage),
    or None to go on. Returned, not raised: a retry would be refused again, and Beat sends the next one."""
    try:
        read_message(MaintenanceMessage, kwargs)
    except MessageRefused as exc:
        log.error("refused a maintenance message: %s", exc)
        return {"refused": str(exc)}
    return None


@app.task(name=task_names.SWEEP_STALE_JOBS, soft_time_limit=60, time_limit=90, **HOUSEKEEPING)
def sweep_stale_jobs(**kwargs: Any) -> dict[str, Any]:
    if (refused := _refused(kwargs)) is not None:
        return refused

    # Jobs whose messages an emptied Redis lost first (lost_messages.py); then re-enqueue what can safely
    # run again; only what is past its deadline is failed.
    lost = recover_lost_messages()
    requeued = {**requeue_stalled_batches(), **requeue_dead_training()}
    failed = service.fail_stale_jobs()

    return {"failed": failed, **lost, **requeued, "training_runs_failed": fail_orphaned_runs(),
            "deployments_settled": service.settle_abandoned_deployments()}


@app.task(name=task_names.EXPIRE_JOB_RECORDS, soft_time_limit=300, time_limit=360, **HOUSEKEEPING)
def expire_job_records(**kwargs: Any) -> dict[str, Any]:
    if (refused := _refused(kwargs)) is not None:
        return refused
    return {"deleted": service.delete_expired_jobs(get_settings().job_retention_days)}


@app.task(name=task_names.PURGE_AUDIT_EVENTS, soft_time_limit=300, time_limit=360, **HOUSEKEEPING)
def purge_audit_events(**kwargs: Any) -> dict[str, Any]:
    """Audit events older than the retention period (CORTEX_AUDIT_RETENTION)."""
    if (refused := _refused(kwargs)) is not None:
        return refused
    return {"deleted": purge_older_than(get_settings().audit_retention_days)}


@app.task(name=task_names.EXPIRE_RESULTS, soft_time_limit=600, time_limit=660, **HOUSEKEEPING)
def expire_results(**kwargs: Any) -> dict[str, Any]:
    if (refused := _refused(kwargs)) is not None:
        return refused
    return housekeeping.expire_results(batch_config().result_retention_days)


@app.task(name=task_names.EXPIRE_MEDIA, soft_time_limit=600, time_limit=660, **HOUSEKEEPING)
def expire_media(**kwargs: Any) -> dict[str, Any]:
    """Staged inputs and generated images past CORTEX_STAGED_MEDIA_RETENTION / _GENERATED_MEDIA_RETENTION."""
    if (refused := _refused(kwargs)) is not None:
        return refused
    settings = get_settings()
    return housekeeping.expire_media(settings.staged_media_retention_days, settings.generated_media_retention_days)


@app.task(name=task_names.ROLL_UP_METRICS, soft_time_limit=120, time_limit=180, **HOUSEKEEPING)
def roll_up_metrics(**kwargs: Any) -> dict[str, Any]:
    if (refused := _refused(kwargs)) is not None:
        return refused
    return housekeeping.roll_up_metrics()


@app.task(name=task_names.WARM_CACHE, soft_time_limit=300, time_limit=360, **HOUSEKEEPING)
def warm_cache(**kwargs: Any) -> dict[str, Any]:
    if (refused := _refused(kwargs)) is not None:
        return refused
    return housekeeping.warm_cache()


@app.task(name=task_names.RETRAIN_DUE_MODELS, soft_time_limit=120, time_limit=180, **HOUSEKEEPING)
def retrain_due_models(**kwargs: Any) -> dict[str, Any]:
    if (refused := _refused(kwargs)) is not None:
        return refused
    return start_due()


@app.task(name=task_names.PROMOTE_AGED_JOBS, soft_time_limit=20, time_limit=30, **HOUSEKEEPING)
def promote_aged_jobs(**kwargs: Any) -> dict[str, Any]:
    if (refused := _refused(kwargs)) is not None:
        return refused
    import redis

    from cortex_tasks.core.broker import redis_holding_queues

    settings = get_settings()
    if not settings.broker_is_redis:  # RabbitMQ orders its priority queues itself (core/broker.py)
        return {"skipped": "the broker is not Redis"}
    client = redis_holding_queues(redis.Redis.from_url(settings.redis_url))
    return {queue: promote_aged(client, queue, settings.priority_aging_seconds) for queue in (GPU, NLP)}


@app.task(name=task_names.EXPIRE_STREAM_HISTORY, soft_time_limit=600, time_limit=660, **HOUSEKEEPING)
def expire_stream_history(**kwargs: Any) -> dict[str, Any]:
    """Alerts, stream reports (with their files), windows and verdicts past their retention, every tenant's
    (CORTEX_ALERT_RETENTION, CORTEX_REPORT_RETENTION, CORTEX_STREAM_WINDOW_RETENTION,
    CORTEX_STREAM_VERDICT_RETENTION)."""
    if (refused := _refused(kwargs)) is not None:
        return refused
    return retention.expire_stream_history()
