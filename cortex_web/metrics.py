"""Prometheus metrics of the gateway; queue depths are read from Redis at scrape time."""
from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

# The default registry, so metrics defined in cortex_tasks (cache, circuits, shedding) are exported too.
__all__ = ["REGISTRY"]

HTTP_REQUESTS = Counter("cortex_http_requests_total", "HTTP requests by route and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("cortex_http_request_seconds", "HTTP request latency by route", ["route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
JOBS_SUBMITTED = Counter("cortex_jobs_submitted_total", "Jobs enqueued by kind, task and queue",
                         ["kind", "task", "queue"])
JOB_OUTCOMES = Counter("cortex_job_outcomes_total", "Outcomes of jobs the gateway waited for",
                       ["task", "outcome"])


class QueueDepthCollector:
    """Reports each queue's length summed over its priority sub-lists."""

    def __init__(self, depth_reader) -> None:
        self._read = depth_reader

    def collect(self):
        family = GaugeMetricFamily("cortex_queue_depth", "Messages waiting per queue", labels=["queue"])
        try:
            for queue, depth in self._read().items():
                family.add_metric([queue], depth)
        except Exception:  # a scrape must not fail because Redis is briefly away
            pass
        yield family

# Rate limiting and the audit log (cortex_web/limits.py, cortex_web/audit.py).
RATE_LIMITED = Counter("cortex_rate_limited_total", "Requests refused with 429 by the rate limiter, by tier",
                       ["tier"])
INFLIGHT_REJECTED = Counter("cortex_inflight_rejected_total",
                            "Prediction requests refused with 503: too many in flight in this gateway process")
AUDIT_ALERTS = Counter("cortex_audit_alerts_total", "Security alerts raised by the audit log, by type", ["type"])
AUDIT_EVENTS_DROPPED = Counter("cortex_audit_events_dropped_total",
                               "Audit events dropped because the database was unreachable for too long")
