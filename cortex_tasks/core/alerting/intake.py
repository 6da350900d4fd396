"""Where every alert enters: stream detectors (`source="stream:<name>"`) and Cortex's own rules
(`source="cortex"`) call `raise_alert`, and nothing else.

`raise_alert` only publishes one message to the `alerts` queue (one Redis LPUSH through Celery): no
database, no HTTP, no lock, so a detector is never slowed down by a slow channel or a busy database.
Deduplication, grouping, cooldown, storage and delivery happen in the worker that consumes the queue
(runtime/alerting/tasks.py). The hand-off is durable: once `raise_alert` returns, the message is in Redis,
the worker acknowledges it only after the alert is stored (acks_late), and a worker that dies redelivers
it. When the broker cannot take it, `raise_alert` raises AlertNotAccepted: the caller still holds what
caused the alert (an unacknowledged stream entry) and must not acknowledge it, so nothing is dropped
in silence.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cortex_tasks.core.contracts.alert_messages import SEVERITIES, AlertMessage, PolicyFields
from cortex_tasks.core.contracts.task_names import ALERTS_PROCESS_ALERT
from cortex_tasks.core.queues import ALERTS, PRIORITY_CLASSES

# How long the publish may retry a lost broker connection before giving up: short, since the caller
# is a detector in its hot loop and keeps its own unacknowledged input to retry with.
PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.5}
MAX_DETAILS_BYTES = 16 * 1024


@dataclass(frozen=True)
class AlertPolicy:
    """How alerts of one source and rule are aggregated (the architecture's alert_aggregation block)."""

    grouping_window_s: float
    max_per_group: int
    cooldown_s: float
    dedup_window_s: float


@dataclass(frozen=True)
class AlertCandidate:
    source: str            # "stream:<name>" or "cortex"
    rule: str
    group_key: str         # what alerts of one source+rule are grouped by (an event key, a route, a model)
    severity: str          # "high" | "medium" | "low"
    summary: str
    details: dict[str, Any]  # JSON-safe
    occurred_at: datetime
    dedup_key: str         # the same dedup_key within the dedup window is one alert
    channels: tuple[str, ...] = ()   # alert channel names of the tenant; () = the tenant's default channels
    policy: AlertPolicy | None = None  # None = the settings' defaults


class AlertNotAccepted(RuntimeError):
    """The alert could not be handed to the broker: the caller keeps its input and tries again."""


def alert_message(candidate: AlertCandidate, *, tenant: str, raised_at: datetime | None = None) -> AlertMessage:
    """The message `raise_alert` sends; ValueError names what is wrong with a candidate (a caller's bug)."""
    if candidate.severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {candidate.severity!r}")
    if candidate.occurred_at.tzinfo is None:
        raise ValueError("occurred_at must carry a time zone")
    try:
        details_text = json.dumps(candidate.details, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"details must be JSON-safe: {exc}") from None
    if len(details_text) > MAX_DETAILS_BYTES:
        raise ValueError(f"details are {len(details_text)} bytes as JSON; at most {MAX_DETAILS_BYTES}")
    policy = candidate.policy
    return AlertMessage(
        tenant=tenant,
        source=candidate.source,
        rule=candidate.rule,
        group_key=candidate.group_key,
        severity=candidate.severity,  # type: ignore[arg-type]
        summary=candidate.summary,
        details=json.loads(details_text),
        occurred_at=candidate.occurred_at.isoformat(),
        raised_at=(raised_at or datetime.now(UTC)).isoformat(),
        dedup_key=candidate.dedup_key,
        channels=list(candidate.channels),
        policy=None if policy is None else PolicyFields(
            grouping_window_s=float(policy.grouping_window_s), max_per_group=int(policy.max_per_group),
            cooldown_s=float(policy.cooldown_s), dedup_window_s=float(policy.dedup_window_s)),
    )


def raise_alert(candidate: AlertCandidate, *, tenant: str) -> None:
    """Hand one alert to the alert worker; returns once the broker holds it (see the module's docstring)."""
    message = alert_message(candidate, tenant=tenant)
    # Imported here: the Celery app reads the settings, which building a message does not need.
    from cortex_tasks import app as celery_app

    priority = PRIORITY_CLASSES["high"] if candidate.severity == "high" else PRIORITY_CLASSES["normal"]
    try:
        celery_app.send_task(ALERTS_PROCESS_ALERT, kwargs=message.to_kwargs(), queue=ALERTS, priority=priority,
                             ignore_result=True, retry=True, retry_policy=PUBLISH_RETRY_POLICY)
    except Exception as exc:  # kombu raises the transport's own errors: any of them means "not taken"
        raise AlertNotAccepted(f"the alert could not be queued: {exc}") from exc
