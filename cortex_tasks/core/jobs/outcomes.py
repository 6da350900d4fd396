"""How finished jobs' outcomes reach the gateway that waits for them: one Redis PUBLISH per message, to
the reply channel the gateway named in it. No polling; the job rows stay the durable record.

Rows written after their answers go out with them as copies, read by GET /jobs/{id} until the row is written
(core/jobs/write_behind.py)."""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import orjson
import redis

from cortex_tasks.core.settings import get_settings

REPLY_CHANNEL_PREFIX = "cortex:replies:"
COPY_KEY_PREFIX = "cortex:jobs:written-behind:"
# A copy outlives its row's write by far (milliseconds): it only has to cover a worker that died before the
# write, until the message's next delivery writes the row.
COPY_SECONDS = 600


def copy_key(job_id: str) -> str:
    return f"{COPY_KEY_PREFIX}{job_id}"


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def publish_outcomes(reply_to: str | None, message_id: str | None, outcomes: dict[str, Any],
                     copies: Mapping[str, bytes] | None = None) -> None:
    """`copies`: rows still being written (core/jobs/write_behind.py), stored for GET /jobs/{id} in the same
    round trip, before the outcomes are published."""
    to_caller = bool(reply_to and reply_to.startswith(REPLY_CHANNEL_PREFIX))
    if not to_caller and not copies:
        return
    try:
        pipe = redis_client().pipeline(transaction=False)
        for job_id, copy in (copies or {}).items():
            pipe.set(copy_key(job_id), copy, ex=COPY_SECONDS)
        if to_caller:
            pipe.publish(reply_to, orjson.dumps({"message_id": message_id, "outcomes": outcomes}))
        pipe.execute()
    except redis.RedisError:
        pass  # the waiting gateway falls back to the job rows


def publish_outcome(reply_to: str | None, job_id: str, outcome: dict[str, Any]) -> None:
    """The outcome of a single-job message (tasks that run one job per message)."""
    publish_outcomes(reply_to, None, {job_id: outcome})
