"""Which version of a model serves a caller: sticky canary routing, read through a short-lived cache.

A caller's bucket is a hash of (caller id, model), a number in [0, 100): callers below the canary's
traffic share get the canary, everyone else production. The same key always lands in the same bucket,
so a caller sees one version consistently; raising the share only adds callers to the canary.

Each process caches the serving table per model. A promotion bumps the registry generation in Redis; a
process checks it at most every `GENERATION_CHECK_SECONDS` and drops its cache when it moved, so
gateways and workers follow promotions within about that time and without a restart. The cache also
expires after `CACHE_TTL_SECONDS`, which bounds staleness if Redis is unreachable.

Registered models belong to a tenant: the serving table is read within the tenant in scope and cached
under (tenant, model), so two tenants' models of the same name route each to its own versions.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass

import redis

from cortex_tasks.core.registry import records
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import current_tenant

GENERATION_CHECK_SECONDS = 0.5
CACHE_TTL_SECONDS = 10.0

_clients: dict[int, redis.Redis] = {}


def redis_client() -> redis.Redis:
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(get_settings().redis_url, socket_timeout=2)
    return client


def bucket_of(caller_id: str, model: str) -> float:
    """The caller's place in [0, 100) for this model; uniform over callers, fixed per caller."""
    digest = hashlib.sha256(f"{caller_id}\x00{model}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass(frozen=True)
class Choice:
    model: str
    version: int
    stage: str  # production | canary
    bucket: float

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "version": self.version, "stage": self.stage,
                "reference": f"{self.model}@{self.version}", "bucket": round(self.bucket, 3)}


class ServingCache:
    def __init__(self, ttl: float = CACHE_TTL_SECONDS, check_every: float = GENERATION_CHECK_SECONDS) -> None:
        self.ttl, self.check_every = ttl, check_every
        self._entries: dict[tuple[str, str], tuple[float, records.Serving | None]] = {}
        self._generation: bytes | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def _check_generation(self, now: float) -> None:
        if now - self._checked_at < self.check_every:
            return
        self._checked_at = now
        try:
            generation = redis_client().get(records.GENERATION_KEY)
        except redis.RedisError:
            return
        if generation != self._generation:
            with self._lock:
                self._entries.clear()
                self._generation = generation

    def get(self, model: str) -> records.Serving | None:
        now = time.monotonic()
        self._check_generation(now)
        key = (current_tenant(), model)
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        value = records.serving(model)
        with self._lock:
            self._entries[key] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = ServingCache()


def serving_cache() -> ServingCache:
    return _cache


def choose_version(model: str, caller_id: str, cache: ServingCache | None = None) -> Choice | None:
    """The version that serves `caller_id` for `model`; None if the model is not in the registry or has
    neither a production nor a canary version (callers then use the catalogue's model, or a pin)."""
    table = (cache or _cache).get(model)
    if table is None:
        return None
    bucket = bucket_of(caller_id, model)
    if table.canary is not None and (bucket < table.canary_traffic or table.production is None):
        return Choice(model, table.canary, records.CANARY, bucket)
    if table.production is not None:
        return Choice(model, table.production, records.PRODUCTION, bucket)
    return None


def routed_reference(reference: str, caller_id: str) -> str:
    """The model reference a request should run: a bare name of a registered model becomes
    `name@<version>` for this caller (canary or production, sticky per caller); pins (`name@3`) and
    models the registry does not deploy pass through unchanged. For the gateway's predict path."""
    if "@" in reference:
        return reference
    choice = choose_version(reference, caller_id)
    return reference if choice is None else f"{reference}@{choice.version}"
