"""Alert aggregation as configured (core/alerting/policy.py), on an injected clock: deduplication,
grouping, max per group, cooldown; the shipped defaults are the architecture document's; the intake
refuses malformed candidates before anything is sent."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cortex_tasks.core.alerting.intake import AlertCandidate, AlertPolicy, alert_message
from cortex_tasks.core.alerting.policy import (
    OpenGroup,
    Outcome,
    RuleState,
    decide,
    dedup_since,
    default_policy,
    digest_due,
)
from cortex_tasks.core.settings import AlertsConfig

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
POLICY = AlertPolicy(grouping_window_s=300, max_per_group=3, cooldown_s=900, dedup_window_s=3600)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Rule:
    """A single rule's state kept as the storage layer keeps it, driven by `decide` alone."""

    def __init__(self, policy: AlertPolicy) -> None:
        self.policy = policy
        self.groups: list[dict] = []
        self.seen: dict[str, datetime] = {}
        self.notices: list[tuple[str, datetime]] = []

    def last_notified(self, other_than: int | None = None) -> datetime | None:
        times = [when for index, group in enumerate(self.groups) if index != other_than
                 for when in (group["notified"], group["digest"]) if when]
        return max(times) if times else None

    def raise_(self, dedup_key: str, now: datetime) -> Outcome:
        since = dedup_since(self.policy, now)
        duplicate = dedup_key if since and dedup_key in self.seen and self.seen[dedup_key] >= since else None
        latest = self.groups[-1] if self.groups else None
        state = RuleState(duplicate, OpenGroup(str(len(self.groups) - 1), latest["opened"], latest["count"])
                          if latest else None, self.last_notified())
        decision = decide(state, self.policy, now)
        if decision.outcome is Outcome.OPENED:
            self.groups.append({"opened": now, "count": 1, "folded": 0, "pending": 0 if decision.notify_now else 1,
                                "notified": now if decision.notify_now else None, "digest": None})
            self.seen[dedup_key] = now
            if decision.notify_now:
                self.notices.append(("first", now))
        elif decision.outcome is Outcome.JOINED:
            self.groups[-1]["count"] += 1
            self.groups[-1]["pending"] += 1
            self.seen[dedup_key] = now
        elif decision.outcome is Outcome.FOLDED:
            self.groups[-1]["folded"] += 1
        return decision.outcome

    def close(self, index: int, now: datetime) -> bool:
        group = self.groups[index]
        due = digest_due(pending=group["pending"] + group["folded"], earlier_notified_at=self.last_notified(index),
                         policy=self.policy, now=now)
        if due:
            group["digest"] = now
            self.notices.append(("digest", now))
        return due


def test_shipped_defaults_are_the_architecture_documents(monkeypatch):
    for name in ("CORTEX_ALERT_GROUPING_WINDOW", "CORTEX_ALERT_MAX_PER_GROUP", "CORTEX_ALERT_COOLDOWN",
                 "CORTEX_ALERT_DEDUP_WINDOW", "CORTEX_ALERT_DEDUP"):
        monkeypatch.delenv(name, raising=False)
    config = AlertsConfig()
    # alert_aggregation: grouping_window 5m, max_alerts_per_group 10, cooldown_period 15m, deduplication 1h
    assert (config.grouping_window_seconds, config.max_per_group, config.cooldown_seconds,
            config.dedup_enabled, config.dedup_window_seconds) == (300, 10, 900, True, 3600)
    # alerts.rules: response time 1s/5m, error rate 5%/5m, cache miss 40%/15m, resource use 80%/10m
    assert (config.response_time_threshold_seconds, config.response_time_window_seconds) == (1, 300)
    assert (config.error_rate_threshold, config.error_rate_window_seconds) == (0.05, 300)
    assert (config.cache_miss_threshold, config.cache_miss_window_seconds) == (0.40, 900)
    assert (config.resource_threshold, config.resource_window_seconds) == (0.80, 600)
    assert config.private_webhooks is False


def test_settings_read_durations_and_turn_dedup_off(monkeypatch):
    monkeypatch.setenv("CORTEX_ALERT_GROUPING_WINDOW", "2m")
    monkeypatch.setenv("CORTEX_ALERT_COOLDOWN", "1h")
    monkeypatch.setenv("CORTEX_ALERT_DEDUP", "false")
    config = AlertsConfig()
    assert (config.grouping_window_seconds, config.cooldown_seconds, config.dedup_enabled) == (120, 3600, False)
    monkeypatch.setenv("CORTEX_ALERT_MAX_PER_GROUP", "0")
    with pytest.raises(ValueError, match="at least 1"):
        AlertsConfig()


def test_default_policy_follows_the_settings(monkeypatch):
    from cortex_tasks.core.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setenv("CORTEX_ALERT_DEDUP", "off")
    try:
        assert default_policy().dedup_window_s == 0  # dedup off: every alert stands alone
    finally:
        get_settings.cache_clear()


def test_a_repeat_within_the_dedup_window_is_folded_and_after_it_is_new():
    rule = Rule(AlertPolicy(grouping_window_s=60, max_per_group=10, cooldown_s=0, dedup_window_s=3600))
    assert rule.raise_("spike:k1", at(0)) is Outcome.OPENED
    assert rule.raise_("spike:k1", at(30)) is Outcome.DUPLICATE
    assert rule.raise_("spike:k1", at(3599)) is Outcome.DUPLICATE
    assert rule.raise_("spike:k1", at(3601)) is Outcome.OPENED  # first seen 3601 s ago: a new alert


def test_alerts_within_the_grouping_window_join_one_group_up_to_its_limit():
    rule = Rule(POLICY)
    outcomes = [rule.raise_(f"event-{n}", at(n * 10)) for n in range(6)]
    assert outcomes == [Outcome.OPENED, Outcome.JOINED, Outcome.JOINED, Outcome.FOLDED, Outcome.FOLDED, Outcome.FOLDED]
    assert (rule.groups[0]["count"], rule.groups[0]["folded"]) == (3, 3)
    assert rule.raise_("event-late", at(300)) is Outcome.OPENED  # the window is [opened, opened + 300 s)


def test_first_alert_is_sent_at_once_the_rest_in_one_digest_then_the_cooldown_holds():
    rule = Rule(POLICY)
    for n in range(4):
        rule.raise_(f"a{n}", at(n))
    assert rule.notices == [("first", at(0))]
    assert rule.close(0, at(300)) is True  # 2 joined + 1 folded: one digest, despite its own first notice
    # Within 15 min of the digest a new group of the same key is stored but sends nothing ...
    assert rule.raise_("b0", at(400)) is Outcome.OPENED
    assert rule.close(1, at(700)) is False
    assert rule.notices == [("first", at(0)), ("digest", at(300))]
    # ... and once the cooldown has passed, the next alert is sent at once again.
    assert rule.raise_("d0", at(1201)) is Outcome.OPENED
    assert rule.notices[-1] == ("first", at(1201))


def test_a_held_back_group_closing_after_the_cooldown_sends_its_digest():
    rule = Rule(POLICY)
    rule.raise_("a", at(0))
    rule.close(0, at(300))  # nothing joined: no digest, cooldown runs from the first notice
    assert rule.notices == [("first", at(0))]
    rule.raise_("b", at(800))  # in cooldown (until 900): held back
    assert rule.close(1, at(1100)) is True  # closes after the cooldown: its alert is sent now
    assert rule.notices[-1] == ("digest", at(1100))


def test_a_lone_alert_sends_no_digest():
    assert digest_due(pending=0, earlier_notified_at=None, policy=POLICY, now=at(300)) is False


def test_zero_cooldown_and_zero_dedup_window_turn_them_off():
    rule = Rule(AlertPolicy(grouping_window_s=1, max_per_group=10, cooldown_s=0, dedup_window_s=0))
    assert rule.raise_("same", at(0)) is Outcome.OPENED
    assert rule.raise_("same", at(2)) is Outcome.OPENED
    assert rule.notices == [("first", at(0)), ("first", at(2))]


def candidate(**changes) -> AlertCandidate:
    fields = {"source": "stream:payments", "rule": "zscore", "group_key": "user-7", "severity": "high",
              "summary": "amount 9000 is 12 sd above the window", "details": {"value": 9000.0}, "occurred_at": T0,
              "dedup_key": "zscore:user-7:e1"}
    fields.update(changes)
    return AlertCandidate(**fields)


def test_intake_message_carries_the_candidate_and_its_policy():
    message = alert_message(candidate(channels=("ops",), policy=POLICY), tenant="acme", raised_at=at(1))
    assert message.to_kwargs() == {
        "version": 1, "tenant": "acme", "source": "stream:payments", "rule": "zscore", "group_key": "user-7",
        "severity": "high", "summary": "amount 9000 is 12 sd above the window", "details": {"value": 9000.0},
        "occurred_at": T0.isoformat(), "raised_at": at(1).isoformat(), "dedup_key": "zscore:user-7:e1",
        "channels": ["ops"], "policy": {"grouping_window_s": 300.0, "max_per_group": 3, "cooldown_s": 900.0,
                                        "dedup_window_s": 3600.0}}


@pytest.mark.parametrize("changes, problem", [
    ({"severity": "critical"}, "severity must be one of"),
    ({"occurred_at": datetime(2026, 1, 5)}, "time zone"),
    ({"details": {"when": T0}}, "JSON-safe"),
    ({"details": {"x": float("nan")}}, "JSON-safe"),
    ({"details": {"blob": "x" * 20000}}, "at most"),
])
def test_intake_refuses_a_malformed_candidate(changes, problem):
    with pytest.raises(ValueError, match=problem):
        alert_message(candidate(**changes), tenant="acme")
