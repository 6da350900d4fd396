"""The shipped retention of alerts, reports, windows and verdicts is what docs/alerts.md's table says, and
the Beat entry that applies it is on the schedule."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cortex_tasks.core.settings import AlertsConfig, StreamsConfig, parse_duration

DOC = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"
ROW = re.compile(r"^\| `(CORTEX_[A-Z_]+_RETENTION)` \| (\w+) \|", re.MULTILINE)
VARIABLES = {
    "CORTEX_ALERT_RETENTION": (AlertsConfig, "alert_retention_days"),
    "CORTEX_REPORT_RETENTION": (AlertsConfig, "report_retention_days"),
    "CORTEX_STREAM_WINDOW_RETENTION": (StreamsConfig, "window_retention_days"),
    "CORTEX_STREAM_VERDICT_RETENTION": (StreamsConfig, "verdict_retention_days"),
}


@pytest.fixture()
def no_environment(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_shipped_defaults_are_the_documented_ones(no_environment):
    documented = dict(ROW.findall(DOC.read_text()))
    assert set(documented) == set(VARIABLES)
    for name, (group, field) in VARIABLES.items():
        assert getattr(group(), field) == parse_duration(documented[name]) / 86400, name
    assert documented["CORTEX_STREAM_VERDICT_RETENTION"] == "30d" and documented["CORTEX_ALERT_RETENTION"] == "90d"


def test_retention_reads_durations_and_refuses_zero(monkeypatch):
    monkeypatch.setenv("CORTEX_ALERT_RETENTION", "12h")
    monkeypatch.setenv("CORTEX_STREAM_VERDICT_RETENTION", "7d")
    assert AlertsConfig().alert_retention_days == 0.5
    assert StreamsConfig().verdict_retention_days == 7
    monkeypatch.setenv("CORTEX_REPORT_RETENTION", "0")
    with pytest.raises(ValueError, match="positive"):
        AlertsConfig()


def test_beat_runs_the_retention_daily_on_the_maintenance_queue():
    from beat_schedule import BEAT_SCHEDULE

    entry = BEAT_SCHEDULE["expire-stream-history-daily"]
    assert entry["task"] == "cortex.maintenance.expire_stream_history"
    assert entry["options"] == {"queue": "maintenance"}
