"""The periodic schedule, one readable key per entry (read by celeryconfig.beat_schedule).

Housekeeping goes to the maintenance queue. Retraining is one entry: per-model schedules (cron, or a
tracked metric under its threshold) live in the database (training_schedules) and are checked every
minute, so a model's schedule changes without restarting Beat.
"""
from celery.schedules import crontab

MAINTENANCE = {"queue": "maintenance"}

BEAT_SCHEDULE = {
    "sweep-stale-jobs-every-5-minutes": {
        "task": "cortex.maintenance.sweep_stale_jobs",
        "schedule": crontab(minute="*/5"),
        "options": MAINTENANCE,
    },
    "expire-job-records-daily": {
        "task": "cortex.maintenance.expire_job_records",
        "schedule": crontab(minute=17, hour=3),
        "options": MAINTENANCE,
    },
    # architecture document, cache_warming.schedule: '*/30 * * * *'
    "warm-cache-every-30-minutes": {
        "task": "cortex.maintenance.warm_cache",
        "schedule": crontab(minute="*/30"),
        "options": MAINTENANCE,
    },
    # Priority aging: low-priority work that waited too long moves up, so it is never starved.
    "promote-aged-jobs-every-5-seconds": {
        "task": "cortex.maintenance.promote_aged_jobs",
        "schedule": 5.0,
        "options": MAINTENANCE,
    },
    "retrain-due-models-every-minute": {
        "task": "cortex.maintenance.retrain_due_models",
        "schedule": crontab(),
        "options": MAINTENANCE,
    },
    # Audit retention (architecture document: audit.retention_period, 90d by default).
    "purge-audit-events-daily": {
        "task": "cortex.maintenance.purge_audit_events",
        "schedule": crontab(minute=29, hour=3),
        "options": MAINTENANCE,
    },
    "expire-results-hourly": {
        "task": "cortex.maintenance.expire_results",
        "schedule": crontab(minute=41),
        "options": MAINTENANCE,
    },
    "roll-up-metrics-every-5-minutes": {
        "task": "cortex.maintenance.roll_up_metrics",
        "schedule": crontab(minute="*/5"),
        "options": MAINTENANCE,
    },
}
