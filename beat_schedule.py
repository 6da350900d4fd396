"""The periodic schedule, one readable key per entry (read by celeryconfig.beat_schedule).

Housekeeping goes to the maintenance queue. Retraining is one entry: per-model schedules (cron, or a
tracked metric under its threshold) live in the database (training_schedules) and are checked every
minute, so a model's schedule changes without restarting Beat.

Priority aging (low-priority work that waited too long moves up, so it is never starved) runs every 5 s
inside Beat's process rather than as an entry here: see core/load_control/aging.py.
"""
from celery import signals
from celery.schedules import crontab

from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import MaintenanceMessage
from cortex_tasks.core.load_control.aging import start_aging_in_beat

MAINTENANCE = {"queue": "maintenance"}
ALERTS = {"queue": "alerts"}
# Every entry's message, built through its contract (its only field is the version).
MESSAGE = MaintenanceMessage().to_kwargs()

BEAT_SCHEDULE = {
    "sweep-stale-jobs-every-5-minutes": {
        "task": task_names.SWEEP_STALE_JOBS,
        "schedule": crontab(minute="*/5"),
        "kwargs": MESSAGE,
        "options": MAINTENANCE,
    },
    "expire-job-records-daily": {
        "task": task_names.EXPIRE_JOB_RECORDS,
        "schedule": crontab(minute=17, hour=3),
        "kwargs": MESSAGE,
        "options": MAINTENANCE,
    },
    # every 30 minutes ('*/30 * * * *')
    "warm-cache-every-30-minutes": {
        "task": task_names.WARM_CACHE,
        "schedule": crontab(minute="*/30"),
        "kwargs": MESSAGE,
        "options": MAINTENANCE,
    },
    "retrain-due-models-every-minute": {
        "task": task_names.RETRAIN_DUE_MODELS,
        "schedule": crontab(),
        "kwargs": MESSAGE,
        "options": MAINTENANCE,
    },
    # Audit retention (CORTEX_AUDIT_RETENTION, 90d by default).
    "purge-audit-events-daily": {
        "task": task_names.PURGE_AUDIT_EVENTS,
        "schedule": crontab(minute=29, hour=3),
        "kwargs": MESSAGE,
        "options": MAINTENANCE,
    },
    "expire-results-hourly": {
        "task": task_names.EXPIRE_RESULTS,
        "schedule": crontab(minute=41),
        "kwargs": MESSAGE,
        "options": MAINTENANCE,
    },
    # Staged inputs and generated images (CORTEX_STAGED_MEDIA_RETENTION, CORTEX_GENERATED_MEDIA_RETENTION).
    "expire-media-hourly": {
        "task": task_names.EXPIRE_MEDIA,
        "schedule": crontab(minute=47),
        "kwargs": MESSAGE,
        "options": MAINTENANCE,
    },
    "roll-up-metrics-every-5-minutes": {
        "task": task_names.ROLL_UP_METRICS,
        "schedule": crontab(minute="*/5"),
        "kwargs": MESSAGE,
        "options": MAINTENANCE,
    },
    # Alerts (docs/alerts.md): groups whose close task was lost, deliveries never sent; Cortex's own rules.
    "close-due-alert-groups-every-minute": {
        "task": task_names.ALERTS_CLOSE_DUE_GROUPS,
        "schedule": crontab(),
        "kwargs": MESSAGE,
        "options": ALERTS,
    },
    "evaluate-cortex-alert-rules-every-minute": {
        "task": task_names.ALERTS_EVALUATE_CORTEX_RULES,
        "schedule": crontab(),
        "kwargs": MESSAGE,
        "options": ALERTS,
    },
    # Each declared stream's report of the last whole CORTEX_REPORT_PERIOD (daily by default), once.
    "write-stream-reports-hourly": {
        "task": task_names.REPORTS_WRITE_PERIODIC_REPORTS,
        "schedule": crontab(minute=7),
        "kwargs": MESSAGE,
        "options": ALERTS,
    },
    # Retention of alerts, stream reports (and their files), windows and verdicts (docs/alerts.md).
    "expire-stream-history-daily": {
        "task": task_names.EXPIRE_STREAM_HISTORY,
        "schedule": crontab(minute=53, hour=3),
        "kwargs": MESSAGE,
        "options": MAINTENANCE,
    },
}

signals.beat_init.connect(start_aging_in_beat, weak=False)
