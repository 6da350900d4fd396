"""A worker announces itself once its models are loaded, and keeps the announcement alive while it runs."""
from __future__ import annotations

import json
import time

import redis

from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.worker_records import READY_KEY_PREFIX, READY_TTL_SECONDS


def test_readiness_is_refreshed_by_heartbeats(workers, app):
    client = redis.Redis.from_url(get_settings().redis_url)
    key = READY_KEY_PREFIX + workers["gpu"].hostname
    status = json.loads(client.get(key))
    assert "all-MiniLM-L6-v2" in status["models"] and "gpu" in status["queues"]
    client.expire(key, 30)  # as if it were about to lapse
    time.sleep(5)  # heartbeats come every 2 s
    assert client.ttl(key) > READY_TTL_SECONDS - 10
    ready = app.test_client().get("/ready").get_json()
    assert {"gpu", "nlp"} <= set(ready["queues_served"])
