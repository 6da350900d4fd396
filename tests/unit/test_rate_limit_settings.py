"""Rate-limit tiers and audit alerts read from the environment (settings.py)."""
from __future__ import annotations

import pytest

from cortex_tasks.core.settings import (
    DEFAULT_AUDIT_ALERTS,
    AlertRule,
    RateTier,
    audit_alerts_from,
    parse_duration,
    rate_tiers_from,
)


def test_defaults_are_the_architecture_documents():
    tiers = rate_tiers_from(None)
    assert tiers["default"] == RateTier(60, 10, 30, 5)
    assert tiers["premium"] == RateTier(300, 50, 150, 25)
    assert tiers["unlimited"] is None
    assert DEFAULT_AUDIT_ALERTS == (AlertRule("security_breach", 3, 300.0), AlertRule("unusual_access", 10, 3600.0))


def test_tiers_are_overridden_and_extended_from_json():
    tiers = rate_tiers_from('{"gold": {"requests_per_minute": 600, "burst_size": 100, "per_model": null},'
                            ' "default": {"requests_per_minute": 6, "burst_size": 3}, "premium": null}')
    assert tiers["gold"] == RateTier(600, 100, None, None)
    assert tiers["default"] == RateTier(6, 3, 3, 1)  # per model: half, at least a burst of 1
    assert tiers["premium"] is None and "unlimited" in tiers


@pytest.mark.parametrize("raw", [
    'not json',
    '[1]',
    '{"x": {"burst_size": 3}}',
    '{"x": {"requests_per_minute": 0, "burst_size": 3}}',
    '{"x": {"requests_per_minute": 5, "burst_size": 3, "per_model": {"burst_size": 1}}}',
])
def test_bad_tier_configuration_stops_start_up(raw):
    with pytest.raises((ValueError, TypeError)):
        rate_tiers_from(raw)


def test_durations_and_alert_rules():
    assert [parse_duration(x) for x in ("30", "30s", "5m", "1h", "90d", 2)] == [30, 30, 300, 3600, 7_776_000, 2]
    for bad in ("soon", "-5m", "0s", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert audit_alerts_from('[{"type": "burst", "threshold": 5, "window": "1m"}]') == (AlertRule("burst", 5, 60.0),)
    with pytest.raises(ValueError):
        audit_alerts_from('[{"type": "burst", "threshold": 0, "window": "1m"}]')
