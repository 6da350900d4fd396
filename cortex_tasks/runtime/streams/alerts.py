"""A stream's alert rules: each newly scored anomalous verdict that matches a rule becomes an alert candidate
handed to the alerting intake (core/alerting/intake.py), which queues it for the alert worker (grouping,
cooldown, deduplication, delivery).

An alert is grouped by the event's key, and deduplicated per rule, key, detector and window: one alert per
key and window however many of its events the detector flags there, and a redelivered event (its stream
worker killed after the hand-off, before the acknowledgement) is the same alert again. The details carry
the verdict and only the event fields the rule names, never the whole event.

If the intake cannot take an alert (the broker is away) the exception reaches the consumer, which then does
not acknowledge the batch: it is scored again later (its verdicts are already stored and stay single) and
its alerts are raised again.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from cortex_tasks.core.alerting.intake import AlertCandidate, AlertPolicy, raise_alert
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.streams.declarations import AlertRuleSpec

if TYPE_CHECKING:
    from cortex_tasks.runtime.streams.service import ScoredEvent, StreamRuntime


def policy_of(rule: AlertRuleSpec) -> AlertPolicy | None:
    """The rule's aggregation; None (the alerting settings' defaults) when it sets none of it."""
    given = (rule.grouping_window, rule.max_per_group, rule.cooldown, rule.dedup_window)
    if all(value is None for value in given):
        return None
    defaults = get_settings().alerts
    return AlertPolicy(
        grouping_window_s=rule.grouping_window if rule.grouping_window is not None else defaults.grouping_window_seconds,
        max_per_group=rule.max_per_group if rule.max_per_group is not None else defaults.max_per_group,
        cooldown_s=rule.cooldown if rule.cooldown is not None else defaults.cooldown_seconds,
        dedup_window_s=rule.dedup_window if rule.dedup_window is not None else defaults.dedup_window_seconds)


def candidates(runtime: StreamRuntime, scored: list[ScoredEvent]) -> list[AlertCandidate]:
    spec = runtime.spec
    found = []
    for item in scored:
        for rule in spec.alert_rules:
            for verdict in item.verdicts:
                if not verdict.anomalous or (rule.detector != "any" and verdict.detector != rule.detector):
                    continue
                if verdict.score is None or abs(verdict.score) < rule.min_score:
                    continue
                window = item.windows[-1] if item.windows else item.event.time
                occurred = datetime.fromtimestamp(item.event.time, timezone.utc)
                found.append(AlertCandidate(
                    source=f"stream:{runtime.name}", rule=rule.name, group_key=item.event.key,
                    severity=rule.severity,
                    summary=(f"{runtime.name}: {spec.value_field}={item.event.value:g} for key {item.event.key} "
                             f"flagged by {verdict.detector} (score {verdict.score:g})"),
                    details={"stream": runtime.name, "event_id": item.entry_id, "key": item.event.key,
                             "detector": verdict.detector, "score": verdict.score, "expected": verdict.expected,
                             "value": item.event.value, "event_time": occurred.isoformat(),
                             "fields": {name: item.event.fields[name] for name in rule.fields
                                        if name in item.event.fields}},
                    occurred_at=occurred,
                    dedup_key=f"{runtime.name}|{rule.name}|{item.event.key}|{verdict.detector}|{window:.0f}",
                    channels=tuple(rule.channels), policy=policy_of(rule)))
                break  # one alert per rule and event, from the first matching detector
    return found


def raise_stream_alerts(runtime: StreamRuntime, scored: list[ScoredEvent]) -> None:
    for candidate in candidates(runtime, scored):
        raise_alert(candidate, tenant=runtime.tenant)
