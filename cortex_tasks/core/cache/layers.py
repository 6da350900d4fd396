"""The two cache layers: L1 in-process (LRU with TTL, bounded in bytes), L2 Redis (TTL, bounded in bytes).

Values are JSON-encoded outputs. A value larger than the per-key limit is never cached (it would evict
many small, useful entries). L2 keeps an index of its entries (sorted by expiry, with sizes) so that it
can trim itself to its size bound without touching anything else in Redis (queues must never be evicted,
so Redis itself runs with `noeviction`).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import orjson
import redis
from prometheus_client import Counter, Gauge

from cortex_tasks.core import redis_clock
from cortex_tasks.core.cache.keys import PREFIX

L2_INDEX = "cortex:cache-index:v1"
L2_BYTES = "cortex:cache-bytes:v1"
MISSING = object()

CACHE_LOOKUPS = Counter("cortex_cache_lookups_total", "Cache lookups by layer and result",
                        ["layer", "result"])
# Summed over the live processes of a multi-process gateway (gunicorn_conf.py).
L1_ENTRIES = Gauge("cortex_cache_l1_entries", "Entries in the in-process caches (L1)", multiprocess_mode="livesum")
L1_BYTES = Gauge("cortex_cache_l1_bytes", "Bytes held by the in-process caches (L1)", multiprocess_mode="livesum")


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


class MemoryCache:
    """L1: thread-safe LRU with a TTL per entry and a bound on total bytes."""

    def __init__(self, max_bytes: int, ttl: float, max_item_bytes: int) -> None:
        self.max_bytes, self.ttl, self.max_item_bytes = max_bytes, ttl, max_item_bytes
        self._entries: OrderedDict[str, tuple[float, int, Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] < now:
                if entry is not None:
                    self._drop(key)
                CACHE_LOOKUPS.labels("l1", "miss").inc()
                return MISSING
            self._entries.move_to_end(key)
        CACHE_LOOKUPS.labels("l1", "hit").inc()
        return entry[2]

    def put(self, key: str, value: Any, size: int) -> None:
        if size > self.max_item_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (time.monotonic() + self.ttl, size, value)
            self._bytes += size
            L1_ENTRIES.inc()
            L1_BYTES.inc(size)
            while self._bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self._bytes -= size
        L1_ENTRIES.dec()
        L1_BYTES.dec(size)

    def clear(self) -> None:
        with self._lock:
            L1_ENTRIES.dec(len(self._entries))
            L1_BYTES.dec(self._bytes)
            self._entries.clear()
            self._bytes = 0


# Trim: drop expired entries from the index (by Redis's clock), then the oldest-expiring ones until under the bound.
_TRIM = redis_clock.LUA_NOW + """
local index, counter, bound = KEYS[1], KEYS[2], tonumber(ARGV[1])
local removed = 0
local function forget(member)
  local sep = string.find(member, '|', 1, true)
  redis.call('DEL', string.sub(member, 1, sep - 1))
  redis.call('DECRBY', counter, tonumber(string.sub(member, sep + 1)))
  redis.call('ZREM', index, member)
  removed = removed + 1
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 1000)) do forget(member) end
while tonumber(redis.call('GET', counter) or '0') > bound do
  local oldest = redis.call('ZRANGE', index, 0, 99)
  if #oldest == 0 then redis.call('SET', counter, 0) break end
  for _, member in ipairs(oldest) do
    forget(member)
    if tonumber(redis.call('GET', counter) or '0') <= bound then break end
  end
end
return removed
"""


class RedisCache:
    """L2: shared by every gateway and worker; entries expire and the total size is bounded."""

    def __init__(self, client: redis.Redis, max_bytes: int, ttl: int, max_item_bytes: int,
                 trim_every: int = 200, index_key: str = L2_INDEX, bytes_key: str = L2_BYTES) -> None:
        self.client, self.max_bytes, self.ttl, self.max_item_bytes = client, max_bytes, ttl, max_item_bytes
        self.index_key, self.bytes_key = index_key, bytes_key
        self.trim_every = trim_every
        self._writes = 0
        self._trim = client.register_script(_TRIM)

    def get_many(self, keys: list[str]) -> list[Any]:
        if not keys:
            return []
        raw = self.client.mget(keys)
        values = []
        for blob in raw:
            if blob is None:
                CACHE_LOOKUPS.labels("l2", "miss").inc()
                values.append(MISSING)
            else:
                CACHE_LOOKUPS.labels("l2", "hit").inc()
                values.append(orjson.loads(blob))
        return values

    def put_many(self, entries: list[tuple[str, bytes]]) -> None:
        entries = [(key, blob) for key, blob in entries if len(blob) <= self.max_item_bytes]
        if not entries:
            return
        # The index's expiry times are Redis's clock, as the trim compares them (below): by each process's
        # own, one whose clock ran ahead dropped entries written by the others before their time.
        expires = redis_clock.now(self.client) + self.ttl
        pipe = self.client.pipeline(transaction=False)
        for key, blob in entries:
            pipe.set(key, blob, ex=self.ttl)
            pipe.zadd(self.index_key, {f"{key}|{len(blob)}": expires})
        pipe.incrby(self.bytes_key, sum(len(blob) for _, blob in entries))
        pipe.execute()
        self._writes += len(entries)
        if self._writes >= self.trim_every:
            self._writes = 0
            self.trim()

    def trim(self) -> int:
        return int(self._trim(keys=[self.index_key, self.bytes_key], args=[self.max_bytes]))

    def stats(self) -> dict[str, Any]:
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.index_key)
        pipe.get(self.bytes_key)
        entries, size = pipe.execute()
        return {"entries": int(entries), "bytes": int(size or 0), "max_bytes": self.max_bytes,
                "ttl_seconds": self.ttl}

    def clear(self) -> None:
        keys = list(self.client.scan_iter(match=PREFIX + "*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start:start + 500])
        self.client.delete(self.index_key, self.bytes_key)
