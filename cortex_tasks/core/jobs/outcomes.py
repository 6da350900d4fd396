"""How finished jobs' outcomes reach the gateway that waits for them: one Redis PUBLISH per message, to
the reply channel the gateway named in it. No polling; the job rows stay the durable record."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
import redis

from cortex_tasks.core.settings import get_settings

REPLY_CHANNEL_PREFIX = "cortex:replies:"


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def publish_outcomes(reply_to: str | None, message_id: str | None, outcomes: dict[str, Any]) -> None:
    if not reply_to or not reply_to.startswith(REPLY_CHANNEL_PREFIX):
        return
    try:
        _client().publish(reply_to, orjson.dumps({"message_id": message_id, "outcomes": outcomes}))
    except redis.RedisError:
        pass  # the waiting gateway falls back to the job rows


def publish_outcome(reply_to: str | None, job_id: str, outcome: dict[str, Any]) -> None:
    """The outcome of a single-job message (tasks that run one job per message)."""
    publish_outcomes(reply_to, None, {job_id: outcome})
