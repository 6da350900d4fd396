"""Cortex's own alert rules (the architecture's alerts.rules), evaluated every minute by Beat and raised
through the same intake as the streams' (source "cortex", to the operators' channels of the settings):

- response_time (high): the p95 time from submission to result of the prediction jobs that finished in the
  last 5 minutes is above 1 s;
- error_rate (high): more than 5% of those jobs failed;
- cache_miss (medium): more than 40% of the gateway's cache lookups of the last 15 minutes missed;
- resource_usage (medium): CPU load, memory or the data folder's disk stayed above 80% for 10 minutes.

Where the figures come from, so that every process agrees on them:
- response time and error rate: the jobs table (PostgreSQL). Every gateway and worker writes its jobs there,
  so one query sees the whole deployment, whichever worker runs the rule. (Per-process Prometheus
  histograms would only show the process that happens to run it.)
- cache misses: the gateway's counters (cortex_cache_items_total), read back over all gateway processes from
  their shared metrics folder (core/metric_totals.py's multiprocess mode: PROMETHEUS_MULTIPROC_DIR, as
  `cortex up` sets it for the gateway). Counters only grow, so each evaluation stores the totals it read in
  Redis with the time, and the rule compares with the totals of one window ago: the window is right
  whichever worker process evaluates next. A gateway restart empties its folder; a total that went down is
  read as a restart and that window is skipped.
- resource use: core/machine_resources.py on the machine of the worker that evaluates (the 1-minute load
  per CPU, memory in use) and the data folder's disk; one sample per evaluation kept in Redis per host,
  so "for 10 minutes" means every sample of the last 10 minutes, taken by any process, was above.

A rule that is no longer breached resolves its open alert, so the next breach is a new alert (and not a
repeat folded into the old one by deduplication).
"""
from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import and_, func, select, update

from cortex_tasks.core.alerting.intake import AlertCandidate, raise_alert
from cortex_tasks.core.alerting.storage import CORTEX_SOURCE
from cortex_tasks.core.machine_resources import host_use
from cortex_tasks.core.settings import AlertsConfig, get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Alert, Job
from cortex_tasks.core.tenancy import all_tenants, tenant_scope

log = logging.getLogger(__name__)
CACHE_TOTALS_KEY = "cortex:alerts:cache-totals"
RESOURCE_SAMPLES_KEY = "cortex:alerts:resources:"
FINISHED = ("succeeded", "failed")


@dataclass(frozen=True)
class Breach:
    rule: str
    group_key: str
    severity: str
    summary: str
    details: dict[str, Any]


@dataclass(frozen=True)
class JobFigures:
    finished: int
    failed: int
    p95_seconds: float | None


def judge_jobs(figures_rt: JobFigures, figures_err: JobFigures, config: AlertsConfig) -> list[Breach]:
    breaches = []
    if figures_rt.finished >= config.rule_min_samples and figures_rt.p95_seconds is not None \
            and figures_rt.p95_seconds > config.response_time_threshold_seconds:
        breaches.append(Breach(
            "response_time", "predict", "high",
            f"p95 response time {figures_rt.p95_seconds:.2f}s > {config.response_time_threshold_seconds:g}s "
            f"over {config.response_time_window_seconds / 60:g} min ({figures_rt.finished} jobs)",
            {"p95_seconds": round(figures_rt.p95_seconds, 4), "jobs": figures_rt.finished,
             "threshold_seconds": config.response_time_threshold_seconds,
             "window_seconds": config.response_time_window_seconds}))
    if figures_err.finished >= config.rule_min_samples:
        rate = figures_err.failed / figures_err.finished
        if rate > config.error_rate_threshold:
            breaches.append(Breach(
                "error_rate", "predict", "high",
                f"error rate {rate:.1%} > {config.error_rate_threshold:.0%} over "
                f"{config.error_rate_window_seconds / 60:g} min ({figures_err.failed} of {figures_err.finished} jobs)",
                {"error_rate": round(rate, 4), "failed": figures_err.failed, "jobs": figures_err.finished,
                 "threshold": config.error_rate_threshold, "window_seconds": config.error_rate_window_seconds}))
    return breaches


def judge_cache(hits: float, misses: float, config: AlertsConfig) -> list[Breach]:
    lookups = hits + misses
    if lookups < config.rule_min_samples:
        return []
    rate = misses / lookups
    if rate <= config.cache_miss_threshold:
        return []
    return [Breach("cache_miss", "prediction-cache", "medium",
                   f"cache miss rate {rate:.1%} > {config.cache_miss_threshold:.0%} over "
                   f"{config.cache_miss_window_seconds / 60:g} min ({int(misses)} of {int(lookups)} lookups)",
                   {"miss_rate": round(rate, 4), "misses": int(misses), "lookups": int(lookups),
                    "threshold": config.cache_miss_threshold, "window_seconds": config.cache_miss_window_seconds})]


def judge_resources(samples: list[tuple[float, dict[str, float]]], host: str, now: float,
                    config: AlertsConfig) -> list[Breach]:
    """`samples`: (time, {resource: share 0..1}) of one host within the window, oldest first. A resource
    breaches when the samples span most of the window and every one of them is above the threshold."""
    window = config.resource_window_seconds
    if not samples or now - samples[0][0] < 0.8 * window:
        return []
    breaches = []
    for resource in sorted({name for _, shares in samples for name in shares}):
        shares = [values.get(resource) for _, values in samples]
        if all(share is not None and share > config.resource_threshold for share in shares):
            lowest = min(share for share in shares if share is not None)
            breaches.append(Breach(
                "resource_usage", f"{host}:{resource}", "medium",
                f"{resource} on {host} above {config.resource_threshold:.0%} for {window / 60:g} min "
                f"(lowest {lowest:.0%}, {len(shares)} samples)",
                {"host": host, "resource": resource, "lowest": round(lowest, 4), "samples": len(shares),
                 "threshold": config.resource_threshold, "window_seconds": window}))
    return breaches


# --- reading the figures ---


def job_figures(window_seconds: float, now: datetime) -> JobFigures:
    since = now - timedelta(seconds=window_seconds)
    elapsed = func.extract("epoch", Job.finished_at - Job.created_at)
    with all_tenants(), session_scope() as session:  # the deployment's health: every tenant's jobs
        row = session.execute(select(
            func.count(), func.count().filter(Job.status == "failed"),
            func.percentile_cont(0.95).within_group(elapsed).filter(Job.status == "succeeded"),
        ).where(and_(Job.kind == "predict", Job.status.in_(FINISHED), Job.finished_at >= since,
                     Job.finished_at <= now))).one()
    return JobFigures(int(row[0]), int(row[1]), float(row[2]) if row[2] is not None else None)


def gateway_metrics_dir() -> Path | None:
    import os

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else get_settings().data_dir / "gateway-metrics"
    return folder if folder.is_dir() else None


def cache_totals() -> tuple[float, float] | None:
    """(hits, misses) over every gateway process, or None where no gateway metrics are readable here."""
    folder = gateway_metrics_dir()
    if folder is None:
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    hits = misses = 0.0
    for family in registry.collect():
        if family.name == "cortex_cache_items":
            for sample in family.samples:
                if sample.name == "cortex_cache_items_total":
                    if sample.labels.get("result") == "hit":
                        hits += sample.value
                    elif sample.labels.get("result") == "miss":
                        misses += sample.value
    return hits, misses


def cache_window(client: redis.Redis, totals: tuple[float, float], now: float,
                 window: float) -> tuple[float, float] | None:
    """Hits and misses of the last window: today's totals less those stored one window ago (or earlier)."""
    client.zadd(CACHE_TOTALS_KEY, {json.dumps([now, *totals]): now})
    client.zremrangebyscore(CACHE_TOTALS_KEY, "-inf", now - 2 * window)
    before = client.zrangebyscore(CACHE_TOTALS_KEY, now - 2 * window, now - window, start=0, num=None)
    if not before:
        return None  # not a window of history yet
    _, old_hits, old_misses = json.loads(before[-1])
    hits, misses = totals[0] - old_hits, totals[1] - old_misses
    if hits < 0 or misses < 0:
        return None  # the gateway restarted within the window
    return hits, misses


def resource_shares(data_dir: Path) -> dict[str, float]:
    use = host_use()
    shares: dict[str, float] = {"cpu": use["cpu_percent"] / 100}
    memory = use.get("memory", {}).get("used_percent")
    if memory is not None:
        shares["memory"] = memory / 100
    try:
        disk = shutil.disk_usage(data_dir if data_dir.exists() else Path("/"))
        shares["disk"] = disk.used / disk.total
    except OSError:
        pass
    return shares


def resource_samples(client: redis.Redis, host: str, shares: dict[str, float], now: float,
                     window: float) -> list[tuple[float, dict[str, float]]]:
    key = RESOURCE_SAMPLES_KEY + host
    client.zadd(key, {json.dumps([now, shares]): now})
    client.zremrangebyscore(key, "-inf", now - window)
    client.expire(key, int(window * 2))
    return [(float(at), values) for at, values in (json.loads(raw) for raw in client.zrange(key, 0, -1))]


# --- raising and resolving ---


def _raise(breach: Breach, now: datetime, tenant: str) -> None:
    raise_alert(AlertCandidate(
        source=CORTEX_SOURCE, rule=breach.rule, group_key=breach.group_key, severity=breach.severity,
        summary=breach.summary, details=breach.details, occurred_at=now,
        # One alert per rule and key while it lasts: repeats within the dedup window are folded into it.
        dedup_key=f"{breach.rule}:{breach.group_key}"), tenant=tenant)


def _resolve_cleared(rule: str, breached_keys: set[str], now: datetime, tenant: str) -> int:
    with tenant_scope(tenant), session_scope() as session:
        statement = update(Alert).where(Alert.source == CORTEX_SOURCE, Alert.rule == rule,
                                        Alert.state != "resolved")
        if breached_keys:
            statement = statement.where(Alert.group_key.not_in(breached_keys))
        return session.execute(statement.values(state="resolved", resolved_at=now, resolved_by="cortex")).rowcount


def evaluate(now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    settings = get_settings()
    config = settings.alerts
    tenant = config.operator_tenant
    client = redis.Redis.from_url(settings.redis_url)
    breaches: list[Breach] = []
    judged: set[str] = set()

    breaches += judge_jobs(job_figures(config.response_time_window_seconds, now),
                           job_figures(config.error_rate_window_seconds, now), config)
    judged |= {"response_time", "error_rate"}

    totals = cache_totals()
    if totals is not None:
        window = cache_window(client, totals, now.timestamp(), config.cache_miss_window_seconds)
        if window is not None:
            breaches += judge_cache(*window, config)
            judged.add("cache_miss")

    host = socket.gethostname()
    samples = resource_samples(client, host, resource_shares(settings.data_dir), time.time(),
                               config.resource_window_seconds)
    host_breaches = judge_resources(samples, host, time.time(), config)
    breaches += host_breaches

    for breach in breaches:
        _raise(breach, now, tenant)
    resolved = 0
    for rule in judged:
        resolved += _resolve_cleared(rule, {b.group_key for b in breaches if b.rule == rule}, now, tenant)
    # Resource alerts of this host only: another host's are judged by the evaluations that run there.
    with tenant_scope(tenant), session_scope() as session:
        mine = [key for (key,) in session.execute(select(Alert.group_key).where(
            Alert.source == CORTEX_SOURCE, Alert.rule == "resource_usage", Alert.state != "resolved",
            Alert.group_key.like(f"{host}:%")))]
    cleared = [key for key in mine if key not in {b.group_key for b in host_breaches}]
    if cleared:
        with tenant_scope(tenant), session_scope() as session:
            resolved += session.execute(update(Alert).where(
                Alert.source == CORTEX_SOURCE, Alert.rule == "resource_usage", Alert.group_key.in_(cleared),
                Alert.state != "resolved").values(state="resolved", resolved_at=now, resolved_by="cortex")).rowcount
    return {"raised": [f"{b.rule}:{b.group_key}" for b in breaches], "resolved": resolved}
