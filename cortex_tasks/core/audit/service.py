"""The audit log in PostgreSQL: writing events in bulk, reading them back, and expiring old ones.

Event types are the audited actions plus the alerts they raise:
- model_access: which key used which model; aggregated, one row per (key, model, action, minute) whose
  `count` gateways add to, never one row per request;
- configuration_changes: keys, model stages, training jobs, vector collections;
- security_violations: missing or bad keys (401), missing permissions (403), rate limiting (429);
- alerts: violations from one key or IP that reached a configured threshold (see alerts.py).
"""
from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.storable import storable
from cortex_tasks.core.storage.tables import AuditEvent

MODEL_ACCESS = "model_access"
CONFIGURATION_CHANGES = "configuration_changes"
SECURITY_VIOLATIONS = "security_violations"
ALERTS = "alerts"
EVENT_TYPES = (MODEL_ACCESS, CONFIGURATION_CHANGES, SECURITY_VIOLATIONS, ALERTS)
PURGE_BATCH_ROWS = 10_000


@dataclass
class AuditRecord:
    event_type: str
    action: str
    outcome: str  # success | failure | denied | fired
    actor_key_id: str | None = None
    actor_role: str | None = None
    resource: str | None = None
    ip: str | None = None
    details: dict[str, Any] | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    count: int = 1

    def row(self) -> dict[str, Any]:
        """The table row. What a client sent (a path, a key id, body fields in details) may hold characters
        PostgreSQL cannot store; they are replaced, since one such event would fail its whole batch."""
        return {"at": self.at, "event_type": self.event_type, "action": storable(self.action[:64]),
                "actor_key_id": storable(self.actor_key_id), "actor_role": self.actor_role,
                "resource": storable(self.resource[:256]) if self.resource else None, "outcome": self.outcome,
                "ip": self.ip, "count": self.count, "details": storable(self.details)}


def cli_actor(action: str, resource: str | None, details: dict[str, Any] | None = None) -> AuditRecord:
    """A configuration change made with the `cortex` command (no API key: the operating-system user)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return AuditRecord(CONFIGURATION_CHANGES, action, "success", resource=resource,
                       details={**(details or {}), "via": "cli", "os_user": user})


def record_events(records: list[AuditRecord]) -> int:
    """Write events in one transaction. model_access records add their counts to the minute's row
    (callers pass at most one record per key, model, action and minute)."""
    access = [record.row() for record in records if record.event_type == MODEL_ACCESS]
    others = [record.row() for record in records if record.event_type != MODEL_ACCESS]
    if not access and not others:
        return 0
    with session_scope() as session:
        if others:
            session.execute(insert(AuditEvent), others)
        if access:
            statement = pg_insert(AuditEvent).values(access)
            session.execute(statement.on_conflict_do_update(
                index_elements=["actor_key_id", "resource", "action", "at"],
                index_where=AuditEvent.event_type == MODEL_ACCESS,
                set_={"count": AuditEvent.count + statement.excluded.count},
            ))
    return len(access) + len(others)


def event_to_api(row: AuditEvent) -> dict[str, Any]:
    return {"id": row.id, "at": row.at.isoformat(), "type": row.event_type, "action": row.action,
            "actor": {"key_id": row.actor_key_id, "role": row.actor_role}, "resource": row.resource,
            "outcome": row.outcome, "ip": row.ip, "count": row.count, "details": row.details or {}}


def query_events(event_type: str | None = None, actor: str | None = None, since: datetime | None = None,
                 until: datetime | None = None, page: int = 1, size: int = 50) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; returns one page and whether another follows."""
    statement = select(AuditEvent)
    if event_type:
        statement = statement.where(AuditEvent.event_type == event_type)
    if actor:
        statement = statement.where(AuditEvent.actor_key_id == actor)
    if since:
        statement = statement.where(AuditEvent.at >= since)
    if until:
        statement = statement.where(AuditEvent.at < until)
    statement = (statement.order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
                 .offset((page - 1) * size).limit(size + 1))
    with session_scope() as session:
        rows = session.scalars(statement).all()
    return [event_to_api(row) for row in rows[:size]], len(rows) > size


def purge_older_than(days: float, now: datetime | None = None) -> int:
    """Delete events older than the retention period, in bounded batches so no lock is held for long."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deleted = 0
    while True:
        with session_scope() as session:
            oldest = select(AuditEvent.id).where(AuditEvent.at < cutoff).limit(PURGE_BATCH_ROWS)
            count = session.execute(delete(AuditEvent).where(AuditEvent.id.in_(oldest.scalar_subquery()))).rowcount
        deleted += count
        if count < PURGE_BATCH_ROWS:
            return deleted
