"""Alert tasks (queue `alerts`): process a raised alert, close a group, deliver a notice; and the Beat
entries that sweep overdue groups, evaluate Cortex's own rules and write the periodic stream reports."""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from cortex_tasks import app
from cortex_tasks.core.alerting.report_records import request_report
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.alert_messages import (
    AlertMessage,
    DeliveryMessage,
    GroupMessage,
    ReportMessage,
)
from cortex_tasks.core.contracts.job_messages import MaintenanceMessage
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.queues import ALERTS
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import all_tenants, tenant_scope
from cortex_tasks.runtime.alerting import cortex_rules, delivery, reports, service
from cortex_tasks.runtime.alerting.delivery import MAX_BACKOFF_SECONDS

log = logging.getLogger(__name__)

# acks_late (celeryconfig) keeps a raised alert in Redis until it is stored: a worker killed mid-task
# redelivers it. Transient database or Redis errors retry with Celery's exponential back-off.
TRANSIENT: dict[str, Any] = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": True, "retry_backoff_max": 60,
                             "max_retries": 10}
OVERDUE = timedelta(seconds=30)  # a group this late past its close was missed by its close task


def send_deliveries(tenant: str, delivery_ids: list[str]) -> None:
    for delivery_id in delivery_ids:
        app.send_task(task_names.ALERTS_DELIVER_NOTIFICATION, queue=ALERTS, ignore_result=True,
                      kwargs=DeliveryMessage(tenant=tenant, delivery_id=delivery_id).to_kwargs())


def send_close(tenant: str, group_id: str, at: datetime) -> None:
    app.send_task(task_names.ALERTS_CLOSE_GROUP, queue=ALERTS, ignore_result=True, eta=at,
                  kwargs=GroupMessage(tenant=tenant, group_id=group_id).to_kwargs())


def _read(message_type: type, kwargs: dict[str, Any]) -> Any:
    try:
        return read_message(message_type, kwargs)
    except MessageRefused as exc:
        log.error("refused an alert message: %s", exc)
        return None


@app.task(name=task_names.ALERTS_PROCESS_ALERT, soft_time_limit=30, time_limit=60, **TRANSIENT)
def process_alert(**kwargs: Any) -> dict[str, Any]:
    message: AlertMessage | None = _read(AlertMessage, kwargs)
    if message is None:
        return {"refused": True}
    processed = service.process_alert(message)
    # After the commit: a lost send leaves a pending delivery (resent by close_due_groups) or an open
    # group past its close (closed by close_due_groups), never a lost alert.
    send_deliveries(message.tenant, processed.deliveries)
    if processed.close_at is not None:
        send_close(message.tenant, processed.group_id or "", processed.close_at)
    return processed.to_json()


@app.task(name=task_names.ALERTS_CLOSE_GROUP, soft_time_limit=30, time_limit=60, **TRANSIENT)
def close_group(**kwargs: Any) -> dict[str, Any]:
    message: GroupMessage | None = _read(GroupMessage, kwargs)
    if message is None:
        return {"refused": True}
    closed = service.close_group(message.group_id)
    if closed["outcome"] == "not_due":  # the eta ran early on this clock: come back when it is due
        send_close(message.tenant, message.group_id, datetime.now(UTC) + timedelta(seconds=closed["due_in"]))
    send_deliveries(message.tenant, closed.get("deliveries", []))
    return {**closed, "deliveries": len(closed.get("deliveries", []))}


@app.task(name=task_names.ALERTS_DELIVER_NOTIFICATION, bind=True, soft_time_limit=60, time_limit=90,
          max_retries=None, **{key: value for key, value in TRANSIENT.items() if key != "max_retries"})
def deliver_notification(self: Task, **kwargs: Any) -> dict[str, Any]:
    message: DeliveryMessage | None = _read(DeliveryMessage, kwargs)
    if message is None:
        return {"refused": True}
    outcome = delivery.attempt(message.delivery_id)
    if outcome.status == "retry":
        # The attempts are counted in the delivery's row (CORTEX_ALERT_DELIVERY_RETRIES), so the retry
        # itself is unbounded here; its delay is Celery's exponential back-off (2s, 4s, 8s ... by default).
        countdown = get_exponential_backoff_interval(
            factor=get_settings().alerts.delivery_backoff_seconds, retries=self.request.retries,
            maximum=MAX_BACKOFF_SECONDS, full_jitter=False)
        raise self.retry(countdown=countdown, max_retries=None)
    return {"delivery_id": message.delivery_id, "status": outcome.status, "error": outcome.error}


def _refused_maintenance(kwargs: dict[str, Any]) -> bool:
    try:
        read_message(MaintenanceMessage, kwargs)
    except MessageRefused as exc:
        log.error("refused a maintenance message: %s", exc)
        return True
    return False


@app.task(name=task_names.ALERTS_CLOSE_DUE_GROUPS, soft_time_limit=120, time_limit=180, **TRANSIENT)
def close_due_groups(**kwargs: Any) -> dict[str, Any]:
    """The safety net of the close tasks sent at each group's opening (a message lost with a killed worker,
    a Redis restart): groups overdue by more than OVERDUE are closed here, and deliveries never attempted
    are sent again. Across tenants on purpose: it sweeps everyone's groups, each closed in its tenant."""
    if _refused_maintenance(kwargs):
        return {"refused": True}
    now = datetime.now(UTC)
    with all_tenants():
        overdue = service.overdue_groups(now - OVERDUE)
        stranded = delivery.pending_deliveries(now - timedelta(minutes=2))
    closed = 0
    for tenant, group_id in overdue:
        with tenant_scope(tenant):
            result = service.close_group(group_id, now)
        send_deliveries(tenant, result.get("deliveries", []))
        closed += 1
    for tenant, delivery_id in stranded:
        send_deliveries(tenant, [delivery_id])
    return {"closed": closed, "resent": len(stranded)}


@app.task(name=task_names.ALERTS_EVALUATE_CORTEX_RULES, soft_time_limit=60, time_limit=90, **TRANSIENT)
def evaluate_cortex_rules(**kwargs: Any) -> dict[str, Any]:
    if _refused_maintenance(kwargs):
        return {"refused": True}
    return cortex_rules.evaluate()


@app.task(name=task_names.REPORTS_WRITE_REPORT, soft_time_limit=540, time_limit=600, **TRANSIENT)
def write_report(**kwargs: Any) -> dict[str, Any]:
    message: ReportMessage | None = _read(ReportMessage, kwargs)
    if message is None:
        return {"refused": True}
    return reports.write_report(message.report_id)


@app.task(name=task_names.REPORTS_WRITE_PERIODIC_REPORTS, soft_time_limit=120, time_limit=180, **TRANSIENT)
def write_periodic_reports(**kwargs: Any) -> dict[str, Any]:
    """Queue the report of the last whole period (CORTEX_REPORT_PERIOD) of every declared stream that has
    none yet. Across tenants on purpose: every tenant's streams get their report, each in its tenant."""
    if _refused_maintenance(kwargs):
        return {"refused": True}
    start, end = reports.period_ending(datetime.now(UTC), get_settings().alerts.report_period_seconds)
    with all_tenants():
        due = reports.due_streams(start, end)
    queued = []
    for tenant, stream in due:
        with tenant_scope(tenant):
            queued.append(request_report(stream, start, end, requested_by=None, trigger="schedule")["id"])
    return {"period": [start.isoformat(), end.isoformat()], "queued": len(queued)}
