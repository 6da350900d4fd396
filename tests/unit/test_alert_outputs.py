"""What alerting produces without any service: the Slack-compatible payload and the e-mail of a notice,
webhook URL checks, Cortex's own rules judged from figures, and a stream report (figures, trend, ARIMA
forecast, HTML with embedded charts) built from typed window and verdict records."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cortex_tasks.core.alerting.storage import check_webhook_url, masked_url
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import AlertsConfig
from cortex_tasks.core.streams.history import VerdictRecord, WindowAggregate
from cortex_tasks.runtime.alerting import cortex_rules
from cortex_tasks.runtime.alerting.channels import email_message, slack_payload
from cortex_tasks.runtime.alerting.reports import ReportInput, build_report, period_ending, render_html

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def notice(kind: str = "first", alerts: int = 1, folded: int = 0, held_back: int = 0) -> dict:
    return {"kind": kind, "group_id": "g-1", "tenant": "acme", "source": "stream:payments", "rule": "zscore",
            "group_key": "user-7", "severity": "high", "opened_at": T0.isoformat(), "closes_at": T0.isoformat(),
            "alerts": [{"id": f"a{n}", "severity": "high", "summary": f"amount {n} is odd", "occurrences": 1 + n,
                        "occurred_at": T0.isoformat()} for n in range(alerts)],
            "folded": folded, "held_back": held_back}


def test_slack_payload_has_text_blocks_and_attachments():
    payload = slack_payload(notice())
    assert payload["text"] == "[HIGH] stream:payments · zscore · user-7: amount 0 is odd"
    assert [block["type"] for block in payload["blocks"]] == ["header", "section", "context"]
    assert payload["attachments"][0]["color"] == "#d32f2f"
    assert {field["title"] for field in payload["attachments"][0]["fields"]} == {"Source", "Rule", "Key", "Alerts"}


def test_a_digest_counts_listed_folded_and_held_back_alerts():
    payload = slack_payload(notice("digest", alerts=3, folded=2, held_back=4))
    assert payload["text"].endswith("5 alerts in the group's window")
    assert payload["blocks"][1]["text"]["text"].count("•") == 3 and "(×3)" in payload["blocks"][1]["text"]["text"]
    notes = " ".join(element["text"] for element in payload["blocks"][2]["elements"])
    assert "2 more past the group's limit" in notes and "4 held back by the cooldown" in notes


def test_email_lists_the_alerts():
    message = email_message(notice("digest", alerts=2), "cortex@example.org", ("a@example.org", "b@example.org"))
    assert message["To"] == "a@example.org, b@example.org" and message["Subject"].startswith("[HIGH]")
    assert "amount 1 is odd (x2)" in message.get_content()


@pytest.mark.parametrize("url", ["ftp://example.org/x", "https://user:pw@example.org/x", "https:///x",
                                 "http://127.0.0.1/x", "http://localhost:8080/x", "http://[::1]/x",
                                 "http://192.168.1.4/x", "http://169.254.169.254/latest", "x" * 3000])
def test_webhook_urls_refused_by_default(url, monkeypatch):
    monkeypatch.delenv("CORTEX_ALERT_PRIVATE_WEBHOOKS", raising=False)
    from cortex_tasks.core.settings import reset_settings_cache

    reset_settings_cache()
    with pytest.raises(CortexError) as refused:
        check_webhook_url(url)
    assert refused.value.code == "invalid_channel"


def test_public_webhook_url_is_accepted_and_shown_shortened():
    url = "https://hooks.slack.com/services/T000/B000/abcdef"
    assert check_webhook_url(url) == url
    assert masked_url(url) == "https://hooks.slack.com/…cdef"


def test_cortex_rules_judge_the_documents_thresholds():
    config = AlertsConfig()
    slow = cortex_rules.JobFigures(finished=40, failed=0, p95_seconds=1.4)
    failing = cortex_rules.JobFigures(finished=40, failed=3, p95_seconds=0.2)  # 7.5%
    assert [b.rule for b in cortex_rules.judge_jobs(slow, failing, config)] == ["response_time", "error_rate"]
    fine = cortex_rules.JobFigures(finished=40, failed=2, p95_seconds=0.9)  # 5%: not above
    assert cortex_rules.judge_jobs(fine, fine, config) == []
    few = cortex_rules.JobFigures(finished=5, failed=5, p95_seconds=9.0)  # under CORTEX_ALERT_MIN_SAMPLES
    assert cortex_rules.judge_jobs(few, few, config) == []
    assert [b.severity for b in cortex_rules.judge_cache(hits=50, misses=50, config=config)] == ["medium"]
    assert cortex_rules.judge_cache(hits=70, misses=30, config=config) == []


def test_resource_rule_needs_the_whole_window_above_the_threshold():
    config = AlertsConfig()
    now = 10_000.0
    busy = [(now - 600 + 60 * i, {"cpu": 0.95, "memory": 0.5}) for i in range(11)]
    breaches = cortex_rules.judge_resources(busy, "host-1", now, config)
    assert [(b.rule, b.group_key) for b in breaches] == [("resource_usage", "host-1:cpu")]
    dip = busy[:5] + [(busy[5][0], {"cpu": 0.7, "memory": 0.5})] + busy[6:]
    assert cortex_rules.judge_resources(dip, "host-1", now, config) == []
    assert cortex_rules.judge_resources(busy[-3:], "host-1", now, config) == []  # 2 minutes of samples only


def history(windows: int = 48) -> ReportInput:
    records, verdicts = [], []
    for step in range(windows):
        start = T0 + timedelta(minutes=30 * step)
        for key in ("m1", "m2"):
            count = 10 + step // 4
            records.append(WindowAggregate("meters", key, start, start + timedelta(minutes=30), count, count * 2.0,
                                           2.0, 1.0, 3.0, 0))
    for n in range(3):
        verdicts.append(VerdictRecord("meters", f"1-{n}", "m1", "zscore", "anomaly", 5.0 + n, 30.0, 2.0,
                                      T0 + timedelta(hours=10, seconds=n)))
    return ReportInput("meters", T0, T0 + timedelta(days=1), records, verdicts)


def test_report_figures_trend_and_forecast():
    data = build_report(history(), forecast_points=6)
    assert data["volumes"]["windows"] == 48 and data["volumes"]["keys"] == 2
    assert data["volumes"]["series"][0] == {"window_start": T0.isoformat(), "events": 20, "mean": 2.0}
    assert data["anomalies"]["events"] == 3 and data["anomalies"]["strongest"][0]["score"] == 7.0
    assert data["trend"]["direction"] == "rising" and data["trend"]["slope_per_hour"] > 0
    forecast = data["forecast"]
    assert forecast["available"] and len(forecast["yhat"]) == 6 and forecast["method"] == "arima"
    assert forecast["window_starts"][0] == (T0 + timedelta(minutes=30 * 48)).isoformat()
    assert forecast["yhat"][0] > 30  # the rise goes on


def test_a_short_history_says_why_there_is_no_forecast():
    data = build_report(history(windows=4), forecast_points=6)
    assert data["forecast"]["available"] is False and "at least" in data["forecast"]["reason"]
    empty = build_report(ReportInput("meters", T0, T0 + timedelta(days=1), [], []), forecast_points=6)
    assert empty["volumes"]["windows"] == 0 and empty["trend"]["direction"] == "unknown"
    assert "<html" in render_html(empty, [])


def test_report_html_embeds_its_charts():
    given = history()
    page = render_html(build_report(given, forecast_points=6), given.anomalies)
    assert page.count('src="data:image/png;base64,') == 2
    assert "Stream report: meters" in page and "rising" in page


def test_periods_are_aligned_whole_periods():
    start, end = period_ending(datetime(2026, 3, 2, 13, 5, tzinfo=UTC), 86400)
    assert (start, end) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
