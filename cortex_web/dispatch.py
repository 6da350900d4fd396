"""Enqueueing jobs and waiting for their outcomes within a budget."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from flask import Response, current_app, jsonify, url_for

from cortex_tasks import app as celery_app
from cortex_tasks.core import dependencies
from cortex_tasks.core.broker import amqp_depths, redis_holding_queues
from cortex_tasks.core.contracts.job_messages import RepliedJobMessage
from cortex_tasks.core.jobs import store
from cortex_tasks.core.load_control.circuit import CircuitBreaker
from cortex_tasks.core.load_control.shedding import LoadShedder
from cortex_tasks.core.queues import PRIORITY_STEPS, QUEUE_NAMES
from cortex_tasks.core.settings import get_settings
from cortex_web.coalescer import Coalescer
from cortex_web.errors import ApiError
from cortex_web.metrics import JOBS_SUBMITTED
from cortex_web.replies import ReplyListener


@dataclass
class Submitted:
    job_id: str
    outcome: dict[str, Any] | None  # None: not finished within the wait budget


def reply_listener() -> ReplyListener:
    return current_app.extensions["cortex_replies"]


def coalescer() -> Coalescer:
    return current_app.extensions["cortex_coalescer"]


def shedder() -> LoadShedder:
    return current_app.extensions["cortex_shedder"]


def circuit_breaker() -> CircuitBreaker:
    return current_app.extensions["cortex_circuits"]


def redis_client() -> redis.Redis:
    return current_app.extensions["cortex_redis"]


# Builds a task's message from the new job's id and the reply channel (None when nobody waits).
MessageBuilder = Callable[[str, str | None], RepliedJobMessage]


def submit_and_wait(new_job: store.NewJob, task_name: str, queue: str, message: MessageBuilder,
                    wait_seconds: float, job_id: str | None = None) -> Submitted:
    """One job, one message: for tasks that take `job_id` and `reply_to` and publish one outcome
    (cortex_tasks.core.jobs.outcomes.publish_outcome). `job_id`: one the caller chose (store.new_job_id())
    and recorded before, e.g. on the deployment the job activates."""
    listener = reply_listener()
    waiting = wait_seconds > 0
    job_id = job_id or store.new_job_id()
    # Built before the row exists: a message the contract refuses is a bug here, and leaves no queued job.
    kwargs = message(job_id, listener.channel if waiting else None).to_kwargs()
    dependencies.check(dependencies.REDIS)  # no row for a job that cannot be queued now
    job, _ = store.create_job(new_job, job_id=job_id)
    if waiting:
        listener.expect(job.id)
    try:
        celery_app.send_task(task_name, kwargs=kwargs, task_id=job.id, queue=queue, priority=new_job.priority)
    except Exception as exc:
        # Redis went away between the row and the message: the row must not wait as "queued" for a
        # message that does not exist; the client gets the 503 and retries.
        if dependencies.failed_dependency(exc) is None:
            raise
        store.fail_job(job.id, {"code": "dependency_unavailable", "message": "The job could not be queued."})
        raise
    JOBS_SUBMITTED.labels(new_job.kind, new_job.task, queue).inc()
    outcome = listener.wait(job.id, wait_seconds) if waiting else None
    return Submitted(job.id, outcome)


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Length of every queue, summed over kombu's per-priority lists (`gpu`, `gpu:1`, ... `gpu:9`); with
    RabbitMQ as the broker, its ready-message counts (core/broker.py)."""
    settings = get_settings()
    if not settings.broker_is_redis:
        try:
            return amqp_depths(settings.celery_broker_url).depths(QUEUE_NAMES)
        except Exception as exc:
            raise ApiError(503, "broker_unavailable", "The message broker cannot be reached; try again shortly.",
                           headers={"Retry-After": "5"}) from exc
    pipe = redis_holding_queues(client).pipeline(transaction=False)
    for queue in QUEUE_NAMES:
        for step in PRIORITY_STEPS:
            pipe.llen(queue if step == 0 else f"{queue}:{step}")
    lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    return {queue: sum(lengths[i * steps:(i + 1) * steps]) for i, queue in enumerate(QUEUE_NAMES)}


def job_reply(submitted: Submitted, ok_status: int = 200) -> tuple[Response, int]:
    """The job's result if it finished within the wait, a 202 to poll otherwise, its error if it failed."""
    outcome = submitted.outcome
    if outcome is None:
        return jsonify({"job_id": submitted.job_id, "status": "queued",
                        "status_url": url_for("jobs.show_job", job_id=submitted.job_id)}), 202
    if outcome["status"] != "succeeded":
        error = outcome.get("error") or {"code": "job_failed", "message": "the job failed"}
        details = {"job_id": submitted.job_id, **(error.get("details") or {})}
        status = int(details.pop("status", 502 if error.get("code") == "job_failed" else 422))
        raise ApiError(status, error["code"], error["message"], details)
    return jsonify({"job_id": submitted.job_id, **outcome["result"]}), ok_status
