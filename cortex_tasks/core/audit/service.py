"""The audit log in PostgreSQL: appending events to its hash chain, reading them back, and expiring old ones.

Event types are the audited actions plus the alerts they raise:
- model_access: which key used which model; aggregated, one row per (key, model, action, minute) and
  gateway flush with a `count`, never one row per request; readers sum a minute's rows;
- configuration_changes: keys, model stages, training jobs, vector collections, documents, retention;
- security_violations: missing or bad keys (401), missing permissions (403), rate limiting (429);
- alerts: violations from one key or IP that reached a configured threshold (see alerts.py).

The log is append-only and hash-chained (chain.py; migration 0009 makes PostgreSQL refuse UPDATE,
TRUNCATE and any DELETE but of the oldest rows). Appends are serialized by a row lock on `audit_chain`:
every writer (each gateway process, workers, the CLI) takes it, reads the head, allocates ids, hashes its
rows onto the head and inserts them in one statement, so concurrent writers never fork the chain. The
lock is held for one flush: a handful of statements, whatever the number of rows.
"""
from __future__ import annotations

import getpass
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, case, delete, func, insert, select
from sqlalchemy.dialects.postgresql import array_agg
from sqlalchemy.orm import Session

from cortex_tasks.core.audit.chain import CHAIN_ID, row_hash
from cortex_tasks.core.storage.storable import storable
from cortex_tasks.core.storage.tables import AuditChain, AuditEvent

MODEL_ACCESS = "model_access"
CONFIGURATION_CHANGES = "configuration_changes"
SECURITY_VIOLATIONS = "security_violations"
ALERTS = "alerts"
EVENT_TYPES = (MODEL_ACCESS, CONFIGURATION_CHANGES, SECURITY_VIOLATIONS, ALERTS)
PURGE_BATCH_ROWS = 10_000


def _finite(value: Any) -> Any:
    """JSONB has no NaN or Infinity (Python's JSON parser accepts them in a request body): written as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


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
    tenant: str | None = None  # the actor's tenant; None for system events and unknown callers

    def row(self) -> dict[str, Any]:
        """The table row. What a client sent (a path, a key id, body fields in details) may hold characters
        PostgreSQL cannot store; they are replaced, since one such event would fail its whole batch."""
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=UTC)
        return {"at": at, "event_type": self.event_type, "action": storable(self.action[:64]),
                "tenant": storable(self.tenant[:64]) if self.tenant else None,
                "actor_key_id": storable(self.actor_key_id), "actor_role": self.actor_role,
                "resource": storable(self.resource[:256]) if self.resource else None, "outcome": self.outcome,
                "ip": self.ip, "count": self.count, "details": _finite(storable(self.details))}


def cli_actor(action: str, resource: str | None, details: dict[str, Any] | None = None) -> AuditRecord:
    """A configuration change made with the `cortex` command (no API key: the operating-system user)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return AuditRecord(CONFIGURATION_CHANGES, action, "success", resource=resource,
                       details={**(details or {}), "via": "cli", "os_user": user})


@contextmanager
def _transaction(engine: Engine | None) -> Iterator[Session]:
    """A session in one transaction, on the process's engine or on the one given (tests, other databases)."""
    if engine is None:
        from cortex_tasks.core.storage.db import session_scope

        with session_scope() as session:
            yield session
        return
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


class ChainMissing(RuntimeError):
    """audit_chain has no row: the database was not migrated (or the row was removed by its owner)."""


def _lock_chain(session: Session) -> AuditChain:
    chain = session.scalars(select(AuditChain).where(AuditChain.id == CHAIN_ID).with_for_update()).one_or_none()
    if chain is None:
        raise ChainMissing("audit_chain has no row: run `cortex migrate`")
    return chain


def append_events(session: Session, records: list[AuditRecord]) -> int:
    """Append events to the chain in the session's transaction (the lock is held until it ends)."""
    if not records:
        return 0
    chain = _lock_chain(session)
    # Ids are taken under the lock and sorted, so id order is chain order whatever order PostgreSQL hands
    # them out in within one statement.
    sequence = func.pg_get_serial_sequence(AuditEvent.__tablename__, "id")
    ids = sorted(session.scalars(select(func.nextval(sequence)).select_from(func.generate_series(1, len(records)))))
    rows, previous = [], chain.head_hash
    for event_id, record in zip(ids, records, strict=True):
        row = {"id": event_id, **record.row(), "prev_hash": previous}
        row["row_hash"] = previous = row_hash(row, previous)
        rows.append(row)
    session.execute(insert(AuditEvent), rows)
    chain.head_id, chain.head_hash = ids[-1], previous
    return len(rows)


def record_events(records: list[AuditRecord], engine: Engine | None = None) -> int:
    """Write events in one transaction, appended to the chain in the order given."""
    if not records:
        return 0
    with _transaction(engine) as session:
        return append_events(session, records)


def event_to_api(row: Any) -> dict[str, Any]:
    return {"id": row.id, "at": row.at.isoformat(), "type": row.event_type, "action": row.action,
            "tenant": row.tenant, "actor": {"key_id": row.actor_key_id, "role": row.actor_role},
            "resource": row.resource, "outcome": row.outcome, "ip": row.ip, "count": row.count,
            "details": row.details or {}}


_GROUPED = (AuditEvent.at, AuditEvent.event_type, AuditEvent.action, AuditEvent.tenant, AuditEvent.actor_key_id,
            AuditEvent.actor_role, AuditEvent.resource, AuditEvent.outcome, AuditEvent.ip)


def query_events(event_type: str | None = None, actor: str | None = None, since: datetime | None = None,
                 until: datetime | None = None, page: int = 1, size: int = 50,
                 tenant: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; returns one page and whether another follows. The model_access rows of one key, model,
    action and minute (one per gateway flush) are one event with their counts summed, its id the first
    row's; every other row is an event of its own. `tenant`: only that tenant's events (None: all, for the
    platform admin; the audit table is the platform's, not tenant-owned, so the filter is named here)."""
    one_event = case((AuditEvent.event_type == MODEL_ACCESS, 0), else_=AuditEvent.id)
    statement = select(func.min(AuditEvent.id).label("id"), *_GROUPED,
                       func.sum(AuditEvent.count).label("count"),
                       # one row per group but for model_access, whose rows hold no details
                       array_agg(AuditEvent.details)[1].label("details"))
    if event_type:
        statement = statement.where(AuditEvent.event_type == event_type)
    if tenant is not None:
        statement = statement.where(AuditEvent.tenant == tenant)
    if actor:
        statement = statement.where(AuditEvent.actor_key_id == actor)
    if since:
        statement = statement.where(AuditEvent.at >= since)
    if until:
        statement = statement.where(AuditEvent.at < until)
    statement = (statement.group_by(*_GROUPED, one_event)
                 .order_by(AuditEvent.at.desc(), func.min(AuditEvent.id).desc())
                 .offset((page - 1) * size).limit(size + 1))
    with _transaction(None) as session:
        rows = session.execute(statement).all()
    return [event_to_api(row) for row in rows[:size]], len(rows) > size


def purge_older_than(days: float, now: datetime | None = None, engine: Engine | None = None) -> int:
    """Delete the events older than the retention period that begin the chain, in bounded batches so no
    lock is held for long, and move the chain's recorded start to the last row deleted (so the log still
    verifies). Only a prefix of the chain can go: an old row appended after a newer one (a back-dated
    event) waits until everything before it has expired. The purge itself is recorded."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=days)
    with _transaction(engine) as session:
        first_kept = session.scalar(select(AuditEvent.id).where(AuditEvent.at >= cutoff)
                                    .order_by(AuditEvent.id).limit(1))
        if first_kept is None:  # every row is old: up to the last one now
            last = session.scalar(select(func.max(AuditEvent.id)))
            first_kept = None if last is None else last + 1
    if first_kept is None:
        return 0
    deleted, through_id = 0, None
    while True:
        with _transaction(engine) as session:
            batch = (select(AuditEvent.id).where(AuditEvent.id < first_kept)
                     .order_by(AuditEvent.id).limit(PURGE_BATCH_ROWS))
            gone = session.execute(delete(AuditEvent).where(AuditEvent.id.in_(batch.scalar_subquery()))
                                   .returning(AuditEvent.id, AuditEvent.row_hash)).all()
            if gone:
                last_id, last_hash = max(gone)
                chain = _lock_chain(session)
                if chain.start_after_id is None or last_id > chain.start_after_id:
                    chain.start_after_id, chain.start_hash = last_id, last_hash
                chain.purged_rows += len(gone)
                chain.purged_at = now
                deleted, through_id = deleted + len(gone), last_id
        if len(gone) < PURGE_BATCH_ROWS:
            break
    if deleted:
        record_events([AuditRecord(CONFIGURATION_CHANGES, "audit.purge", "success", resource="audit_events",
                                   details={"deleted": deleted, "through_id": through_id,
                                            "cutoff": cutoff.isoformat(), "retention_days": days})], engine)
    return deleted
