"""Retention of what the streams and alerting keep: alert groups (with their alerts and deliveries),
stream reports (rows and their files in the object store), stored windows and verdicts.

Beat runs `expire_stream_history` daily on the maintenance queue. It walks the tenants one by one and
works inside each tenant's scope, so every statement is the storage layer's tenant-scoped one and uses
the per-tenant indexes; deletes go in batches of BATCH_ROWS, each its own short transaction.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from cortex_tasks.core.auth.keys import tenant_ids
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.object_store import ObjectNotFound, ObjectStoreError, get_object_store
from cortex_tasks.core.storage.tables import (
    Alert,
    AlertDelivery,
    AlertGroup,
    StreamDeclaration,
    StreamReport,
    StreamVerdict,
    StreamWindow,
)
from cortex_tasks.core.tenancy import tenant_scope
from cortex_tasks.runtime.alerting.reports import object_names

log = logging.getLogger(__name__)

BATCH_ROWS = 1000
# The most batches of one kind for one tenant per run: a backlog (retention just shortened) is worked off
# over several runs instead of one task outliving its time limit.
MAX_BATCHES = 200


def _in_batches(select_ids: Callable[[Any], list[Any]], table: Any) -> int:
    """Delete the rows `select_ids` picks, BATCH_ROWS per transaction, until none are left."""
    deleted = 0
    for _ in range(MAX_BATCHES):
        with session_scope() as session:
            ids = select_ids(session)
            if ids:
                session.execute(delete(table).where(table.id.in_(ids))
                                .execution_options(synchronize_session=False))
        deleted += len(ids)
        if len(ids) < BATCH_ROWS:
            break
    return deleted


def expire_alert_groups(cutoff: datetime) -> int:
    """Closed groups whose every alert was last seen, and every delivery created, before `cutoff`; their
    alerts and deliveries go with them (ON DELETE CASCADE). A group still open, or one of whose alerts
    keeps recurring (deduplicated repeats update `last_seen_at`), stays."""
    recent_alert = select(Alert.id).where(Alert.group_id == AlertGroup.id, Alert.last_seen_at >= cutoff).exists()
    recent_delivery = select(AlertDelivery.id).where(AlertDelivery.group_id == AlertGroup.id,
                                                     AlertDelivery.created_at >= cutoff).exists()

    def old_groups(session: Any) -> list[str]:
        return list(session.execute(
            select(AlertGroup.id).where(AlertGroup.closed, AlertGroup.closes_at < cutoff, ~recent_alert,
                                        ~recent_delivery)
            .limit(BATCH_ROWS)).scalars())

    return _in_batches(old_groups, AlertGroup)


def _delete_files(store: Any, names: set[str]) -> int:
    deleted = 0
    for name in sorted(names):
        try:
            deleted += store.delete(name)
        except ObjectNotFound:  # deleted meanwhile: what was wanted
            pass
    return deleted


def expire_reports(cutoff: datetime, tenant: str) -> dict[str, int]:
    """Reports created before `cutoff`: their files first, then the row. When a file cannot be deleted (the
    object store is down), its report keeps its row and this run stops there: the next run tries again
    from it. A file already gone counts as deleted."""
    store = get_object_store()
    deleted = files = 0
    for _ in range(MAX_BATCHES):
        with session_scope() as session:
            rows = session.execute(
                select(StreamReport.id, StreamReport.stream, StreamReport.json_key, StreamReport.html_key)
                .where(StreamReport.created_at < cutoff).order_by(StreamReport.created_at, StreamReport.id)
                .limit(BATCH_ROWS)).all()
        gone: list[str] = []
        failed = False
        for report_id, stream, json_key, html_key in rows:
            # The names the writer uses as well as those the row holds: a report that failed after
            # storing one file has no key in its row.
            names = {*object_names(tenant, stream, report_id), json_key, html_key} - {None}
            try:
                files += _delete_files(store, names)
            except (ObjectStoreError, OSError) as exc:
                log.warning("report %s: its files could not be deleted (%s); it is kept for the next run",
                            report_id, exc)
                failed = True
                break
            gone.append(report_id)
        if gone:
            with session_scope() as session:
                session.execute(delete(StreamReport).where(StreamReport.id.in_(gone))
                                .execution_options(synchronize_session=False))
        deleted += len(gone)
        if failed or len(rows) < BATCH_ROWS:
            return {"reports": deleted, "report_files": files, "report_deletions_failed": int(failed)}
    return {"reports": deleted, "report_files": files, "report_deletions_failed": 0}


def expire_stream_rows(window_cutoff: datetime, verdict_cutoff: datetime) -> dict[str, int]:
    """Windows that started, and verdicts of events that happened, before their cutoffs (event time, as the
    windows API and the reports read them), stream by stream so the (tenant, stream, time) indexes serve."""
    with session_scope() as session:
        streams = list(session.execute(select(StreamDeclaration.name).distinct()).scalars())
    windows = verdicts = 0
    for stream in streams:
        windows += _in_batches(lambda session, stream=stream: list(session.execute(
            select(StreamWindow.id).where(StreamWindow.stream == stream, StreamWindow.window_start < window_cutoff)
            .limit(BATCH_ROWS)).scalars()), StreamWindow)
        verdicts += _in_batches(lambda session, stream=stream: list(session.execute(
            select(StreamVerdict.id).where(StreamVerdict.stream == stream, StreamVerdict.event_time < verdict_cutoff)
            .limit(BATCH_ROWS)).scalars()), StreamVerdict)
    return {"windows": windows, "verdicts": verdicts}


def expire_stream_history(now: datetime | None = None) -> dict[str, int]:
    """Apply CORTEX_ALERT_RETENTION, CORTEX_REPORT_RETENTION, CORTEX_STREAM_WINDOW_RETENTION and
    CORTEX_STREAM_VERDICT_RETENTION to every tenant; the counts of what went."""
    now = now or datetime.now(UTC)
    settings = get_settings()
    alert_cutoff = now - timedelta(days=settings.alerts.alert_retention_days)
    report_cutoff = now - timedelta(days=settings.alerts.report_retention_days)
    window_cutoff = now - timedelta(days=settings.streams.window_retention_days)
    verdict_cutoff = now - timedelta(days=settings.streams.verdict_retention_days)
    # The list of tenants is the platform's; everything after it runs in one tenant's scope.
    tenants = tenant_ids()
    totals: dict[str, int] = {"tenants": len(tenants), "alert_groups": 0, "reports": 0, "report_files": 0,
                              "report_deletions_failed": 0, "windows": 0, "verdicts": 0}
    for tenant in tenants:
        with tenant_scope(tenant):
            totals["alert_groups"] += expire_alert_groups(alert_cutoff)
            counts = {**expire_reports(report_cutoff, tenant), **expire_stream_rows(window_cutoff, verdict_cutoff)}
        for name, count in counts.items():
            totals[name] += count
    return totals
