"""Streaming generation: tokens go out on a per-job Redis channel as they are produced.

The gateway subscribes to `cortex:stream:<job_id>` before it enqueues the job and relays each event as
Server-Sent Events. When its client disconnects it sets `cortex:stop:<job_id>`; the generating loop
checks that flag between tokens and stops, and the job is recorded as cancelled.
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any

import redis

from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.jobs.token_stream import STOP_KEY_PREFIX, STREAM_CHANNEL_PREFIX
from cortex_tasks.core.openai.config import is_openai_model
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.usage.worker_time import worker_time
from cortex_tasks.runtime.models.loaded import get_model


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def stop_requested(job_id: str) -> bool:
    return bool(_client().exists(STOP_KEY_PREFIX + job_id))


def publish_event(job_id: str, event: dict[str, Any]) -> None:
    _client().publish(STREAM_CHANNEL_PREFIX + job_id, json.dumps(event, separators=(",", ":")))


def stream_generation(job_id: str, model_name: str, inputs: list[str], params: dict[str, Any],
                      sensitive: bool = False) -> str:
    """Generate for each input in turn, publishing tokens; returns the job's final status."""
    attempt = store.begin_attempt(job_id, get_settings().max_deliveries)
    if attempt is None:
        job = store.get_job(job_id)
        status = job.status if job else store.FAILED
        publish_event(job_id, {"type": "done", "status": status})
        return status
    model = get_model(model_name)
    outputs: list[Any] = []
    # The usage ledger's worker time: generation runs one input at a time, so the job's own wall time
    # of generating is its model time (OpenAI models are billed in tokens instead).
    started = time.perf_counter()
    timed = not is_openai_model(model_name)
    try:
        for index, text in enumerate(inputs):
            pieces: list[str] = []
            tokens = model.stream(text, params)
            try:
                for piece in tokens:
                    if stop_requested(job_id):
                        store.cancel_job(job_id, "the client disconnected from the stream")
                        publish_event(job_id, {"type": "done", "status": store.CANCELLED})
                        return store.CANCELLED
                    pieces.append(piece)
                    publish_event(job_id, {"type": "token", "index": index, "text": piece})
            finally:
                tokens.close()  # stops the generating thread at its next token
            outputs.append({"text": "".join(pieces)})
            summary = getattr(model, "stream_summary", None)  # token counts and finish reason, where known
            if summary is not None:
                outputs[-1].update(summary(text, outputs[-1]["text"], params))
            publish_event(job_id, {"type": "item", "index": index, "output": outputs[-1]})
    except JobInputError as exc:
        error = {"code": exc.code, "message": str(exc)}
        store.fail_job(job_id, error)
        publish_event(job_id, {"type": "error", "error": error})
        return store.FAILED
    except Exception as exc:
        error = {"code": "model_error", "message": f"{type(exc).__name__}: {exc}"}
        store.fail_job(job_id, error)
        publish_event(job_id, {"type": "error", "error": error})
        return store.FAILED
    result = {"task": "generate", "model": {"name": model.info.name, "version": model.info.version},
              "outputs": outputs}
    usage = worker_time("generate", "gpu", len(inputs), time.perf_counter() - started) if timed else None
    store.finish_job(job_id, result, sensitive=sensitive, usage=usage)
    publish_event(job_id, {"type": "done", "status": store.SUCCEEDED})
    return store.SUCCEEDED
