"""Retraining schedules (Beat's `retrain-models` entry reads them every minute): a model is retrained
when its cron expression comes due, or when its tracked metric falls below its threshold.

The tracked metric is read from the model's serving version in the registry (production, else the
newest version): a metric the registry knows (a held-out metric, or one written back by monitoring),
or `success_rate`, the share of the last hour's prediction jobs for that model that succeeded (from the
hourly roll-up). A metric trigger fires at most once per `METRIC_COOLDOWN` so a model that cannot reach
its threshold is not retrained in a loop.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import crontab
from sqlalchemy import select, text

from cortex_tasks.core.queues import priority_of
from cortex_tasks.core.registry import service as registry
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import TrainingSchedule
from cortex_tasks.core.training.submission import QuotaExceeded, TrainingRequest, submit_training

log = logging.getLogger(__name__)
METRIC_COOLDOWN = timedelta(hours=6)


class InvalidSchedule(ValueError):
    pass


def parse_cron(expression: str) -> crontab:
    fields = expression.split()
    if len(fields) != 5:
        raise InvalidSchedule("cron needs 5 fields: minute hour day-of-month month day-of-week")
    try:
        schedule = crontab(minute=fields[0], hour=fields[1], day_of_month=fields[2], month_of_year=fields[3],
                           day_of_week=fields[4])
        schedule.remaining_estimate(datetime.now(UTC))  # raises for values out of range
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidSchedule(f"invalid cron expression {expression!r}: {exc}") from None
    return schedule


def save_schedule(model: str, owner: str, kind: str, dataset: dict[str, Any], params: dict[str, Any],
                  cron: str | None, metric: str | None, threshold: float | None) -> None:
    if cron:
        parse_cron(cron)
    with session_scope() as session:
        session.execute(text(
            "INSERT INTO training_schedules (model_name, owner, kind, dataset, params, cron, metric, threshold, "
            "enabled, last_run_at) VALUES (:model, :owner, :kind, CAST(:dataset AS jsonb), CAST(:params AS jsonb), "
            ":cron, :metric, :threshold, true, now()) ON CONFLICT (model_name) DO UPDATE SET owner = :owner, "
            "kind = :kind, dataset = CAST(:dataset AS jsonb), params = CAST(:params AS jsonb), cron = :cron, "
            "metric = :metric, threshold = :threshold, enabled = true, updated_at = now()"
        ), {"model": model, "owner": owner, "kind": kind, "dataset": json.dumps(dataset),
            "params": json.dumps(params), "cron": cron, "metric": metric, "threshold": threshold})


def list_schedules() -> list[TrainingSchedule]:
    with session_scope() as session:
        return list(session.scalars(select(TrainingSchedule).where(TrainingSchedule.enabled.is_(True))).all())


def cron_due(schedule: TrainingSchedule, now: datetime) -> bool:
    if not schedule.cron:
        return False
    last = schedule.last_run_at or schedule.created_at
    return bool(parse_cron(schedule.cron).is_due(last).is_due) if last else False


def tracked_metric(model: str, metric: str) -> float | None:
    """The current value of `metric` for the model's serving version, or None if unknown."""
    if metric == "success_rate":
        with session_scope() as session:
            row = session.execute(text(
                "SELECT sum(succeeded)::float, sum(jobs)::float FROM job_metrics_hourly "
                "WHERE kind = 'predict' AND model = :model AND hour >= now() - interval '1 hour' "
                "AND hour < date_trunc('hour', now()) + interval '1 hour'"), {"model": model}).one()
        return None if not row[1] else row[0] / row[1]

    try:
        versions = registry.list_versions(model)
    except registry.RegistryError:
        return None
    serving = [v for v in versions if v.stage == registry.PRODUCTION] or versions[-1:]
    value = serving[0].metrics.get(metric) if serving else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metric_due(schedule: TrainingSchedule, now: datetime) -> tuple[bool, float | None]:
    if not schedule.metric or schedule.threshold is None:
        return False, None
    value = tracked_metric(schedule.model_name, schedule.metric)
    if value is None or value >= schedule.threshold:
        return False, value
    recent = schedule.last_run_at and now - schedule.last_run_at < METRIC_COOLDOWN
    return not recent, value


def _active_run(model: str) -> bool:
    with session_scope() as session:
        return bool(session.execute(text(
            "SELECT 1 FROM training_runs r JOIN jobs j ON j.id = r.id WHERE r.model_name = :model "
            "AND j.status IN ('queued', 'running', 'paused') LIMIT 1"), {"model": model}).first())


def retrain_due_models(now: datetime | None = None) -> dict[str, Any]:
    """Submit a training job for every schedule that is due; returns what was started and skipped."""
    now = now or datetime.now(UTC)
    started, skipped = [], []
    for schedule in list_schedules():
        try:
            by_cron = cron_due(schedule, now)
        except InvalidSchedule:
            skipped.append({"model": schedule.model_name, "reason": "invalid cron"})
            continue
        by_metric, value = metric_due(schedule, now)
        if not (by_cron or by_metric):
            continue
        if _active_run(schedule.model_name):
            skipped.append({"model": schedule.model_name, "reason": "a run is already active"})
            continue
        trigger = "schedule" if by_cron else "metric"
        try:
            job_id = submit_training(TrainingRequest(
                owner=schedule.owner, kind=schedule.kind, model=schedule.model_name, dataset=schedule.dataset,
                params=schedule.params or {}, priority=priority_of("low"), trigger=trigger))
        except QuotaExceeded as exc:
            skipped.append({"model": schedule.model_name, "reason": exc.code})
            continue
        with session_scope() as session:
            session.execute(text("UPDATE training_schedules SET last_run_at = :now, last_job_id = :job, "
                                 "updated_at = now() WHERE model_name = :model"),
                            {"now": now, "job": job_id, "model": schedule.model_name})
        log.info("retraining %s (%s%s): job %s", schedule.model_name, trigger,
                 f", {schedule.metric}={value:.4f} < {schedule.threshold}" if by_metric and value is not None else "",
                 job_id)
        started.append({"model": schedule.model_name, "job_id": job_id, "trigger": trigger,
                        **({"metric": schedule.metric, "value": value} if by_metric else {})})
    return {"started": started, "skipped": skipped}
