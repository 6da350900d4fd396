"""The multi-level prediction cache as one object: look up in L1, then L2; store in both.

Gateways look up before enqueueing (a hit never touches a queue) and remember answers in their L1;
workers store what they compute in L2 (and their own L1), so every gateway and batch job benefits.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import redis
from prometheus_client import Counter

from cortex_tasks.core.cache.keys import cache_key, params_fingerprint
from cortex_tasks.core.cache.layers import MISSING, MemoryCache, RedisCache, encode
from cortex_tasks.core.dependencies import bounded_redis
from cortex_tasks.core.metric_totals import sample_values
from cortex_tasks.core.settings import get_settings

log = logging.getLogger(__name__)

__all__ = ["MISSING", "PredictionCache", "get_cache", "keys_for"]

CACHE_ITEMS = Counter("cortex_cache_items_total", "Items looked up in the cache, by result over both layers",
                      ["result"])


def keys_for(task: str, model: str, version: str, params: dict[str, Any], items: list[Any]) -> list[str]:
    """One key per item. `model` is the catalogue entry's name, which for a tenant's registered model is
    tenant-qualified (`<tenant>/<name>@<version>`, registry/references.py): two tenants' `m@1` are
    different models, and one's answers must never be served to the other. A bundled model's name is
    the same for every tenant, and so are its keys: the same input to the same shared model gives the
    same output whoever asks, so sharing those answers reveals nothing a tenant could not compute itself
    and keeps the hit rate of the common models."""
    params_json = params_fingerprint(params)
    return [cache_key(task, model, version, params_json, item) for item in items]


class PredictionCache:
    def __init__(self, l1: MemoryCache, l2: RedisCache, enabled: bool = True) -> None:
        self.l1, self.l2, self.enabled = l1, l2, enabled

    def lookup(self, keys: list[str], shared: bool = True) -> list[Any]:
        """One value per key, or MISSING. L2 hits are copied into L1; `shared=False` asks L1 only."""
        values = self._lookup(keys) if shared else [self.l1.get(key) for key in keys]
        misses = sum(1 for value in values if value is MISSING)
        if misses < len(values):
            CACHE_ITEMS.labels("hit").inc(len(values) - misses)
        if misses:
            CACHE_ITEMS.labels("miss").inc(misses)
        return values

    def _lookup(self, keys: list[str]) -> list[Any]:
        values = [self.l1.get(key) for key in keys]
        missing = [i for i, value in enumerate(values) if value is MISSING]
        if missing:
            try:
                found = self.l2.get_many([keys[i] for i in missing])
            except redis.RedisError:
                found = [MISSING] * len(missing)  # the cache is an optimisation, never a dependency
            for i, value in zip(missing, found):
                if value is not MISSING:
                    values[i] = value
                    self.l1.put(keys[i], value, len(encode(value)))
        return values

    def remember(self, keys: list[str], values: list[Any]) -> None:
        """L1 only (a gateway keeping what a worker already stored in L2)."""
        for key, value in zip(keys, values):
            self.l1.put(key, value, len(encode(value)))

    def store(self, keys: list[str], values: list[Any]) -> None:
        """L1 and L2 (a worker storing what it computed)."""
        blobs = [encode(value) for value in values]
        for key, value, blob in zip(keys, values, blobs):
            self.l1.put(key, value, len(blob))
        try:
            self.l2.put_many(list(zip(keys, blobs)))
        except redis.RedisError:
            pass

    def stats(self) -> dict[str, Any]:
        """Hits, misses and L1 contents of this process, or of all the gateway's processes together
        (cortex_tasks.core.metric_totals); L2 as Redis holds it."""
        try:
            l2 = self.l2.stats()
        except redis.RedisError as exc:
            # The error's own text names the server; callers get what failed, the log the rest.
            log.warning("cache stats: Redis did not answer: %s", exc)
            l2 = {"error": {"code": "redis_unreachable", "message": f"Redis did not answer ({type(exc).__name__})"}}
        values = sample_values("cortex_cache_items", "cortex_cache_lookups", "cortex_cache_l1_entries",
                               "cortex_cache_l1_bytes")

        def value(sample: str, **labels: str) -> int:
            return int(values.get((sample, tuple(sorted(labels.items()))), 0))

        hits = value("cortex_cache_items_total", result="hit")
        misses = value("cortex_cache_items_total", result="miss")
        return {"enabled": self.enabled, "hits": hits, "misses": misses,
                "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
                "l1": {"entries": value("cortex_cache_l1_entries"), "bytes": value("cortex_cache_l1_bytes"),
                       "max_bytes": self.l1.max_bytes, "ttl_seconds": self.l1.ttl,
                       "hits": value("cortex_cache_lookups_total", layer="l1", result="hit"),
                       "misses": value("cortex_cache_lookups_total", layer="l1", result="miss")},
                "l2": l2}


@lru_cache(maxsize=1)
def get_cache() -> PredictionCache:
    settings = get_settings()
    # Bounded: a cache lookup while Redis is stalled must not hold the request (core/dependencies.py).
    client = bounded_redis(settings.redis_url)
    return PredictionCache(
        MemoryCache(settings.cache_l1_max_bytes, settings.cache_l1_ttl_seconds, settings.cache_max_item_bytes),
        RedisCache(client, settings.cache_l2_max_bytes, settings.cache_l2_ttl_seconds,
                   settings.cache_max_item_bytes),
        enabled=settings.cache_enabled,
    )
