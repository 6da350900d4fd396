"""An agent run as Server-Sent Events (POST /api/v1/agents/{name}/run with "stream": true): `start` with
the job id, one `step` per model call (its tool calls with arguments, results and tokens), then `done` with
the job's result, or `error`. The worker publishes each step on the job's stream channel
(core/jobs/token_stream.py), which this gateway subscribes to before the job is queued, so no step is
missed; a client that goes away raises the job's stop flag, and the run stops before its next step."""
from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator

from flask import Response, stream_with_context

from cortex_tasks import app as celery_app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import AgentRunMessage
from cortex_tasks.core.jobs import store
from cortex_tasks.core.queues import GPU
from cortex_web.auth import in_request_tenant
from cortex_web.dispatch import redis_client
from cortex_web.metrics import JOBS_SUBMITTED
from cortex_web.prediction_streams import StreamEvent, relayed_job_events

# A step is one model call and its tools: a first one may also wait for the worker to load its models.
IDLE_TIMEOUT_SECONDS = 300.0


def agent_events(new_job: store.NewJob, message: Callable[[str], AgentRunMessage]
                 ) -> Generator[StreamEvent, None, None]:
    client = redis_client()
    job_id = store.new_job_id()

    def submit() -> StreamEvent:
        kwargs = message(job_id).to_kwargs()  # built before the row: a refused message leaves no job
        store.create_job(new_job, job_id=job_id)
        celery_app.send_task(task_names.AGENTS_RUN_AGENT, kwargs=kwargs, task_id=job_id, queue=GPU,
                             priority=new_job.priority)
        JOBS_SUBMITTED.labels(new_job.kind, new_job.task, GPU).inc()
        return "start", {"job_id": job_id}

    yield from relayed_job_events(client, job_id, submit, IDLE_TIMEOUT_SECONDS,
                                  "no step for too long; poll the job's status URL", tag_events=True)


def events_response(events: Generator[StreamEvent, None, None]) -> Response:
    def written() -> Iterator[str]:
        try:
            for event, data in events:
                yield f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        finally:
            events.close()

    return Response(stream_with_context(in_request_tenant(written())), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
