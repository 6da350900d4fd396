"""The multi-level cache through the API: hits skip the queue, partial hits send only the misses,
hit counters are exported, and L2 stays within its size bound."""
from __future__ import annotations

import time
import uuid

import pytest
import redis

from cortex_tasks.core.cache.layers import RedisCache
from cortex_tasks.core.jobs import store
from cortex_tasks.core.settings import get_settings
from tests.support.waiting import wait_for

# These tests read or write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("in_default_tenant")


def test_repeat_is_answered_from_the_cache_without_a_job(api, workers):
    texts = [f"cache me {uuid.uuid4()}", f"and me {uuid.uuid4()}"]
    first = api.post("/api/v1/predict", {"task": "embed", "inputs": texts}).get_json()
    assert first["cached"] is False and first["job_id"]
    again = api.post("/api/v1/predict", {"task": "embed", "inputs": texts}).get_json()
    assert again["cached"] is True and again["job_id"] is None
    assert again["outputs"] == first["outputs"]
    # Whitespace and Unicode compatibility forms normalise to the same key.
    spaced = api.post("/api/v1/predict", {"task": "embed", "inputs": ["  " + texts[0].replace(" ", "  ")]})
    assert spaced.get_json()["cached"] is True


def test_partial_hit_sends_only_the_misses(api, workers):
    known, new = f"known {uuid.uuid4()}", f"new {uuid.uuid4()}"
    api.post("/api/v1/predict", {"task": "embed", "inputs": [known]})
    body = api.post("/api/v1/predict", {"task": "embed", "inputs": [new, known]}).get_json()
    assert body["cached"] is False and body["cached_items"] == 1
    assert len(body["outputs"]) == 2 and all(len(vector) == 384 for vector in body["outputs"])
    job = wait_for(lambda: store.get_job(body["job_id"]), 30, "the job's row (written just after its answer)")
    assert job.progress_total == 1  # only the miss went to the worker


def test_params_are_part_of_the_key(api, workers):
    text = f"I love this {uuid.uuid4()}"
    first = api.post("/api/v1/predict", {"task": "sentiment", "inputs": [text], "wait": 30}).get_json()
    other = api.post("/api/v1/predict", {"task": "sentiment", "inputs": [text], "params": {"top_k": 1},
                                         "wait": 30}).get_json()
    assert first["cached"] is False and other["cached"] is False


def test_cache_health_and_metrics(api, app, workers):
    text = f"counted {uuid.uuid4()}"
    api.post("/api/v1/predict", {"task": "embed", "inputs": [text]})
    api.post("/api/v1/predict", {"task": "embed", "inputs": [text]})
    # The worker fills L2 just after it has answered.
    stats = wait_for(lambda: (found := api.get("/api/v1/health/cache").get_json())["l2"]["entries"] and found,
                     10, "the worker's L2 entry")
    assert stats["enabled"] is True and stats["hits"] >= 1 and 0 < stats["hit_rate"] <= 1
    assert stats["l2"]["entries"] >= 1 and stats["l2"]["bytes"] > 0
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'cortex_cache_lookups_total{layer="l1",result="hit"}' in metrics


def test_l2_is_trimmed_to_its_size_bound():
    client = redis.Redis.from_url(get_settings().redis_url)
    prefix = uuid.uuid4().hex
    cache = RedisCache(client, max_bytes=20_000, ttl=60, max_item_bytes=5_000, trim_every=10_000,
                       index_key=f"test-index-{prefix}", bytes_key=f"test-bytes-{prefix}")
    for i in range(60):  # one write each: entries expire (and are trimmed) in the order they were written
        cache.put_many([(f"cortex:cache:v1:{prefix}:{i}", b"x" * 1000)])
        time.sleep(0.001)
    cache.put_many([(f"cortex:cache:v1:{prefix}:big", b"x" * 6000)])  # over the per-key limit: not stored
    assert client.get(f"cortex:cache:v1:{prefix}:big") is None
    cache.trim()
    assert int(client.get(f"test-bytes-{prefix}")) <= 20_000
    assert client.get(f"cortex:cache:v1:{prefix}:59") is not None  # the newest survive
    assert client.get(f"cortex:cache:v1:{prefix}:0") is None


def test_warming_recomputes_frequent_queries_into_l2(api, workers):
    from cortex_tasks.core.cache.service import get_cache
    from cortex_tasks.core.cache.warming import QUERY_COUNTER, effectiveness, warm_cache

    text = f"a frequent question {uuid.uuid4()}"
    for _ in range(3):
        api.post("/api/v1/predict", {"task": "embed", "inputs": [text]})
    QUERY_COUNTER.flush()
    cache = get_cache()
    cache.l2.clear()  # as if the entries had expired
    cache.l1.clear()
    report = warm_cache(min_frequency=3)
    assert report["sent_for_warming"] >= 1 and report["hit_rate_before"] == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and effectiveness(min_frequency=3)["hit_rate_now"] != 1:
        time.sleep(0.2)
    assert effectiveness(min_frequency=3)["hit_rate_now"] == 1
    assert api.post("/api/v1/predict", {"task": "embed", "inputs": [text]}).get_json()["cached"] is True


def test_query_counts_reach_redis_by_themselves_off_the_request_thread():
    """The gateway's query counts (for warming) are flushed every few seconds by a helper thread."""
    import threading

    from cortex_tasks.core.cache.warming import FREQUENCY_KEY, QueryCounter

    counter = QueryCounter()
    flushed_on: list[str] = []
    original_flush = counter.flush

    def flush() -> None:
        flushed_on.append(threading.current_thread().name)
        original_flush()

    counter.flush = flush  # type: ignore[method-assign]
    text = f"a counted question {uuid.uuid4()}"
    counter.record("embed", "all-MiniLM-L6-v2", "{}", [text])
    assert not flushed_on  # not due yet
    counter._last_flush -= 60  # as if the last flush was a minute ago
    counter.record("embed", "all-MiniLM-L6-v2", "{}", [text])
    client = redis.Redis.from_url(get_settings().redis_url)
    member = f'["embed", "all-MiniLM-L6-v2", "{{}}", "{text}"]'
    key = FREQUENCY_KEY + str(int(time.time() // 3600))
    assert wait_for(lambda: client.zscore(key, member), 10, "the counts to reach Redis") == 2
    assert flushed_on and flushed_on[0] != threading.current_thread().name
