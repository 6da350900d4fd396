"""`cortex worker-ready <kind>`: whether the worker of this kind on this host has loaded its models.

A worker announces itself in Redis once its models are loaded (`cortex:workers:<kind>@<host>`,
core/worker_records.py) and refreshes the record with every heartbeat; a worker that hangs or dies stops
refreshing and the record expires. Reading that record is the worker's own check: the compose health
check and the Kubernetes readiness probe run this command inside the worker's container, where the host
name is the container's (Celery's `%h` in the `-n <kind>@%h` that `cortex worker` passes).
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

import redis

from cortex_tasks.core.worker_records import READY_KEY_PREFIX, shown_record

# A probe that waits longer than this on Redis tells the orchestrator nothing useful.
REDIS_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Readiness:
    ready: bool
    message: str


def node_name(kind: str, hostname: str | None = None) -> str:
    return f"{kind}@{hostname or socket.gethostname()}"


def readiness(client: redis.Redis, kind: str, hostname: str | None = None) -> Readiness:
    node = node_name(kind, hostname)
    try:
        raw = client.get(READY_KEY_PREFIX + node)
    except redis.RedisError as exc:
        return Readiness(False, f"{node}: Redis did not answer ({type(exc).__name__})")
    if raw is None:
        return Readiness(False, f"{node}: not ready (no readiness record: still loading its models, or stopped)")
    record: dict[str, Any] = shown_record(json.loads(raw))
    failed = record.get("failed_models") or {}
    # A model that failed to load does not stop the worker serving its other models (as /ready counts it).
    failures = "; ".join(f"{name}: {failure['code']}" for name, failure in sorted(failed.items()))
    return Readiness(True, f"{node}: ready, queues {','.join(record.get('queues', []))}"
                           + (f"; models that failed to load: {failures}" if failures else ""))


def check(redis_url: str, kind: str, hostname: str | None = None) -> Readiness:
    client = redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                  socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
    try:
        return readiness(client, kind, hostname)
    finally:
        client.close()
