"""Celery settings as data. Values come from the typed settings object (cortex_tasks.core.settings)."""
from cortex_tasks.core.broker_transport import use_for_redis_urls
from cortex_tasks.core.queues import PRIORITY_STEPS, TASK_QUEUES, TASK_ROUTES
from cortex_tasks.core.settings import get_settings, stack_not_found

# `celery -A cortex_tasks worker|inspect|flower|beat` with no stack to talk to says so in one line instead of
# trying the local defaults (a system Redis on 6379, a PostgreSQL without Cortex's role).
if (_missing := stack_not_found()) is not None:
    raise SystemExit(f"cortex: {_missing}")

_settings = get_settings()

# The longest hard time limit any task may have (training). Redis redelivers an unacknowledged message
# after visibility_timeout, so it must be longer than any task may run, or a running job would be started
# twice; a test checks every registered task against it. It is also how long a job whose worker was
# SIGKILLed waits before another worker takes it over (a worker that loses a pool child requeues at once).
LONGEST_HARD_TIME_LIMIT = 4 * 3600
VISIBILITY_TIMEOUT = _settings.visibility_timeout_seconds or LONGEST_HARD_TIME_LIMIT + 3600
# How often a worker looks for messages whose worker died (kombu's default sweep is ~100 s).
UNACKED_RESTORE_INTERVAL = _settings.unacked_restore_interval_seconds

# The broker is CORTEX_BROKER_URL when set (RabbitMQ: docs/scaling.md), else the one Redis; results,
# cache, limits and readiness stay in REDIS_URL's Redis either way.
broker_url = _settings.celery_broker_url
use_for_redis_urls()  # redis:// and rediss:// use cortex_tasks.core.broker_transport
result_backend = _settings.redis_url
_redis_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT,
    "queue_order_strategy": "priority",
    "priority_steps": PRIORITY_STEPS,
    "sep": ":",
    "unacked_restore_interval": UNACKED_RESTORE_INTERVAL,
    "unacked_restore_throttle": 1,
}
# RabbitMQ: publisher confirms, so a send returns once the broker has the message (Redis's LPUSH answers
# only once it is written); a consumer that dies gives back its unacknowledged messages when its connection
# closes (at once for a dead process, after the heartbeat for a dead host), with no visibility timeout.
_amqp_transport_options = {"confirm_publish": True}
broker_transport_options = _redis_transport_options if _settings.broker_is_redis else _amqp_transport_options
result_backend_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
visibility_timeout = VISIBILITY_TIMEOUT
broker_connection_retry_on_startup = True

task_queues = TASK_QUEUES
task_routes = TASK_ROUTES
task_default_queue = "gpu"
task_default_priority = 4
task_queue_max_priority = 9

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
result_expires = _settings.result_expires_seconds
result_extended = False

task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure_or_timeout = True
worker_prefetch_multiplier = 1
# A prefork child loads its models before it takes a task (runtime/worker_signals.py); Celery kills a child
# that has not reported up within this many seconds (default 4, less than one model load).
worker_proc_alive_timeout = 600
task_track_started = False
task_soft_time_limit = 60
task_time_limit = 90
worker_cancel_long_running_tasks_on_connection_loss = True
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False

beat_schedule_filename = str(_settings.data_dir / "celerybeat-schedule")
# Only the Beat that holds the leader lock in Redis sends the schedule; others stand by (docs/scaling.md).
beat_scheduler = "cortex_tasks.runtime.maintenance.leader:LeaderScheduler"

from beat_schedule import BEAT_SCHEDULE

beat_schedule = BEAT_SCHEDULE
