"""How a finished job's outcome reaches the gateway that waits for it: one Redis PUBLISH to the reply
channel the gateway named in the task message. No polling; the job row stays the durable record."""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import redis

from cortex_tasks.settings import get_settings

REPLY_CHANNEL_PREFIX = "cortex:replies:"


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def publish_outcome(reply_to: str | None, job_id: str, outcome: dict[str, Any]) -> None:
    if not reply_to or not reply_to.startswith(REPLY_CHANNEL_PREFIX):
        return
    try:
        _client().publish(reply_to, json.dumps({"job_id": job_id, **outcome}, separators=(",", ":")))
    except redis.RedisError:
        pass  # the waiting gateway falls back to the job row
