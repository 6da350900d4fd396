"""Prometheus metrics of the gateway.

Counters and histograms are kept per process and added up over the gateway's processes at scrape time
(gunicorn_conf.py, cortex_tasks.core.metric_totals); series read from shared state (queue depths, model
versions, OpenAI usage) come from collectors that read Redis at scrape time, once per scrape.
"""
from __future__ import annotations

import redis
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from cortex_tasks.core.load_control.shedding import read_queue_loads
from cortex_tasks.core.metric_totals import processes_registry
from cortex_tasks.core.queues import QUEUE_NAMES
from cortex_tasks.core.worker_records import ready_workers

_shared_collectors: list = []

HTTP_REQUESTS = Counter("cortex_http_requests_total", "HTTP requests by route and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("cortex_http_request_seconds", "HTTP request latency by route", ["route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
JOBS_SUBMITTED = Counter("cortex_jobs_submitted_total", "Jobs enqueued by kind, task and queue",
                         ["kind", "task", "queue"])
JOB_OUTCOMES = Counter("cortex_job_outcomes_total", "Outcomes of jobs the gateway waited for",
                       ["task", "outcome"])


class QueueCollector:
    """Reports, read from Redis at scrape time, each queue's depth (summed over its priority sub-lists), the
    age of its oldest waiting message and how many ready workers consume it (their readiness records,
    core/worker_records.py): the queue alerts of compose/alerts.yml watch these. Read once here, by the
    gateway, rather than by every worker."""

    def __init__(self, client: redis.Redis, queues: tuple[str, ...] = QUEUE_NAMES) -> None:
        self._client, self._queues = client, queues

    def collect(self):
        depth = GaugeMetricFamily("cortex_queue_depth", "Messages waiting per queue", labels=["queue"])
        age = GaugeMetricFamily("cortex_queue_oldest_age_seconds", "Age of the oldest message waiting per queue",
                                labels=["queue"])
        workers = GaugeMetricFamily("cortex_queue_workers", "Ready workers consuming each queue", labels=["queue"])
        try:
            for queue, load in read_queue_loads(self._client, self._queues).items():
                depth.add_metric([queue], load.depth)
                age.add_metric([queue], load.oldest_age)
            ready = ready_workers(self._client)
            for queue in self._queues:
                workers.add_metric([queue], sum(queue in (record.get("queues") or ()) for record in ready))
        except Exception:  # noqa: BLE001 (a scrape must not fail because Redis is briefly away)
            pass
        yield from (depth, age, workers)


# Rate limiting and the audit log (cortex_web/limits.py, cortex_web/audit.py).
RATE_LIMITED = Counter("cortex_rate_limited_total", "Requests refused with 429 by the rate limiter, by tier",
                       ["tier"])
INFLIGHT_REJECTED = Counter("cortex_inflight_rejected_total",
                            "Prediction requests refused with 503: too many in flight in this gateway process")
AUDIT_ALERTS = Counter("cortex_audit_alerts_total", "Security alerts raised by the audit log, by type", ["type"])
AUDIT_EVENTS_DROPPED = Counter("cortex_audit_events_dropped_total",
                               "Audit events dropped because the database was unreachable for too long")


def register_shared_collector(collector) -> None:
    """A collector of shared state (Redis, the database), reported once whichever process is scraped."""
    REGISTRY.register(collector)
    _shared_collectors.append(collector)


def exposition() -> bytes:
    """/metrics: this process's metrics (the default registry, with those defined in cortex_tasks), or the
    totals over every gateway process and the shared collectors."""
    registry = processes_registry()
    if registry is not REGISTRY:
        for collector in _shared_collectors:
            registry.register(collector)
    return generate_latest(registry)
