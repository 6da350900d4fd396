"""Worker readiness records in Redis: a worker that has loaded its models writes `cortex:workers:<hostname>`
(its queues, models, failures and batching) and refreshes it with every heartbeat; `/ready`, `cortex up`
and the health views read these records. A worker that dies stops refreshing, and its record expires.

A model that failed to load is recorded as a code and a short message, never the exception's text: that
can hold paths, URLs with credentials or a library's internals, and the record is shown to API callers.
The worker's log has the whole traceback."""
from __future__ import annotations

import json
from typing import Any

import redis

READY_KEY_PREFIX = "cortex:workers:"
READY_TTL_SECONDS = 120


# Exception types a model load commonly fails with, by what the operator should look at; the first match
# wins (FileNotFoundError is an OSError).
LOAD_FAILURE_CODES: tuple[tuple[type[BaseException], str, str], ...] = (
    (FileNotFoundError, "model_files_missing", "the model's files were not found"),
    (ImportError, "dependency_missing", "a library the model needs is not installed"),
    (MemoryError, "out_of_memory", "the worker ran out of memory loading it"),
    (OSError, "model_files_unreadable", "the model's files could not be read"),
)
LOAD_FAILED = "model_load_failed"


def load_failure(exc: BaseException) -> dict[str, str]:
    """What a record says about a model that failed to load: a stable code and a short message naming
    the exception's type only."""
    for kind, code, meaning in LOAD_FAILURE_CODES:
        if isinstance(exc, kind):
            break
    else:
        code, meaning = LOAD_FAILED, "it raised an error"
    return {"code": code, "message": f"{meaning} ({type(exc).__name__}); the worker's log has the details"}


def shown_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its failures as code and message, whatever wrote it (a worker of an earlier version
    wrote the exception's text)."""
    failed = record.get("failed_models")
    if isinstance(failed, dict):
        record["failed_models"] = {
            str(name): failure if isinstance(failure, dict) and set(failure) == {"code", "message"}
            else {"code": LOAD_FAILED, "message": "it raised an error; the worker's log has the details"}
            for name, failure in failed.items()}
    return record


def ready_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """The records of every worker that is ready now (expired ones are gone)."""
    keys = list(client.scan_iter(match=READY_KEY_PREFIX + "*", count=100))
    return [shown_record(json.loads(raw)) for raw in client.mget(keys) if raw] if keys else []
