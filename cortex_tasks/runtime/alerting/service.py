"""What the alert worker does with one raised alert, and with a group whose window has closed.

Every decision about one source and rule is taken under a PostgreSQL advisory lock held for the
transaction, so any number of worker processes (and machines) agree on groups, duplicates and cooldowns:
the state is the tables themselves, read and changed in the same transaction as the lock. The decisions
are core/alerting/policy.py's; this module reads the snapshot and writes what they say.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cortex_tasks.core.alerting.intake import AlertPolicy
from cortex_tasks.core.alerting.policy import (
    OpenGroup,
    Outcome,
    RuleState,
    decide,
    dedup_since,
    default_policy,
    digest_due,
)
from cortex_tasks.core.alerting.storage import CORTEX_SOURCE, alert_record, operator_channel_ids
from cortex_tasks.core.contracts.alert_messages import AlertMessage
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Alert, AlertChannel, AlertDelivery, AlertGroup
from cortex_tasks.core.tenancy import current_tenant

log = logging.getLogger(__name__)
SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}


@dataclass
class Processed:
    """What happened to one alert, and what to send once the transaction has committed."""

    outcome: str
    alert_id: str | None = None
    group_id: str | None = None
    deliveries: list[str] = field(default_factory=list)
    close_at: datetime | None = None  # OPENED: when to close the group

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "alert_id": self.alert_id, "group_id": self.group_id,
                "deliveries": len(self.deliveries)}


def policy_of(message: AlertMessage) -> AlertPolicy:
    if message.policy is None:
        return default_policy()
    given = message.policy
    return AlertPolicy(grouping_window_s=given.grouping_window_s, max_per_group=given.max_per_group,
                       cooldown_s=given.cooldown_s, dedup_window_s=given.dedup_window_s)


def _lock(session: Session, tenant: str, source: str, rule: str) -> None:
    # One lock per source and rule, not per group key: a dedup key may recur under another group key.
    key = f"cortex.alerts:{tenant}:{source}:{rule}"
    session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))


def _last_notified(session: Session, source: str, rule: str, group_key: str,
                   other_than: str | None = None) -> datetime | None:
    statement = select(func.max(func.greatest(AlertGroup.notified_at, AlertGroup.digest_at))).where(
        AlertGroup.source == source, AlertGroup.rule == rule, AlertGroup.group_key == group_key)
    if other_than is not None:
        statement = statement.where(AlertGroup.id != other_than)
    return session.execute(statement).scalar()


def _held_back(session: Session, group: AlertGroup, since: datetime | None) -> int:
    """Alerts of the key stored without any notification since the last one (cooldown), other groups."""
    statement = select(func.coalesce(func.sum(AlertGroup.alert_count + AlertGroup.folded_count), 0)).where(
        AlertGroup.source == group.source, AlertGroup.rule == group.rule, AlertGroup.group_key == group.group_key,
        AlertGroup.id != group.id, AlertGroup.notified_at.is_(None), AlertGroup.digest_at.is_(None))
    if since is not None:
        statement = statement.where(AlertGroup.opened_at >= since)
    return int(session.execute(statement).scalar() or 0)


def _snapshot(session: Session, message: AlertMessage, policy: AlertPolicy, now: datetime) -> RuleState:
    duplicate_of = None
    since = dedup_since(policy, now)
    if since is not None:
        duplicate_of = session.execute(
            select(Alert.id).where(Alert.source == message.source, Alert.rule == message.rule,
                                   Alert.dedup_key == message.dedup_key, Alert.state != "resolved",
                                   Alert.first_seen_at >= since)
            .order_by(Alert.first_seen_at.desc()).limit(1)).scalar()
    latest = session.execute(
        select(AlertGroup.id, AlertGroup.opened_at, AlertGroup.alert_count, AlertGroup.closed)
        .where(AlertGroup.source == message.source, AlertGroup.rule == message.rule,
               AlertGroup.group_key == message.group_key)
        .order_by(AlertGroup.opened_at.desc()).limit(1)).first()
    # A closed group has sent its digest: an alert that reaches it late (it waited in the queue) opens a
    # group of its own rather than joining one that will never be sent again.
    open_group = OpenGroup(latest.id, latest.opened_at, latest.alert_count) if latest and not latest.closed else None
    return RuleState(duplicate_of=duplicate_of,
                     open_group=open_group,
                     last_notified_at=_last_notified(session, message.source, message.rule, message.group_key))


def process_alert(message: AlertMessage) -> Processed:
    """Deduplicate, group, store and (policy permitting) queue the first notice of one alert. Runs in the
    message's tenant (the worker enters it). The alert's time is when the intake accepted it."""
    policy = policy_of(message)
    now = datetime.fromisoformat(message.raised_at)
    tenant = current_tenant()
    with session_scope() as session:
        _lock(session, tenant, message.source, message.rule)
        decision = decide(_snapshot(session, message, policy, now), policy, now)
        if decision.outcome is Outcome.DUPLICATE:
            session.execute(update(Alert).where(Alert.id == decision.alert_id).values(
                occurrences=Alert.occurrences + 1, last_seen_at=func.greatest(Alert.last_seen_at, now)))
            return Processed(decision.outcome.value, alert_id=decision.alert_id)
        if decision.outcome is Outcome.FOLDED:
            session.execute(update(AlertGroup).where(AlertGroup.id == decision.group_id).values(
                folded_count=AlertGroup.folded_count + 1))
            return Processed(decision.outcome.value, group_id=decision.group_id)
        if decision.outcome is Outcome.JOINED:
            group = session.get(AlertGroup, decision.group_id)
            assert group is not None  # read under the same lock a moment ago
            group.alert_count += 1
            if SEVERITY_RANK[message.severity] > SEVERITY_RANK[group.severity]:
                group.severity = message.severity
            alert = _new_alert(message, group.id, now, notified=False)
            session.add(alert)
            return Processed(decision.outcome.value, alert_id=alert.id, group_id=group.id)
        group = AlertGroup(id=str(uuid.uuid4()), source=message.source, rule=message.rule,
                           group_key=message.group_key, severity=message.severity, opened_at=now,
                           closes_at=now + timedelta(seconds=policy.grouping_window_s), alert_count=1,
                           folded_count=0, policy=_policy_json(policy), channels=list(message.channels),
                           notified_at=now if decision.notify_now else None, closed=False)
        alert = _new_alert(message, group.id, now, notified=decision.notify_now)
        session.add(group)
        session.flush()
        session.add(alert)
        session.flush()
        processed = Processed(decision.outcome.value, alert_id=alert.id, group_id=group.id, close_at=group.closes_at)
        if decision.notify_now:
            earlier = _last_notified(session, group.source, group.rule, group.group_key, other_than=group.id)
            notice = notification(group, [alert], kind="first", folded=0, held_back=_held_back(session, group, earlier))
            processed.deliveries = _queue_deliveries(session, group, notice)
        return processed


def close_group(group_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Close a group whose window has passed: one digest of what joined it after its first notice (or of
    all of it, when its first notice was held back), unless the key is cooling down. Idempotent."""
    now = now or datetime.now(UTC)
    tenant = current_tenant()
    with session_scope() as session:
        found = session.execute(select(AlertGroup.source, AlertGroup.rule).where(AlertGroup.id == group_id)).first()
        if found is None:
            return {"group_id": group_id, "outcome": "unknown"}
        _lock(session, tenant, found.source, found.rule)
        group = session.get(AlertGroup, group_id, populate_existing=True)
        assert group is not None
        if group.closed:
            return {"group_id": group_id, "outcome": "already_closed", "deliveries": []}
        if now < group.closes_at:
            return {"group_id": group_id, "outcome": "not_due", "due_in": (group.closes_at - now).total_seconds(),
                    "deliveries": []}
        policy = AlertPolicy(**group.policy)
        pending = session.execute(select(Alert).where(Alert.group_id == group.id, Alert.notified.is_(False))
                                  .order_by(Alert.first_seen_at)).scalars().all()
        earlier = _last_notified(session, group.source, group.rule, group.group_key, other_than=group.id)
        group.closed = True
        deliveries: list[str] = []
        if digest_due(pending=len(pending) + group.folded_count, earlier_notified_at=earlier, policy=policy, now=now):
            group.digest_at = now
            for alert in pending:
                alert.notified = True
            notice = notification(group, list(pending), kind="digest", folded=group.folded_count,
                                  held_back=_held_back(session, group, earlier))
            deliveries = _queue_deliveries(session, group, notice)
            outcome = "digest"
        else:
            outcome = "nothing_to_send" if not (pending or group.folded_count) else "cooling_down"
        return {"group_id": group_id, "outcome": outcome, "deliveries": deliveries}


def _new_alert(message: AlertMessage, group_id: str, now: datetime, *, notified: bool) -> Alert:
    return Alert(id=str(uuid.uuid4()), group_id=group_id, source=message.source, rule=message.rule,
                 group_key=message.group_key, severity=message.severity, summary=message.summary,
                 details=message.details, dedup_key=message.dedup_key,
                 occurred_at=datetime.fromisoformat(message.occurred_at), first_seen_at=now, last_seen_at=now,
                 occurrences=1, state="open", notified=notified)


def _policy_json(policy: AlertPolicy) -> dict[str, Any]:
    return {"grouping_window_s": policy.grouping_window_s, "max_per_group": policy.max_per_group,
            "cooldown_s": policy.cooldown_s, "dedup_window_s": policy.dedup_window_s}


def notification(group: AlertGroup, alerts: list[Alert], *, kind: str, folded: int, held_back: int) -> dict[str, Any]:
    """What every channel renders (runtime/alerting/channels.py): the group and its alerts to tell."""
    return {
        "kind": kind,
        "group_id": group.id,
        "tenant": group.tenant,
        "source": group.source,
        "rule": group.rule,
        "group_key": group.group_key,
        "severity": max((alert.severity for alert in alerts), key=SEVERITY_RANK.__getitem__, default=group.severity),
        "opened_at": group.opened_at.isoformat(),
        "closes_at": group.closes_at.isoformat(),
        "alerts": [alert_record(alert) for alert in alerts],
        "folded": folded,  # alerts past max_per_group: counted, not listed
        "held_back": held_back,  # alerts stored without a notice during the cooldown before this one
    }


def _channel_ids(session: Session, group: AlertGroup) -> list[str]:
    """The channels of a group: those it names, else the tenant's default ones; Cortex's own alerts also
    go to the operators' channels of the settings."""
    rows = session.execute(select(AlertChannel.name, AlertChannel.is_default)).all()
    if group.channels:
        known = {row.name for row in rows}
        chosen = [name for name in group.channels if name in known]
        # A name with no channel is recorded as a failed delivery below, so it is seen, not dropped.
        chosen += [f"missing:{name}" for name in group.channels if name not in known]
    else:
        chosen = [row.name for row in rows if row.is_default]
    if group.source == CORTEX_SOURCE:
        chosen += operator_channel_ids()
    return chosen


def _queue_deliveries(session: Session, group: AlertGroup, notice: dict[str, Any]) -> list[str]:
    ids = []
    for channel in _channel_ids(session, group):
        missing = channel.startswith("missing:")
        delivery = AlertDelivery(id=str(uuid.uuid4()), group_id=group.id, channel=channel.removeprefix("missing:"),
                                 kind=notice["kind"], notification=notice,
                                 status="failed" if missing else "pending", attempts=0,
                                 last_error="no alert channel of this name" if missing else None)
        session.add(delivery)
        if not missing:
            ids.append(delivery.id)
    if not ids:
        log.warning("alert group %s (%s/%s) has no channel to notify", group.id, group.source, group.rule)
    return ids


def overdue_groups(before: datetime) -> list[tuple[str, str]]:
    """(tenant, group id) of open groups that should have closed before `before` (called for all tenants)."""
    with session_scope() as session:
        return [(row.tenant, row.id) for row in session.execute(
            select(AlertGroup.tenant, AlertGroup.id).where(AlertGroup.closed.is_(False),
                                                           AlertGroup.closes_at < before).limit(1000))]
