"""Celery tasks of the stream worker's queue, and the bootstep that runs its consumer loop (consumer.py).

Task bodies are thin: read the message, call the service, return JSON.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import redis
from celery import bootsteps

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import StreamPurgeMessage
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.queues import STREAMS
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.streams import metrics
from cortex_tasks.core.streams.service import purge_stored

log = logging.getLogger(__name__)


@app.task(name=task_names.STREAMS_PURGE_STREAM, soft_time_limit=600, time_limit=900, acks_late=True)
def purge_stream(**kwargs: Any) -> dict[str, Any]:
    """Remove a deleted stream's stored windows and verdicts and its per-key state (its tenant is entered
    by the worker's prerun hook from the message)."""
    try:
        message = read_message(StreamPurgeMessage, kwargs)
    except MessageRefused as exc:
        log.error("stream purge message refused: %s", exc)
        return {"refused": str(exc)}
    client = redis.Redis.from_url(get_settings().redis_url)
    removed = purge_stored(client, message.stream, message.stream_id, datetime.fromisoformat(message.deleted_at))
    metrics.forget(client, message.tenant, message.stream)
    return {"stream": message.stream, **removed}


class StreamConsumerStep(bootsteps.StartStopStep):
    """Runs the stream consumer loop in a worker that consumes the `streams` queue (workers/stream.py)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.consumer: Any = None

    def start(self, worker: Any) -> None:
        consumed = app.amqp.queues.consume_from or {}
        if STREAMS not in consumed:
            return
        from cortex_tasks.runtime.streams.consumer import StreamConsumer

        self.consumer = StreamConsumer()
        self.consumer.start()

    def stop(self, worker: Any) -> None:
        if self.consumer is not None:
            self.consumer.stop()
            self.consumer = None


app.steps["worker"].add(StreamConsumerStep)
