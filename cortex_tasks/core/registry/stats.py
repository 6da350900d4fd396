"""Per-version serving statistics: request count, error count, item count and a latency histogram for
every (model, version), kept in Redis so that every process that serves a model (gateway processes,
workers) adds to the same figures.

The registry view (`GET /api/v1/models/{name}`) reads them to put a canary beside production; the
gateway's `/metrics` exports them as Prometheus series labelled by model, version and tenant, read from Redis
at scrape time (`ModelVersionCollector`), so a multi-process deployment reports one consistent total.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from cortex_tasks.core.process_threads import helper_threads
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import current_scope

log = logging.getLogger(__name__)

KEY_PREFIX = "cortex:model_stats:"
INDEX_KEY = "cortex:model_stats:index"
NO_TENANT = "-"
# Latency bucket upper bounds in milliseconds (the inference latency buckets the metrics use,
# 10 ms .. 1 s, with finer steps around them).
BUCKETS_MS: tuple[float, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, math.inf)

_clients: dict[int, redis.Redis] = {}


def _client() -> redis.Redis:
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(get_settings().redis_url, socket_timeout=2)
    return client


def _key(model: str, version: str) -> str:
    # Per tenant: two tenants' `m@1` are different models, and one tenant's traffic on a shared bundled
    # model is none of another's business. Code that acts for no single tenant counts under "-".
    scope = current_scope()
    tenant = scope if isinstance(scope, str) else NO_TENANT
    return f"{KEY_PREFIX}{tenant}\x1e{model}\x1f{version}"


def _bucket_field(upper_ms: float) -> str:
    return "le_inf" if math.isinf(upper_ms) else f"le_{upper_ms:g}"


def record(model: str, version: str | int, seconds: float, ok: bool = True, items: int = 1,
           key: str | None = None) -> None:
    """Count one served request. Never raises: statistics must not fail a prediction. `key`: made by the
    caller's thread (the tenant in scope there; a helper thread has none)."""
    key = key or _key(model, str(version))
    milliseconds = seconds * 1000
    bucket = next(upper for upper in BUCKETS_MS if milliseconds <= upper)
    try:
        pipe = _client().pipeline(transaction=False)
        pipe.hincrby(key, "requests", 1)
        pipe.hincrby(key, "items", items)
        if not ok:
            pipe.hincrby(key, "errors", 1)
        pipe.hincrbyfloat(key, "latency_sum_seconds", seconds)
        pipe.hincrby(key, _bucket_field(bucket), 1)
        pipe.sadd(INDEX_KEY, key)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("model stats not recorded for %s@%s: %s", model, version, exc)


@contextmanager
def observe(model: str, version: str | int, items: int = 1) -> Iterator[None]:
    """Time the block and count it as one request of `model@version` (an error if it raises).

    The count is written to Redis by a helper thread, in order, so that a model call's answer does not
    wait for its statistics (a round trip of ~0.3 ms on every request's path)."""
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        _record_later(model, version, time.perf_counter() - started, ok=False, items=items)
        raise
    _record_later(model, version, time.perf_counter() - started, ok=True, items=items)


def _record_later(model: str, version: str | int, seconds: float, ok: bool, items: int) -> None:
    helper_threads("cortex-model-stats", 1).submit(record, model, version, seconds, ok, items,
                                                   _key(model, str(version)))


def _quantile(counts: list[int], total: int, q: float) -> float | None:
    """Estimate from the histogram: linear within the bucket that holds the q-th request."""
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for upper, count in zip(BUCKETS_MS, counts):
        if count and seen + count >= rank:
            if math.isinf(upper):
                return lower
            return round(lower + (upper - lower) * (rank - seen) / count, 2)
        seen += count
        lower = upper if not math.isinf(upper) else lower
    return lower


def _summary(raw: dict[bytes, bytes]) -> dict[str, Any]:
    fields = {key.decode(): value.decode() for key, value in raw.items()}
    requests_ = int(fields.get("requests", 0))
    errors = int(fields.get("errors", 0))
    latency_sum = float(fields.get("latency_sum_seconds", 0.0))
    counts = [int(fields.get(_bucket_field(upper), 0)) for upper in BUCKETS_MS]
    return {
        "request_count": requests_,
        "error_count": errors,
        "error_rate": round(errors / requests_, 4) if requests_ else 0.0,
        "item_count": int(fields.get("items", 0)),
        "latency_mean_ms": round(latency_sum * 1000 / requests_, 2) if requests_ else None,
        "latency_p50_ms": _quantile(counts, requests_, 0.50),
        "latency_p95_ms": _quantile(counts, requests_, 0.95),
        "_buckets": counts,
        "_latency_sum_seconds": latency_sum,
    }


def read(model: str, version: str | int) -> dict[str, Any]:
    """The version's figures since it was first served (zeros if never, or if Redis is away)."""
    try:
        raw = _client().hgetall(_key(model, str(version)))
    except redis.RedisError:
        raw = {}
    summary = _summary(raw)
    return {key: value for key, value in summary.items() if not key.startswith("_")}


def _all() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    client = _client()
    keys = sorted(client.smembers(INDEX_KEY))
    if not keys:
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    for key, raw in zip(keys, pipe.execute()):
        tenant, _, rest = key.decode()[len(KEY_PREFIX):].rpartition("\x1e")
        model, _, version = rest.partition("\x1f")
        yield model, version, tenant or NO_TENANT, _summary(raw)


class ModelVersionCollector:
    """Prometheus collector: per-version series read from Redis at scrape time."""

    def describe(self):  # registered without touching Redis
        return list(self._families())

    def _families(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        labels = ["model", "version", "tenant"]
        return (
            CounterMetricFamily("cortex_model_version_requests", "Requests served per model version", labels=labels),
            CounterMetricFamily("cortex_model_version_errors", "Failed requests per model version", labels=labels),
            CounterMetricFamily("cortex_model_version_items", "Input items served per model version", labels=labels),
            HistogramMetricFamily("cortex_model_version_latency_seconds", "Model latency per version",
                                  labels=labels),
        )

    def collect(self):
        requests_, errors, items, latency = self._families()
        try:
            for model, version, tenant, summary in _all():
                labels = [model, version, tenant]
                requests_.add_metric(labels, summary["request_count"])
                errors.add_metric(labels, summary["error_count"])
                items.add_metric(labels, summary["item_count"])
                cumulative, buckets = 0, []
                for upper, count in zip(BUCKETS_MS, summary["_buckets"]):
                    cumulative += count
                    buckets.append(("+Inf" if math.isinf(upper) else str(upper / 1000), cumulative))
                latency.add_metric(labels, buckets, summary["_latency_sum_seconds"])
        except redis.RedisError:
            pass  # a scrape must not fail because Redis is briefly away
        yield from (requests_, errors, items, latency)
