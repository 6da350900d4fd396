"""Retraining schedules (Beat's `retrain-models` entry reads them every minute): a model is retrained
when its cron expression comes due, or when its tracked metric falls below its threshold.

The tracked metric is read from the model's serving version in the registry (production, else the
newest version): a metric the registry knows (a held-out metric, or one written back by monitoring),
or `success_rate`, the share of the last hour's prediction jobs for that model that succeeded (from the
hourly roll-up). A metric trigger fires at most once per `METRIC_COOLDOWN` so a model that cannot reach
its threshold is not retrained in a loop.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import crontab
from sqlalchemy import DateTime, Float, cast, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cortex_tasks.core.jobs.store import QUEUED, RUNNING
from cortex_tasks.core.queues import priority_of
from cortex_tasks.core.registry import service as registry
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Job, JobMetricsHourly, TrainingRun, TrainingSchedule
from cortex_tasks.core.tenancy import all_tenants, current_tenant, tenant_scope
from cortex_tasks.core.training.runs import PAUSED
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
        # A saved schedule is enabled again; its last_run_at is set on creation only, so saving an existing
        # schedule does not restart its cron.
        fields = {"owner": owner, "kind": kind, "dataset": dataset, "params": params, "cron": cron,
                  "metric": metric, "threshold": threshold, "enabled": True}
        session.execute(
            # A Core insert: it names its tenant (the storage layer stamps ORM rows only).
            pg_insert(TrainingSchedule).values(tenant=current_tenant(), model_name=model, last_run_at=func.now(),
                                               **fields)
            .on_conflict_do_update(index_elements=[TrainingSchedule.tenant, TrainingSchedule.model_name],
                                   set_={**fields, "updated_at": func.now()}))


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
            hour = timedelta(hours=1)
            row = session.execute(
                select(cast(func.sum(JobMetricsHourly.succeeded), Float), cast(func.sum(JobMetricsHourly.jobs), Float))
                .where(JobMetricsHourly.kind == "predict", JobMetricsHourly.model == model,
                       JobMetricsHourly.hour >= func.now() - hour,
                       JobMetricsHourly.hour < func.date_trunc("hour", func.now(), type_=DateTime(timezone=True))
                       + hour)).one()
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
        return bool(session.execute(
            select(1).select_from(TrainingRun).join(Job, Job.id == TrainingRun.id)
            .where(TrainingRun.model_name == model, Job.status.in_((QUEUED, RUNNING, PAUSED))).limit(1)).first())


def retrain_due_models(now: datetime | None = None) -> dict[str, Any]:
    """Submit a training job for every schedule that is due, of every tenant; returns what was started and
    skipped."""
    now = now or datetime.now(UTC)
    started: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    # Beat's task reads every tenant's schedules; each one is then handled in its own tenant, so that its
    # metric, its active run and the job it starts (and the version that job registers) are that tenant's.
    with all_tenants():
        schedules = list_schedules()
    for schedule in schedules:
        with tenant_scope(schedule.tenant):
            _retrain_if_due(schedule, now, started, skipped)
    return {"started": started, "skipped": skipped}


def _retrain_if_due(schedule: TrainingSchedule, now: datetime, started: list[dict[str, Any]],
                    skipped: list[dict[str, Any]]) -> None:
    try:
        by_cron = cron_due(schedule, now)
    except InvalidSchedule:
        skipped.append({"model": schedule.model_name, "reason": "invalid cron"})
        return
    by_metric, value = metric_due(schedule, now)
    if not (by_cron or by_metric):
        return
    if _active_run(schedule.model_name):
        skipped.append({"model": schedule.model_name, "reason": "a run is already active"})
        return
    trigger = "schedule" if by_cron else "metric"
    try:
        job_id = submit_training(TrainingRequest(
            owner=schedule.owner, kind=schedule.kind, model=schedule.model_name, dataset=schedule.dataset,
            params=schedule.params or {}, priority=priority_of("low"), trigger=trigger))
    except QuotaExceeded as exc:
        skipped.append({"model": schedule.model_name, "reason": exc.code})
        return
    with session_scope() as session:
        session.execute(update(TrainingSchedule).where(TrainingSchedule.model_name == schedule.model_name)
                        .values(last_run_at=now, last_job_id=job_id, updated_at=func.now())
                        .execution_options(synchronize_session=False))
    log.info("retraining %s (%s%s): job %s", schedule.model_name, trigger,
             f", {schedule.metric}={value:.4f} < {schedule.threshold}" if by_metric and value is not None else "",
             job_id)
    started.append({"model": schedule.model_name, "tenant": schedule.tenant, "job_id": job_id, "trigger": trigger,
                    **({"metric": schedule.metric, "value": value} if by_metric else {})})

