"""The multi-level prediction cache as one object: look up in L1, then L2; store in both.

Gateways look up before enqueueing (a hit never touches a queue) and remember answers in their L1;
workers store what they compute in L2 (and their own L1), so every gateway and batch job benefits.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis

from cortex_tasks.cache.keys import cache_key, params_fingerprint
from cortex_tasks.cache.layers import MISSING, MemoryCache, RedisCache, encode
from cortex_tasks.settings import get_settings

__all__ = ["MISSING", "PredictionCache", "get_cache", "keys_for"]


def keys_for(task: str, model: str, version: str, params: dict[str, Any], items: list[Any]) -> list[str]:
    params_json = params_fingerprint(params)
    return [cache_key(task, model, version, params_json, item) for item in items]


class PredictionCache:
    def __init__(self, l1: MemoryCache, l2: RedisCache, enabled: bool = True) -> None:
        self.l1, self.l2, self.enabled = l1, l2, enabled
        self.item_hits = self.item_misses = 0  # over both layers, for the hit rate

    def lookup(self, keys: list[str], shared: bool = True) -> list[Any]:
        """One value per key, or MISSING. L2 hits are copied into L1; `shared=False` asks L1 only."""
        values = self._lookup(keys) if shared else [self.l1.get(key) for key in keys]
        misses = sum(1 for value in values if value is MISSING)
        self.item_hits += len(values) - misses
        self.item_misses += misses
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
        try:
            l2 = self.l2.stats()
        except redis.RedisError as exc:
            l2 = {"error": str(exc)}
        looked_up = self.item_hits + self.item_misses
        return {"enabled": self.enabled, "hits": self.item_hits, "misses": self.item_misses,
                "hit_rate": round(self.item_hits / looked_up, 4) if looked_up else None,
                "l1": self.l1.stats(), "l2": l2}


@lru_cache(maxsize=1)
def get_cache() -> PredictionCache:
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    return PredictionCache(
        MemoryCache(settings.cache_l1_max_bytes, settings.cache_l1_ttl_seconds, settings.cache_max_item_bytes),
        RedisCache(client, settings.cache_l2_max_bytes, settings.cache_l2_ttl_seconds,
                   settings.cache_max_item_bytes),
        enabled=settings.cache_enabled,
    )
