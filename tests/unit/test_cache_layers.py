"""The in-process cache layer and the cache keys (no services needed)."""
from __future__ import annotations

import time

from cortex_tasks.core.cache.keys import cache_key
from cortex_tasks.core.cache.layers import MISSING, MemoryCache


def test_lru_eviction_by_bytes():
    cache = MemoryCache(max_bytes=300, ttl=60, max_item_bytes=200)
    for name in ("a", "b", "c"):
        cache.put(name, name, 100)
    cache.get("a")  # a is now the most recently used
    cache.put("d", "d", 100)
    assert cache.get("b") is MISSING and cache.get("a") == "a" and cache.get("d") == "d"


def test_ttl_and_per_key_limit():
    cache = MemoryCache(max_bytes=10_000, ttl=0.05, max_item_bytes=100)
    cache.put("small", 1, 10)
    cache.put("huge", 2, 101)
    assert cache.get("huge") is MISSING
    assert cache.get("small") == 1
    time.sleep(0.06)
    assert cache.get("small") is MISSING


def test_key_depends_on_version_params_and_normalised_input():
    base = cache_key("embed", "m", "1", "{}", "Hello  world")
    assert base == cache_key("embed", "m", "1", "{}", " Hello world ")
    assert base == cache_key("embed", "m", "1", "{}", "Ｈｅｌｌｏ world")  # NFKC
    assert base != cache_key("embed", "m", "2", "{}", "Hello world")  # a promoted version
    assert base != cache_key("embed", "m", "1", '{"top_k":1}', "Hello world")
    assert base != cache_key("classify", "m", "1", "{}", "Hello world")
    assert base != cache_key("embed", "m", "1", "{}", "hello world")  # case is meaningful to models


def test_a_registered_models_results_are_cached_per_tenant():
    from cortex_tasks.core.cache.service import keys_for

    # Two tenants may register "clf" version 1, different models: their (tenant-qualified) keys differ.
    first = keys_for("classify", "team-a/clf@1", "1", {}, ["text"])
    second = keys_for("classify", "team-b/clf@1", "1", {}, ["text"])
    assert first != second
    # A bundled model is everyone's: one key.
    assert keys_for("embed", "all-MiniLM-L6-v2", "1", {}, ["text"]) == keys_for(
        "embed", "all-MiniLM-L6-v2", "1", {}, ["text"])
