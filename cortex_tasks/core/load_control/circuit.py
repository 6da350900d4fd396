"""Circuit breaking per model.

Outcomes are counted in Redis in 10-second buckets shared by every gateway. When a model's error rate
over the last `window` seconds reaches the threshold (with at least `min_requests` outcomes), its
circuit opens for `reset_timeout` seconds: requests go to the task's fallback model, or get a 503.
When the timeout passes, traffic is let through again (half-open); if errors continue it re-opens.
Only failures of the model count, never bad input.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import redis
from prometheus_client import Counter, Gauge

from cortex_tasks.core import redis_clock

# Circuits live in Redis: the latest reading of any gateway process is the one to report (gunicorn_conf.py).
CIRCUIT_OPEN = Gauge("cortex_circuit_open", "1 while a model's circuit is open", ["model"],
                     multiprocess_mode="livemostrecent")
CIRCUIT_TRIPS = Counter("cortex_circuit_trips_total", "Times a model's circuit opened", ["model"])
BUCKET_SECONDS = 10


@dataclass(frozen=True)
class CircuitPolicy:
    error_threshold: float = 0.5
    min_requests: int = 5
    window_seconds: int = 30
    reset_timeout_seconds: float = 30.0


class CircuitBreaker:
    def __init__(self, client: redis.Redis, policy: CircuitPolicy, state_ttl: float = 0.5,
                 flush_seconds: float = 0.5) -> None:
        self.client, self.policy, self.state_ttl, self.flush_seconds = client, policy, state_ttl, flush_seconds
        self._known: dict[str, tuple[float, bool]] = {}  # model -> (valid until, open)
        self._pending: dict[str, list[int]] = {}  # model -> [ok, failed] not yet in Redis
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    @staticmethod
    def _open_key(model: str) -> str:
        return f"cortex:circuit:{model}:open"

    def _bucket_key(self, model: str, bucket: int) -> str:
        return f"cortex:circuit:{model}:{bucket}"

    def is_open(self, model: str) -> bool:
        now = time.monotonic()
        known = self._known.get(model)
        if known and known[0] > now:
            return known[1]
        try:
            is_open = bool(self.client.exists(self._open_key(model)))
        except redis.RedisError:
            is_open = False  # without Redis there is no shared state; let requests through
        with self._lock:
            self._known[model] = (now + self.state_ttl, is_open)
        CIRCUIT_OPEN.labels(model).set(1 if is_open else 0)
        return is_open

    def retry_after(self, model: str) -> int:
        try:
            ttl = self.client.pttl(self._open_key(model))
        except redis.RedisError:
            ttl = -1
        return max(1, int((ttl if ttl > 0 else self.policy.reset_timeout_seconds * 1000) / 1000 + 0.999))

    def record(self, model: str, failed: bool) -> None:
        """Count an outcome. Successes are added up here and sent to Redis at most every `flush_seconds`
        (one round trip per request would cost the hot path); a failure is sent at once, with the check
        whether the circuit must open."""
        with self._lock:
            counts = self._pending.setdefault(model, [0, 0])
            counts[1 if failed else 0] += 1
            due = failed or time.monotonic() - self._last_flush >= self.flush_seconds
            if due:
                pending, self._pending = self._pending, {}
                self._last_flush = time.monotonic()
        if not due:
            return
        # Buckets by Redis's clock (core/redis_clock.py): by each host's own, a gateway minutes apart counted
        # into buckets no other gateway reads, and the shared error rate was split between clocks.
        bucket = int(redis_clock.now(self.client) // BUCKET_SECONDS)
        try:
            pipe = self.client.pipeline(transaction=False)
            for name, (ok, bad) in pending.items():
                key = self._bucket_key(name, bucket)
                if ok:
                    pipe.hincrby(key, "ok", ok)
                if bad:
                    pipe.hincrby(key, "failed", bad)
                pipe.expire(key, self.policy.window_seconds + BUCKET_SECONDS)
            pipe.execute()
            for name, (_, bad) in pending.items():
                if bad:
                    self._maybe_trip(name, bucket)
        except redis.RedisError:
            pass

    def _maybe_trip(self, model: str, bucket: int) -> None:
        buckets = range(bucket - self.policy.window_seconds // BUCKET_SECONDS + 1, bucket + 1)
        pipe = self.client.pipeline(transaction=False)
        for number in buckets:
            pipe.hgetall(self._bucket_key(model, number))
        ok = failed = 0
        for counts in pipe.execute():
            ok += int(counts.get(b"ok", 0))
            failed += int(counts.get(b"failed", 0))
        total = ok + failed
        if total >= self.policy.min_requests and failed / total >= self.policy.error_threshold:
            opened = self.client.set(self._open_key(model), "1", px=int(self.policy.reset_timeout_seconds * 1000),
                                     nx=True)
            if opened:
                # A fresh window after the reset timeout: old errors must not re-open it at once.
                self.client.delete(*[self._bucket_key(model, number) for number in buckets])
                CIRCUIT_TRIPS.labels(model).inc()
            with self._lock:
                self._known[model] = (time.monotonic() + self.state_ttl, True)
            CIRCUIT_OPEN.labels(model).set(1)
