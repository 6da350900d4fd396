"""Worker readiness records in Redis: a worker that has loaded its models writes `cortex:workers:<hostname>`
(its queues, models, failures and batching) and refreshes it with every heartbeat; `/ready`, `cortex up`
and the health views read these records. A worker that dies stops refreshing, and its record expires."""
from __future__ import annotations

import json
from typing import Any

import redis

READY_KEY_PREFIX = "cortex:workers:"
READY_TTL_SECONDS = 120


def ready_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """The records of every worker that is ready now (expired ones are gone)."""
    keys = list(client.scan_iter(match=READY_KEY_PREFIX + "*", count=100))
    return [json.loads(raw) for raw in client.mget(keys) if raw] if keys else []
