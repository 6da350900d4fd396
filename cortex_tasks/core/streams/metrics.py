"""The stream workers' figures, kept in Redis and exported by the gateway's /metrics at scrape time.

Several stream workers (and their restarts) add to the same hashes, so one scrape shows one total, as the
model statistics do (core/registry/stats.py). Series:
- `cortex_stream_event_to_verdict_seconds{tenant,stream}`  histogram: the event's XADD to its stored verdicts
- `cortex_stream_latency_breaches_total{tenant,stream}`    events whose latency passed the stream's threshold
- `cortex_stream_verdicts_total{tenant,stream,detector,outcome}`  verdicts stored (anomaly | normal | warming_up)
- `cortex_stream_rejected_events_total{tenant,stream}`     events read from Redis that did not match the declaration
- `cortex_stream_events_total{tenant,stream}`              events scored
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import redis

KEY_PREFIX = "cortex:stream_metrics:"
INDEX_KEY = "cortex:stream_metrics:index"
# Seconds; finer below the default 50 ms threshold, where the figures matter.
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                              2.5, 5.0, 10.0, 30.0, math.inf)


def _key(tenant: str, stream: str) -> str:
    return f"{KEY_PREFIX}{tenant}\x1f{stream}"


def _bucket_field(upper: float) -> str:
    return "le_inf" if math.isinf(upper) else f"le_{upper:g}"


def record_batch(pipe: redis.client.Pipeline, tenant: str, stream: str, latencies: Iterable[float],
                 threshold: float, verdicts: Counter[tuple[str, str]], rejected: int = 0) -> None:
    """Queue the figures of one micro-batch on `pipe` (the caller executes it with its other writes)."""
    key = _key(tenant, stream)
    buckets: Counter[str] = Counter()
    total, count, breaches = 0.0, 0, 0
    for seconds in latencies:
        seconds = max(0.0, seconds)
        total += seconds
        count += 1
        breaches += seconds > threshold
        buckets[_bucket_field(next(upper for upper in BUCKETS if seconds <= upper))] += 1
    for field, value in buckets.items():
        pipe.hincrby(key, field, value)
    if count:
        pipe.hincrby(key, "events", count)
        pipe.hincrbyfloat(key, "latency_sum", total)
    if breaches:
        pipe.hincrby(key, "breaches", breaches)
    if rejected:
        pipe.hincrby(key, "rejected", rejected)
    for (detector, outcome), value in verdicts.items():
        pipe.hincrby(key, f"verdict\x1f{detector}\x1f{outcome}", value)
    pipe.sadd(INDEX_KEY, key)


def forget(client: redis.Redis, tenant: str, stream: str) -> None:
    client.delete(_key(tenant, stream))
    client.srem(INDEX_KEY, _key(tenant, stream))


class StreamMetricsCollector:
    """Prometheus collector for the series above, read from Redis at scrape time."""

    def __init__(self) -> None:
        self._clients: dict[int, redis.Redis] = {}

    @property
    def _client(self) -> redis.Redis:
        # One client per process (the collector is created before gunicorn forks its workers).
        import os

        from cortex_tasks.core.settings import get_settings

        client = self._clients.get(os.getpid())
        if client is None:
            client = self._clients[os.getpid()] = redis.Redis.from_url(get_settings().redis_url, socket_timeout=2)
        return client

    def describe(self):  # registered without touching Redis
        return list(self._families())

    def _families(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        labels = ["tenant", "stream"]
        return (
            HistogramMetricFamily("cortex_stream_event_to_verdict_seconds",
                                  "Seconds from an event's arrival on its Redis Stream to its stored verdicts",
                                  labels=labels),
            CounterMetricFamily("cortex_stream_latency_breaches",
                                "Events whose event-to-verdict latency passed the stream's latency_threshold",
                                labels=labels),
            CounterMetricFamily("cortex_stream_verdicts", "Verdicts stored, by detector and outcome",
                                labels=[*labels, "detector", "outcome"]),
            CounterMetricFamily("cortex_stream_rejected_events",
                                "Events on a stream's Redis Stream that did not match its declaration",
                                labels=labels),
            CounterMetricFamily("cortex_stream_events", "Events scored by the stream workers", labels=labels),
        )

    def collect(self):
        latency, breaches, verdicts, rejected, events = self._families()
        try:
            keys = sorted(self._client.smembers(INDEX_KEY))
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            for key, raw in zip(keys, pipe.execute()):
                tenant, _, stream = key.decode()[len(KEY_PREFIX):].partition("\x1f")
                fields = {name.decode(): value.decode() for name, value in raw.items()}
                labels = [tenant, stream]
                cumulative, buckets = 0, []
                for upper in BUCKETS:
                    cumulative += int(fields.get(_bucket_field(upper), 0))
                    buckets.append(("+Inf" if math.isinf(upper) else f"{upper:g}", cumulative))
                latency.add_metric(labels, buckets, float(fields.get("latency_sum", 0.0)))
                breaches.add_metric(labels, int(fields.get("breaches", 0)))
                rejected.add_metric(labels, int(fields.get("rejected", 0)))
                events.add_metric(labels, int(fields.get("events", 0)))
                for name, value in fields.items():
                    if name.startswith("verdict\x1f"):
                        _, detector, outcome = name.split("\x1f")
                        verdicts.add_metric([*labels, detector, outcome], int(value))
        except redis.RedisError:
            pass  # a scrape must not fail because Redis is briefly away
        yield from (latency, breaches, verdicts, rejected, events)
