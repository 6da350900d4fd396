"""What a worker measures: task latency and queue wait, batch sizes, model load times, failures by code.

One observation per task, model call or model load, never per input item: these run on every
prediction's path. Queue depth and the oldest message's age are not here: they are read from Redis once,
by the gateway's /metrics (cortex_web/metrics.py), not once per worker.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Histogram

from cortex_tasks.core import redis_clock
from cortex_tasks.core.errors import CortexError

# The architecture's inference latency buckets (0.01 .. 1 s), then wider ones: batch chunks take seconds,
# training runs minutes to hours.
TASK_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL_LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

TASK_SECONDS = Histogram("cortex_task_duration_seconds", "Time a worker spent running a task, by task and queue",
                         ["task", "queue"], buckets=TASK_SECONDS_BUCKETS)
QUEUE_WAIT = Histogram("cortex_task_queue_wait_seconds",
                       "Time from a task's message being published to a worker starting it, by task and queue",
                       ["task", "queue"], buckets=QUEUE_WAIT_BUCKETS)
TASK_FAILURES = Counter("cortex_task_failures_total", "Tasks that raised, by task, queue and stable error code",
                        ["task", "queue", "code"])
BATCH_SIZE = Histogram("cortex_model_batch_size", "Items per model call made by a worker's batcher, by model",
                       ["model"], buckets=BATCH_SIZE_BUCKETS)
MODEL_LOAD_SECONDS = Histogram("cortex_model_load_seconds", "Time a worker process took to load a model",
                               ["model"], buckets=MODEL_LOAD_BUCKETS)

# Where a task's start is kept between the prerun and postrun signals (on its request context, which
# exists once per execution, in the thread that runs it).
_STARTED = "cortex_started"
UNKNOWN_QUEUE = "unknown"
# The (duration, queue wait) series of each task and queue, looked up once: labels() costs about as much
# as an observation (bench/worker_metrics.py). A race fills an entry twice with the same series.
_series: dict[tuple[str, str], tuple[Any, Any]] = {}


def _task_series(name: str, queue: str) -> tuple[Any, Any]:
    found = _series.get((name, queue))
    if found is None:
        found = _series[(name, queue)] = (TASK_SECONDS.labels(name, queue), QUEUE_WAIT.labels(name, queue))
    return found


def queue_of(request: Any) -> str:
    delivery = getattr(request, "delivery_info", None) or {}
    return str(delivery.get("routing_key") or delivery.get("exchange") or UNKNOWN_QUEUE)


def error_code(exc: BaseException) -> str:
    """A stable code for what a task raised: a Cortex error's own code, Celery's time limits by name,
    anything else `internal_error` (its type is in the worker's log, not in a label)."""
    if isinstance(exc, CortexError):
        return exc.code
    name = type(exc).__name__
    if name in ("SoftTimeLimitExceeded", "TimeLimitExceeded"):
        return "time_limit_exceeded"
    if name == "WorkerLostError":
        return "worker_lost"
    return "internal_error"


def task_started(task: Any) -> None:
    """At task_prerun: note the start, and observe how long the message waited (the `enqueued_at` header
    every Cortex message carries, core/publishing.py; a message with an ETA waited from its ETA)."""
    now = redis_clock.broker_now()  # the clock `enqueued_at` was stamped by, not this host's
    request = task.request
    request.__dict__[_STARTED] = time.perf_counter()
    enqueued_at = getattr(request, "enqueued_at", None)
    if not isinstance(enqueued_at, (int, float)):
        return
    waited_from = float(enqueued_at)
    eta = getattr(request, "eta", None)
    if eta:
        try:
            waited_from = max(waited_from, datetime.fromisoformat(str(eta)).timestamp())
        except ValueError:
            pass
    _task_series(task.name, queue_of(request))[1].observe(max(0.0, now - waited_from))


def task_finished(task: Any) -> None:
    """At task_postrun (whatever the outcome): observe the task's duration."""
    started = task.request.__dict__.pop(_STARTED, None)
    if started is not None:
        _task_series(task.name, queue_of(task.request))[0].observe(time.perf_counter() - started)


def task_failed(task: Any, exc: BaseException) -> None:
    TASK_FAILURES.labels(task.name, queue_of(task.request), error_code(exc)).inc()
