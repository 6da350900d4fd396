"""The periodic schedule, one readable key per entry (read by celeryconfig.beat_schedule)."""
from celery.schedules import crontab

BEAT_SCHEDULE = {
    "sweep-stale-jobs-every-5-minutes": {
        "task": "cortex.maintenance.sweep_stale_jobs",
        "schedule": crontab(minute="*/5"),
        "options": {"queue": "maintenance"},
    },
    "expire-job-records-daily": {
        "task": "cortex.maintenance.expire_job_records",
        "schedule": crontab(minute=17, hour=3),
        "options": {"queue": "maintenance"},
    },
}
