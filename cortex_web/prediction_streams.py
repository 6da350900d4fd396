"""Predictions as a stream of events for /predict/stream: one event per output item, or per generated
token for `generate`, then a final `done` (or `error`) event. Each event is an (event name, data) pair;
the route writes them as Server-Sent Events. A consumer that stops reading stops the generation: the
job's stop flag is raised and the generating worker checks it between tokens."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Generator
from typing import Any

from cortex_tasks import app as celery_app
from cortex_tasks.core.catalogue import ModelEntry, TaskEntry
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import StreamGenerationMessage
from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.token_stream import STOP_KEY_PREFIX, STREAM_CHANNEL_PREFIX
from cortex_tasks.core.openai.billing import billed_params
from cortex_tasks.core.queues import priority_of
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import current_tenant
from cortex_web.auth import current_principal
from cortex_web.dispatch import redis_client
from cortex_web.metrics import JOBS_SUBMITTED
from cortex_web.predictions import run_prediction

IDLE_TIMEOUT_SECONDS = 120.0
StreamEvent = tuple[str, Any]


def item_events(task: TaskEntry, model: ModelEntry, inputs: list[Any], params: dict[str, Any],
                priority_class: str, sensitive: bool = False) -> Generator[StreamEvent, None, None]:
    """Run the prediction as usual, then hand out its outputs one item at a time."""
    prediction = run_prediction(task, model, inputs, params, priority_class, get_settings().max_wait_seconds,
                                sensitive=sensitive)
    yield "start", {"job_id": prediction.job_id, "task": task.name}
    outcome = prediction.outcome
    if outcome is None:
        yield "error", {"job_id": prediction.job_id, "error": {
            "code": "timeout", "message": "The job did not finish in time; poll its status URL."}}
        return
    if outcome["status"] != "succeeded":
        yield "error", {"job_id": prediction.job_id, "error": outcome.get("error")}
        return
    result = outcome["result"]
    for index, output in enumerate(result["outputs"]):
        yield "item", {"index": index, "output": output}
    yield "done", {"job_id": prediction.job_id, "status": "succeeded", "model": result["model"],
                   "count": len(result["outputs"])}


def token_events(model_name: str, inputs: list[Any], params: dict[str, Any],
                 priority_class: str, sensitive: bool = False) -> Generator[StreamEvent, None, None]:
    """Start a generation job and relay the tokens its worker publishes, as they come (over pub/sub:
    Redis keeps none of them)."""
    client = redis_client()
    priority = priority_of(priority_class)
    job_id = str(uuid.uuid4())
    params = billed_params(model_name, params, current_principal().key_id)  # OpenAI calls are billed per key

    def submit() -> StreamEvent:
        # Built before the row exists: a message the contract refuses is a bug here, and leaves no queued job.
        generation = StreamGenerationMessage(job_id=job_id, tenant=current_tenant(), model=model_name,
                                             inputs=inputs, params=params, sensitive=sensitive)
        store.create_job(store.NewJob(owner=current_principal().key_id, kind="predict", task="generate",
                                      model=model_name, priority=priority, total=len(inputs),
                                      params=params or None, sensitive=sensitive), job_id=job_id)
        celery_app.send_task(task_names.STREAM_GENERATION, task_id=job_id, priority=priority,
                             kwargs=generation.to_kwargs())
        JOBS_SUBMITTED.labels("predict", "generate", "gpu").inc()
        return "start", {"job_id": job_id, "task": "generate"}

    yield from relayed_job_events(client, job_id, submit, IDLE_TIMEOUT_SECONDS, "no tokens for too long")


def relayed_job_events(client: Any, job_id: str, submit: Callable[[], StreamEvent], idle_timeout: float,
                       idle_message: str, tag_events: bool = False) -> Generator[StreamEvent, None, None]:
    """Subscribe to the job's stream channel, then `submit` it (its first event), then relay what its
    worker publishes until `done` (with the job's result) or `error`, or until nothing came for
    `idle_timeout`. A consumer that stops reading before the end raises the job's stop flag, which the
    worker checks between tokens or steps. `tag_events`: add the job id to every relayed event."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(STREAM_CHANNEL_PREFIX + job_id)  # before the job exists, so no event is missed
    finished = False
    try:
        yield submit()
        last_event = time.monotonic()
        while time.monotonic() - last_event < idle_timeout:
            message = pubsub.get_message(timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            last_event = time.monotonic()
            event = json.loads(message["data"])
            kind = event.pop("type")
            if kind == "done":
                finished = True
                job = store.get_job(job_id)
                result = store.job_result(job)[0] if job else None
                yield "done", {"job_id": job_id, "status": event.get("status"), "result": result}
                return
            if kind == "error":
                finished = True
                yield "error", {"job_id": job_id, **event}
                return
            yield kind, {"job_id": job_id, **event} if tag_events else event
        yield "error", {"job_id": job_id, "error": {"code": "timeout", "message": idle_message}}
    finally:
        if not finished:  # the client went away (or we gave up): stop the job before its next token or step
            client.set(STOP_KEY_PREFIX + job_id, 1, ex=600)
        pubsub.close()
