"""An agent run as Server-Sent Events (POST /api/v1/agents/{name}/run with "stream": true): `start` with
the job id, one `step` per model call (its tool calls with arguments, results and tokens), then `done` with
the job's result, or `error`. The worker publishes each step on the job's stream channel
(core/jobs/token_stream.py), which this gateway subscribes to before the job is queued, so no step is
missed; a client that goes away raises the job's stop flag, and the run stops before its next step."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from flask import Response, stream_with_context

from cortex_tasks import app as celery_app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import AgentRunMessage
from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.token_stream import STOP_KEY_PREFIX, STREAM_CHANNEL_PREFIX
from cortex_tasks.core.queues import GPU
from cortex_web.auth import in_request_tenant
from cortex_web.dispatch import redis_client
from cortex_web.metrics import JOBS_SUBMITTED

# A step is one model call and its tools: a first one may also wait for the worker to load its models.
IDLE_TIMEOUT_SECONDS = 300.0
StreamEvent = tuple[str, Any]


def agent_events(new_job: store.NewJob, message: Callable[[str], AgentRunMessage]
                 ) -> Generator[StreamEvent, None, None]:
    client = redis_client()
    job_id = store.new_job_id()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(STREAM_CHANNEL_PREFIX + job_id)  # before the job exists, so no step is missed
    finished = False
    try:
        kwargs = message(job_id).to_kwargs()  # built before the row: a refused message leaves no job
        store.create_job(new_job, job_id=job_id)
        celery_app.send_task(task_names.AGENTS_RUN_AGENT, kwargs=kwargs, task_id=job_id, queue=GPU,
                             priority=new_job.priority)
        JOBS_SUBMITTED.labels(new_job.kind, new_job.task, GPU).inc()
        yield "start", {"job_id": job_id}
        last_event = time.monotonic()
        while time.monotonic() - last_event < IDLE_TIMEOUT_SECONDS:
            received = pubsub.get_message(timeout=1.0)
            if received is None or received.get("type") != "message":
                continue
            last_event = time.monotonic()
            event = json.loads(received["data"])
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
            yield kind, {"job_id": job_id, **event}
        yield "error", {"job_id": job_id, "error": {"code": "timeout", "message": "no step for too long; poll "
                                                                                   "the job's status URL"}}
    finally:
        if not finished:  # the client went away (or we gave up): stop the run before its next step
            client.set(STOP_KEY_PREFIX + job_id, 1, ex=600)
        pubsub.close()


def events_response(events: Generator[StreamEvent, None, None]) -> Response:
    def written() -> Iterator[str]:
        try:
            for event, data in events:
                yield f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        finally:
            events.close()

    return Response(stream_with_context(in_request_tenant(written())), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
