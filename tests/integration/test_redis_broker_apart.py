"""CORTEX_BROKER_URL naming a Redis other than REDIS_URL's: the queues are lists there, and what Cortex reads
from them (the gateway's queue depths, load shedding's depth and age) reads that Redis, not REDIS_URL's."""
from __future__ import annotations

import os
import uuid
from urllib.parse import urlparse, urlunparse

import redis

from cortex_tasks.core.load_control.shedding import LoadShedder, SheddingPolicy
from cortex_tasks.core.queues import NLP
from cortex_tasks.core.settings import reset_settings_cache
from tests.support.brokers import Broker


def test_queue_depth_and_age_are_read_from_the_brokers_redis(monkeypatch):
    from cortex_web.dispatch import queue_depths

    broker_url = urlunparse(urlparse(os.environ["REDIS_URL"])._replace(path="/4"))
    broker_redis = redis.Redis.from_url(broker_url)
    broker_redis.flushdb()
    monkeypatch.setenv("CORTEX_BROKER_URL", broker_url)
    reset_settings_cache()
    cache_redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        before = queue_depths(cache_redis)[NLP]
        for _ in range(3):
            Broker("redis-apart", broker_url).send_task("cortex.testing.never_run", queue=NLP,
                                                        kwargs={"marker": uuid.uuid4().hex})
        assert queue_depths(cache_redis)[NLP] == before + 3 == 3
        load = LoadShedder(cache_redis, SheddingPolicy(refresh_seconds=0)).load(NLP)
        assert load.depth == 3 and load.oldest_age > 0.0
        assert not any(cache_redis.llen(name) for name in (NLP, f"{NLP}:4"))  # nothing went to REDIS_URL's
    finally:
        broker_redis.flushdb()
