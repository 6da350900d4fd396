"""The aggregation rules (the architecture's alert_aggregation block), as pure decisions on a snapshot of
one rule's state, so they can be checked with any clock; storage.py takes the snapshot and applies the
decision under a lock that every worker process shares.

- Deduplication: an alert whose dedup key was seen (same source and rule) within the dedup window, and
  that is not resolved, is folded into that alert: its occurrence count grows, nothing is sent.
- Grouping: alerts of one source, rule and group key raised within the grouping window of the first one
  form a group. The group keeps at most max_per_group alerts; later ones are only counted in it.
- Notification: the first alert of a group is sent at once; what joined it afterwards is sent as one
  digest when the window closes. Cooldown: after a notification of a source, rule and group key, the
  next group of the same key sends nothing until the cooldown has passed since that notification (its
  alerts are stored, and counted in the next notification as held back). A group's own digest is not
  held back by its own first notice: it belongs to the same group.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from cortex_tasks.core.alerting.intake import AlertPolicy
from cortex_tasks.core.settings import get_settings


def default_policy() -> AlertPolicy:
    """The settings' policy (CORTEX_ALERT_*: 5m, 10, 15m and 1h unless configured)."""
    alerts = get_settings().alerts
    return AlertPolicy(grouping_window_s=alerts.grouping_window_seconds, max_per_group=alerts.max_per_group,
                       cooldown_s=alerts.cooldown_seconds,
                       dedup_window_s=alerts.dedup_window_seconds if alerts.dedup_enabled else 0.0)


class Outcome(str, Enum):
    DUPLICATE = "duplicate"  # folded into an earlier alert
    JOINED = "joined"  # kept in the open group, sent with its digest
    FOLDED = "folded"  # the open group is full: counted in it
    OPENED = "opened"  # first of a new group


@dataclass(frozen=True)
class OpenGroup:
    id: str
    opened_at: datetime
    alert_count: int


@dataclass(frozen=True)
class RuleState:
    """What storage found for one alert's source, rule, group key and dedup key."""

    duplicate_of: str | None  # an unresolved alert with the same dedup key within the dedup window
    open_group: OpenGroup | None  # the latest group of the key while it is not closed (its age decides)
    last_notified_at: datetime | None  # the latest notification of the key (any group)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    alert_id: str | None = None  # DUPLICATE: the alert folded into
    group_id: str | None = None  # JOINED / FOLDED: the group
    notify_now: bool = False  # OPENED: send the first notice at once


def in_cooldown(last_notified_at: datetime | None, policy: AlertPolicy, now: datetime) -> bool:
    return last_notified_at is not None and now < last_notified_at + timedelta(seconds=policy.cooldown_s)


def decide(state: RuleState, policy: AlertPolicy, now: datetime) -> Decision:
    if state.duplicate_of is not None and policy.dedup_window_s > 0:
        return Decision(Outcome.DUPLICATE, alert_id=state.duplicate_of)
    group = state.open_group
    if group is not None and now < group.opened_at + timedelta(seconds=policy.grouping_window_s):
        if group.alert_count >= policy.max_per_group:
            return Decision(Outcome.FOLDED, group_id=group.id)
        return Decision(Outcome.JOINED, group_id=group.id)
    return Decision(Outcome.OPENED, notify_now=not in_cooldown(state.last_notified_at, policy, now))


def dedup_since(policy: AlertPolicy, now: datetime) -> datetime | None:
    """The earliest first-seen time an alert may have to absorb a repeat; None: deduplication is off."""
    return now - timedelta(seconds=policy.dedup_window_s) if policy.dedup_window_s > 0 else None


def digest_due(*, pending: int, earlier_notified_at: datetime | None, policy: AlertPolicy, now: datetime) -> bool:
    """Whether a closing group sends a digest: it holds alerts not notified yet (`pending`, folded ones
    included) and no notification of another group of its key is within the cooldown."""
    return pending > 0 and not in_cooldown(earlier_notified_at, policy, now)
