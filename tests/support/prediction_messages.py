"""Prediction messages sent straight to a worker, as the gateway's coalescer sends them, and the outcomes
the worker publishes on the message's reply channel."""
from __future__ import annotations

import uuid

import orjson
import redis

from cortex_tasks import app as celery_app
from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.outcomes import REPLY_CHANNEL_PREFIX
from cortex_tasks.core.settings import get_settings
from tests.support.waiting import wait_for


def send_gpu_message(jobs: list[dict], message_id: str, queue: str = "gpu", timeout: float = 120) -> dict:
    """Send a gpu message of embed jobs as the gateway does and return the outcomes the worker replies."""
    channel = f"{REPLY_CHANNEL_PREFIX}{message_id}-{uuid.uuid4().hex[:6]}"
    subscriber = redis.Redis.from_url(get_settings().redis_url).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(channel)
    try:
        celery_app.send_task("cortex.inference.run_gpu_jobs", queue=queue, kwargs={
            "task": "embed", "model": "all-MiniLM-L6-v2", "params": {}, "reply_to": channel,
            "message_id": message_id, "jobs": jobs})
        reply = wait_for(lambda: subscriber.get_message(timeout=1), timeout, "the worker's reply")
    finally:
        subscriber.close()
    return orjson.loads(reply["data"])["outcomes"]


def gateway_job(inputs: list[str]) -> dict:
    """An embed job as a gateway puts it in a message: its id, inputs and the record its row is made from
    (in the tenant in scope)."""
    record = store.job_record(store.NewJob(owner="delivery-test", kind="predict", task="embed",
                                           model="all-MiniLM-L6-v2", total=len(inputs)))
    return {"job_id": store.new_job_id(), "inputs": inputs, "record": record}
