"""Alerts end to end with real parts: raise_alert -> Redis -> a real alert worker (Celery, threads pool)
-> PostgreSQL -> a local HTTP server as the Slack-compatible webhook and a local SMTP server (aiosmtpd).
Grouping, max per group, deduplication and cooldown with short windows (the shipped defaults are checked
in tests/unit/test_alert_policy.py), retries after 500s, a dead channel that blocks no other one, the
alerts API (filters, acknowledge, roles, audit), Cortex's own rules from real job rows, and a stream report
generated through the API and stored in the S3 test server."""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select, text

from cortex_tasks.core.alerting.intake import AlertCandidate, AlertPolicy, raise_alert
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.tenancy import tenant_scope
from cortex_tasks.stack.embedded import free_port
from tests.integration.conftest import Api
from tests.support.processes import WorkerProcess
from tests.support.s3_server import S3Endpoint, running_s3_server
from tests.support.tenants import new_tenant, tenant_keys

FAST_RETRIES = {"CORTEX_ALERT_DELIVERY_RETRIES": "3", "CORTEX_ALERT_DELIVERY_BACKOFF": "0.2"}


class Webhooks:
    """A local HTTP server standing in for Slack: records every POST per path; /flaky answers 500 to its
    first two attempts, /broken always 500."""

    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hooks.lock:
                    seen = hooks.received.setdefault(self.path, [])
                    seen.append(body)
                    attempts = len(seen)
                failing = self.path == "/broken" or (self.path.startswith("/flaky") and attempts <= 2)
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"boom" if failing else b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def posts(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received.get(path, []))


@pytest.fixture(scope="module")
def webhooks() -> Iterator[Webhooks]:
    hooks = Webhooks()
    yield hooks
    hooks.server.shutdown()


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller

    messages: list[Any] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            messages.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, messages
    controller.stop()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with running_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def alert_env(webhooks, smtp, s3) -> Iterator[dict[str, str]]:
    """The settings of both the gateway (this process) and the alert worker."""
    from cortex_tasks.core.settings import reset_settings_cache
    from cortex_tasks.core.storage import object_store

    env = {**FAST_RETRIES,
           "CORTEX_ALERT_PRIVATE_WEBHOOKS": "1",  # the test's webhook server is on 127.0.0.1
           "CORTEX_ALERT_OPERATOR_WEBHOOKS": f"{webhooks.base}/operators",
           "CORTEX_SMTP_HOST": "127.0.0.1", "CORTEX_SMTP_PORT": str(smtp[0]), "CORTEX_SMTP_SECURITY": "none",
           "CORTEX_SMTP_FROM": "cortex@example.org",
           "MINIO_ENDPOINT": s3.endpoint, "MINIO_ACCESS_KEY": s3.access_key, "MINIO_SECRET_KEY": s3.secret_key,
           "MINIO_BUCKET": s3.new_bucket_name()}
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    reset_settings_cache()
    object_store._stores.clear()  # this process's store was made before S3 was configured
    yield env
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    reset_settings_cache()
    object_store._stores.clear()


@pytest.fixture(scope="module")
def alert_worker(alert_env) -> Iterator[WorkerProcess]:
    # Four threads: alerts of one rule processed concurrently must still agree (the advisory lock).
    worker = WorkerProcess("alerts", pool="threads", concurrency=4, name="alerts", env=alert_env)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture()
def tenant(app, alert_worker) -> tuple[str, dict[str, str]]:
    """A fresh tenant per test: its alerts, groups and channels start empty."""
    tenant_id = new_tenant("alerts")
    return tenant_id, tenant_keys(tenant_id)


def api_of(app, keys: dict[str, str], role: str = "model_admin") -> Api:
    return Api(app.test_client(), keys[role])


def wait_for(condition, timeout: float = 30.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not true within {timeout}s: {condition.__doc__ or condition}")


def add_webhook(api: Api, name: str, url: str, **extra: Any) -> dict[str, Any]:
    response = api.post("/api/v1/alert-channels", {"name": name, "kind": "webhook", "url": url, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def candidate(stream: str, n: int, **changes: Any) -> AlertCandidate:
    fields: dict[str, Any] = {
        "source": f"stream:{stream}", "rule": "zscore", "group_key": "user-7", "severity": "high",
        "summary": f"value {100 + n} is far above the window", "details": {"n": n},
        "occurred_at": datetime.now(UTC), "dedup_key": f"zscore:user-7:{n}"}
    fields.update(changes)
    return AlertCandidate(**fields)


def alerts_of(api: Api, **filters: str) -> list[dict[str, Any]]:
    query = "&".join(f"{name}={value}" for name, value in filters.items())
    response = api.get(f"/api/v1/alerts?size=200&{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["alerts"]


def groups_of(tenant_id: str) -> list[dict[str, Any]]:
    with tenant_scope(tenant_id), session_scope() as session:
        return [dict(row._mapping) for row in session.execute(text(
            "SELECT id, alert_count, folded_count, notified_at, digest_at, closed FROM alert_groups "
            "WHERE tenant = :tenant ORDER BY opened_at"), {"tenant": tenant_id})]


def test_alerts_are_grouped_capped_deduplicated_and_sent_as_slack_payloads(app, tenant, webhooks):
    tenant_id, keys = tenant
    admin = api_of(app, keys)
    path = f"/ok-{tenant_id}"
    add_webhook(admin, "ops", webhooks.base + path)
    policy = AlertPolicy(grouping_window_s=3, max_per_group=4, cooldown_s=0, dedup_window_s=3600)
    for n in range(6):  # concurrently processed by four threads, in any order
        raise_alert(candidate("payments", n, policy=policy), tenant=tenant_id)

    first = wait_for(lambda: webhooks.posts(path))
    groups = wait_for(lambda: [g for g in groups_of(tenant_id) if g["alert_count"] + g["folded_count"] == 6])
    assert len(groups_of(tenant_id)) == 1  # one group, whatever order the threads took them in
    assert (groups[0]["alert_count"], groups[0]["folded_count"]) == (4, 2)
    payload = first[0]
    assert set(payload) == {"text", "blocks", "attachments"}
    assert payload["text"].startswith("[HIGH] stream:payments · zscore · user-7: value 1")
    assert payload["blocks"][0]["type"] == "header" and payload["attachments"][0]["color"] == "#d32f2f"

    # The window closes: one digest of the three kept after the first, and the two past the cap counted.
    digest = wait_for(lambda: webhooks.posts(path)[1:], timeout=30)[0]
    assert "6 alerts in the group's window" not in digest["text"]
    assert "5 alerts in the group's window" in digest["text"]
    assert digest["blocks"][1]["text"]["text"].count("•") == 3
    assert "2 more past the group's limit" in json.dumps(digest["blocks"][2])
    time.sleep(1)
    assert len(webhooks.posts(path)) == 2

    stored = alerts_of(admin, stream="payments")
    assert len(stored) == 4 and all(alert["notified"] for alert in stored)
    repeat = stored[0]
    raise_alert(candidate("payments", 0, policy=policy, dedup_key=repeat["dedup_key"]), tenant=tenant_id)
    wait_for(lambda: admin.get(f"/api/v1/alerts/{repeat['id']}").get_json()["occurrences"] == 2)
    assert len(alerts_of(admin, stream="payments")) == 4 and len(webhooks.posts(path)) == 2

    detail = admin.get(f"/api/v1/alerts/{repeat['id']}").get_json()
    assert detail["group"]["alerts"] == 4 and detail["group"]["folded"] == 2
    assert sorted(d["kind"] for d in detail["deliveries"]) == ["digest", "first"]
    assert all(d["status"] == "delivered" and d["channel"] == "ops" for d in detail["deliveries"])


def test_cooldown_holds_back_the_next_groups_and_counts_them_in_the_next_notice(app, tenant, webhooks):
    tenant_id, keys = tenant
    path = f"/cool-{tenant_id}"
    add_webhook(api_of(app, keys), "ops", webhooks.base + path)
    policy = AlertPolicy(grouping_window_s=1, max_per_group=10, cooldown_s=8, dedup_window_s=0)
    started = time.monotonic()
    raise_alert(candidate("sensors", 1, policy=policy), tenant=tenant_id)
    wait_for(lambda: webhooks.posts(path))
    time.sleep(1.5)
    raise_alert(candidate("sensors", 2, policy=policy), tenant=tenant_id)  # its own group, in the cooldown
    wait_for(lambda: len(groups_of(tenant_id)) == 2 and groups_of(tenant_id)[1]["closed"], timeout=30)
    assert len(webhooks.posts(path)) == 1  # held back: neither a first notice nor a digest
    time.sleep(max(0.0, 8.5 - (time.monotonic() - started)))
    raise_alert(candidate("sensors", 3, policy=policy), tenant=tenant_id)
    notice = wait_for(lambda: webhooks.posts(path)[1:])[0]
    assert "value 103" in notice["text"]
    assert "1 held back by the cooldown" in json.dumps(notice["blocks"])


def test_retries_after_500s_and_a_dead_channel_blocks_no_other(app, tenant, webhooks):
    tenant_id, keys = tenant
    admin = api_of(app, keys)
    add_webhook(admin, "flaky", f"{webhooks.base}/flaky-{tenant_id}")
    add_webhook(admin, "broken", f"{webhooks.base}/broken")
    add_webhook(admin, "dead", f"http://127.0.0.1:{free_port()}/nobody-listens")
    add_webhook(admin, "ok", f"{webhooks.base}/fine-{tenant_id}")
    add_webhook(admin, "unused", f"{webhooks.base}/unused-{tenant_id}", default=False)
    raise_alert(candidate("orders", 1), tenant=tenant_id)  # the settings' policy, every default channel

    assert wait_for(lambda: webhooks.posts(f"/fine-{tenant_id}"), timeout=20)
    alert_id = alerts_of(admin, stream="orders")[0]["id"]

    def settled() -> list[dict[str, Any]] | None:
        deliveries = admin.get(f"/api/v1/alerts/{alert_id}").get_json()["deliveries"]
        return deliveries if all(d["status"] != "pending" for d in deliveries) else None

    by_channel = {d["channel"]: d for d in wait_for(settled, timeout=60)}
    assert set(by_channel) == {"flaky", "broken", "dead", "ok"}  # not the non-default channel
    assert by_channel["ok"]["status"] == "delivered" and by_channel["ok"]["attempts"] == 1
    assert by_channel["flaky"]["status"] == "delivered" and by_channel["flaky"]["attempts"] == 3
    assert len(webhooks.posts(f"/flaky-{tenant_id}")) == 3
    for name in ("broken", "dead"):  # 1 attempt + CORTEX_ALERT_DELIVERY_RETRIES=3, then given up
        assert by_channel[name]["status"] == "failed" and by_channel[name]["attempts"] == 4, by_channel[name]
    assert "500" in by_channel["broken"]["last_error"] and "unreachable" in by_channel["dead"]["last_error"]
    assert webhooks.posts(f"/unused-{tenant_id}") == []


def test_an_alert_naming_channels_goes_to_those_and_unknown_names_are_recorded(app, tenant, webhooks, smtp):
    tenant_id, keys = tenant
    admin = api_of(app, keys)
    add_webhook(admin, "default-hook", f"{webhooks.base}/default-{tenant_id}")
    response = admin.post("/api/v1/alert-channels", {"name": "oncall-mail", "kind": "email", "default": False,
                                                      "recipients": [f"oncall-{tenant_id}@example.org"]})
    assert response.status_code == 201, response.get_json()
    raise_alert(candidate("billing", 1, severity="medium", channels=("oncall-mail", "no-such-channel")),
                tenant=tenant_id)
    _, messages = smtp
    mail = wait_for(lambda: [m for m in messages if f"oncall-{tenant_id}@example.org" in m.rcpt_tos])[0]
    body = mail.content.decode()
    assert "Subject: [MEDIUM] stream:billing" in body and "value 101 is far above the window" in body
    assert mail.mail_from == "cortex@example.org"
    alert_id = alerts_of(admin, stream="billing")[0]["id"]
    deliveries = {d["channel"]: d for d in admin.get(f"/api/v1/alerts/{alert_id}").get_json()["deliveries"]}
    assert deliveries["no-such-channel"]["status"] == "failed"
    assert deliveries["no-such-channel"]["last_error"] == "no alert channel of this name"
    assert webhooks.posts(f"/default-{tenant_id}") == []  # named channels replace the defaults


def test_alerts_api_filters_acknowledges_with_roles_and_audit(app, tenant):
    tenant_id, keys = tenant
    for n, (stream, rule) in enumerate([("a", "zscore"), ("a", "baseline"), ("b", "zscore")]):
        raise_alert(candidate(stream, n, rule=rule, group_key=f"k{n}"), tenant=tenant_id)
    reader, user = api_of(app, keys, "reader"), api_of(app, keys, "inference_user")
    wait_for(lambda: len(alerts_of(reader)) == 3)
    assert {a["rule"] for a in alerts_of(reader, stream="a")} == {"zscore", "baseline"}
    assert [a["stream"] for a in alerts_of(reader, source="stream:b")] == ["b"]
    assert len(alerts_of(reader, rule="zscore")) == 2
    page = reader.get("/api/v1/alerts?size=2").get_json()
    assert len(page["alerts"]) == 2 and page["next_page"] == 2
    assert len(reader.get("/api/v1/alerts?size=2&page=2").get_json()["alerts"]) == 1

    target = alerts_of(reader, stream="b")[0]["id"]
    assert reader.post(f"/api/v1/alerts/{target}/acknowledge").status_code == 403
    acknowledged = user.post(f"/api/v1/alerts/{target}/acknowledge")
    assert acknowledged.status_code == 200, acknowledged.get_json()
    assert acknowledged.get_json()["state"] == "acknowledged"
    assert acknowledged.get_json()["acknowledged_by"]
    assert [a["id"] for a in alerts_of(reader, state="acknowledged")] == [target]
    assert len(alerts_of(reader, state="open")) == 2
    assert user.post(f"/api/v1/alerts/{target}/resolve").get_json()["state"] == "resolved"
    refused = user.post(f"/api/v1/alerts/{target}/acknowledge")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "alert_resolved"

    for path, code in ((f"/api/v1/alerts/{uuid.uuid4()}", 404), ("/api/v1/alerts/not-an-id", 404),
                       ("/api/v1/alerts?state=closed", 422), ("/api/v1/alerts?size=0", 422),
                       ("/api/v1/alerts?source=cortex&stream=a", 422)):
        response = reader.get(path)
        assert response.status_code == code, (path, response.get_json())
        assert set(response.get_json()["error"]) == {"code", "message", "details"}

    app.extensions["cortex_audit"].flush()
    from cortex_tasks.core.audit.service import query_events

    events, _ = query_events(actor=None, tenant=tenant_id, size=50)
    assert {"alert.acknowledge", "alert.resolve"} <= {event["action"] for event in events}


def test_channels_are_validated_and_managed_by_admins(app, tenant, monkeypatch):
    _tenant_id, keys = tenant
    admin = api_of(app, keys)
    assert api_of(app, keys, "inference_user").post("/api/v1/alert-channels", {
        "name": "x", "kind": "webhook", "url": "https://hooks.example.org/x"}).status_code == 403
    for body, field in (({"name": "x", "kind": "webhook", "url": "ftp://example.org/x"}, "url"),
                        ({"name": "x", "kind": "webhook", "url": "https://user:pw@example.org/x"}, "url"),
                        ({"name": "x", "kind": "webhook"}, "url"),
                        ({"name": "x", "kind": "email", "recipients": ["not-an-address"]}, "recipients"),
                        ({"name": "bad name!", "kind": "email", "recipients": ["a@example.org"]}, "name"),
                        ({"name": "x", "kind": "sms", "recipients": ["a@example.org"]}, "kind"),
                        ({"name": "x", "kind": "webhook", "url": "https://example.org/a\u0000b"}, "url"),
                        ({"name": "x", "kind": "webhook", "url": "https://example.org/a b"}, "url"),
                        ({"name": "x", "kind": "email", "recipients": ["a\u0000@example.org"]}, "recipients")):
        response = admin.post("/api/v1/alert-channels", body)
        assert response.status_code == 422, (body, response.get_json())
        assert field in json.dumps(response.get_json()["error"]), response.get_json()
    created = add_webhook(admin, "hook", "https://hooks.slack.example.org/services/T000/B000/SECRETxyz")
    assert created["url"] == "https://hooks.slack.example.org/…Txyz"  # the path is the secret
    assert admin.post("/api/v1/alert-channels", {"name": "hook", "kind": "email",
                                                 "recipients": ["a@example.org"]}).status_code == 409
    assert [c["name"] for c in admin.get("/api/v1/alert-channels").get_json()["channels"]] == ["hook"]
    # The shipped default refuses Cortex's own network (the test's gateway allows it for its local server).
    monkeypatch.delenv("CORTEX_ALERT_PRIVATE_WEBHOOKS")
    from cortex_tasks.core.settings import reset_settings_cache

    reset_settings_cache()
    for url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/hook",
                "http://169.254.169.254/latest/meta-data"):
        response = admin.post("/api/v1/alert-channels", {"name": "internal", "kind": "webhook", "url": url})
        assert response.status_code == 422 and response.get_json()["error"]["code"] == "invalid_channel", url
    assert admin.delete("/api/v1/alert-channels/hook").status_code == 200
    assert admin.delete("/api/v1/alert-channels/hook").status_code == 404
    assert admin.delete("/api/v1/alert-channels/a%00b").status_code == 404
    assert admin.get("/api/v1/alert-channels").get_json()["channels"] == []


def test_cortex_rules_fire_from_real_job_figures_and_resolve_when_they_clear(app, alert_worker, webhooks, keys):
    from cortex_tasks import app as celery_app
    from cortex_tasks.core.contracts import task_names
    from cortex_tasks.core.contracts.job_messages import MaintenanceMessage

    marker = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    from cortex_tasks.core.storage.tables import Job

    with tenant_scope("default"), session_scope() as session:
        # 300 prediction jobs of the last minute: half failed (50% > 5%), the rest took 3 s (p95 > 1 s).
        # So many that the jobs other tests finished in the same minutes cannot hide them.
        for n in range(300):
            session.add(Job(id=str(uuid.uuid4()), owner=f"rules-{marker}", kind="predict", task="embed",
                            status="failed" if n % 2 else "succeeded", priority=4, progress_done=1,
                            progress_total=1, attempts=1, created_at=now - timedelta(seconds=4),
                            started_at=now - timedelta(seconds=4), finished_at=now - timedelta(seconds=1)))

    def evaluate() -> dict[str, Any]:
        result = celery_app.send_task(task_names.ALERTS_EVALUATE_CORTEX_RULES, queue="alerts",
                                      kwargs=MaintenanceMessage().to_kwargs())
        return result.get(timeout=60)

    outcome = evaluate()
    assert {"error_rate:predict", "response_time:predict"} <= set(outcome["raised"]), outcome
    reader = Api(app.test_client(), keys["reader"])  # Cortex's alerts are the operator tenant's (default)
    fired = wait_for(lambda: {a["rule"]: a for a in alerts_of(reader, source="cortex", state="open")
                              if a["rule"] in ("error_rate", "response_time")}
                     if len({a["rule"] for a in alerts_of(reader, source="cortex", state="open")}
                            & {"error_rate", "response_time"}) == 2 else None)
    assert fired["error_rate"]["severity"] == "high" and fired["error_rate"]["details"]["failed"] >= 150
    assert fired["response_time"]["details"]["p95_seconds"] >= 2.9
    sent = wait_for(lambda: [p for p in webhooks.posts("/operators") if "error rate" in p["text"]])
    assert sent[0]["text"].startswith("[HIGH] cortex · error_rate · predict")

    evaluate()  # still breached: the same alerts, one more occurrence each (deduplicated)
    wait_for(lambda: reader.get(f"/api/v1/alerts/{fired['error_rate']['id']}").get_json()["occurrences"] >= 2)
    assert len([a for a in alerts_of(reader, source="cortex", rule="error_rate") if a["state"] == "open"]) == 1

    with tenant_scope("default"), session_scope() as session:  # the bad minute is over
        session.execute(text("DELETE FROM jobs WHERE owner = :owner"), {"owner": f"rules-{marker}"})
    assert evaluate()["resolved"] >= 2
    for rule in ("error_rate", "response_time"):
        assert reader.get(f"/api/v1/alerts/{fired[rule]['id']}").get_json()["state"] == "resolved"


def test_a_report_is_generated_through_the_api_and_stored_in_s3(app, tenant, alert_env, s3):
    tenant_id, keys = tenant
    from cortex_tasks.core.storage.tables import StreamDeclaration, StreamVerdict, StreamWindow
    from cortex_tasks.core.streams.declarations import StreamSpec

    stream = "meters"
    start = datetime(2026, 3, 2, tzinfo=UTC)
    with tenant_scope(tenant_id), session_scope() as session:
        # A declaration as POST /streams stores it: the stream workers of the session read every one.
        spec = StreamSpec.model_validate({"name": stream, "fields": [{"name": "ts", "type": "timestamp"},
                                                                     {"name": "v", "type": "number"}],
                                          "timestamp_field": "ts", "value_field": "v"})
        session.add(StreamDeclaration(id=str(uuid.uuid4()), name=stream, owner="test", spec=spec.stored()))
        for step in range(48):  # two keys, a rising volume over 48 half-hour windows, one spike
            at = start + timedelta(minutes=30 * step)
            for key in ("m1", "m2"):
                count = 10 + step // 4 + (40 if (key == "m1" and step == 30) else 0)
                session.add(StreamWindow(stream=stream, key=key, window_start=at, window_end=at + timedelta(minutes=30),
                                         count=count, total=count * 2.0, mean=2.0, minimum=1.0, maximum=3.0,
                                         anomalies=5 if (key == "m1" and step == 30) else 0))
        for n in range(5):
            at = start + timedelta(minutes=30 * 30, seconds=n)
            session.add(StreamVerdict(stream=stream, event_id=f"1-{n}", key="m1", detector="zscore", outcome="anomaly",
                                      score=6.0 + n, value=30.0, expected=2.0, event_time=at, received_at=at,
                                      decided_at=at))
        session.add(StreamVerdict(stream=stream, event_id="1-99", key="m2", detector="zscore", outcome="normal",
                                  score=0.1, value=2.0, expected=2.0, event_time=start, received_at=start,
                                  decided_at=start))
    user, reader = api_of(app, keys, "inference_user"), api_of(app, keys, "reader")
    period = {"stream": stream, "from": start.isoformat(), "to": (start + timedelta(days=1)).isoformat()}
    assert reader.post("/api/v1/reports", period).status_code == 403
    for bad, code in (({**period, "stream": "nope"}, 404), ({**period, "to": period["from"]}, 422),
                      ({**period, "from": "yesterday"}, 422), ({"stream": stream}, 422),
                      ({**period, "to": "9999-12-31T23:00:00-05:00"}, 422), ({**period, "to": "2026-03-03"}, 422)):
        response = user.post("/api/v1/reports", bad)
        assert response.status_code == code, (bad, response.get_json())
    response = user.post("/api/v1/reports", period)
    assert response.status_code == 202, response.get_json()
    report_id = response.get_json()["id"]

    def finished() -> dict[str, Any] | None:
        report = reader.get(f"/api/v1/reports/{report_id}").get_json()
        return report if report["status"] in ("ready", "failed") else None

    report = wait_for(finished, timeout=180, every=0.5)
    assert report["status"] == "ready", report
    assert report["summary"]["anomalous_events"] == 5 and report["summary"]["trend"] == "rising"
    data = reader.get(report["links"]["data"])
    assert data.status_code == 200
    figures = data.get_json()
    assert figures["volumes"]["windows"] == 48 and figures["volumes"]["keys"] == 2
    assert figures["anomalies"]["by_detector"] == {"zscore": 5}
    assert figures["anomalies"]["top_keys"] == [{"key": "m1", "anomalies": 5}]
    assert figures["forecast"]["available"] is True and len(figures["forecast"]["yhat"]) == 12
    page = reader.get(report["links"]["html"])
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.data.count(b'src="data:image/png;base64,') == 2 and b"Stream report: meters" in page.data
    assert reader.get("/api/v1/reports?stream=a%00b").status_code == 422
    listed = reader.get(f"/api/v1/reports?stream={stream}").get_json()["reports"]
    assert [r["id"] for r in listed] == [report_id]

    from cortex_tasks.core.storage.object_store import S3ObjectStore

    bucket = S3ObjectStore(s3.endpoint, s3.access_key, s3.secret_key, alert_env["MINIO_BUCKET"])
    assert sorted(bucket.list(f"reports/{tenant_id}/{stream}/")) == [
        f"reports/{tenant_id}/{stream}/{report_id}.html", f"reports/{tenant_id}/{stream}/{report_id}.json"]


def test_alerts_raised_while_no_alert_worker_runs_are_processed_when_one_starts(app, tenant, webhooks, alert_worker):
    tenant_id, keys = tenant
    path = f"/later-{tenant_id}"
    add_webhook(api_of(app, keys), "ops", webhooks.base + path)
    alert_worker.stop()
    try:
        for n in range(3):  # the hand-off is Redis: nothing is lost while the worker is away
            raise_alert(candidate("late", n, group_key=f"k{n}"), tenant=tenant_id)
        time.sleep(1)
        assert webhooks.posts(path) == []
    finally:
        alert_worker.start()
    assert len(wait_for(lambda: len(webhooks.posts(path)) == 3 and webhooks.posts(path), timeout=60)) == 3
    assert len(alerts_of(api_of(app, keys, "reader"), stream="late")) == 3


def test_the_sweep_closes_missed_groups_and_sends_stranded_deliveries(app, tenant, webhooks, alert_worker):
    """A worker killed between storing an alert and sending its messages leaves a pending delivery and a
    group nobody closes: Beat's close-due-alert-groups entry finishes both."""
    from cortex_tasks import app as celery_app
    from cortex_tasks.core.alerting.intake import alert_message
    from cortex_tasks.core.contracts import task_names
    from cortex_tasks.core.contracts.job_messages import MaintenanceMessage
    from cortex_tasks.runtime.alerting.service import process_alert

    tenant_id, keys = tenant
    path = f"/stranded-{tenant_id}"
    add_webhook(api_of(app, keys), "ops", webhooks.base + path)
    policy = AlertPolicy(grouping_window_s=1, max_per_group=10, cooldown_s=0, dedup_window_s=0)
    with tenant_scope(tenant_id):  # the worker's own code, but its sends never happen
        for n in range(2):
            process_alert(alert_message(candidate("stranded", n, policy=policy), tenant=tenant_id))
    with tenant_scope(tenant_id), session_scope() as session:
        session.execute(text("UPDATE alert_deliveries SET created_at = now() - interval '5 minutes' "
                             "WHERE tenant = :tenant"), {"tenant": tenant_id})
        session.execute(text("UPDATE alert_groups SET closes_at = now() - interval '5 minutes' "
                             "WHERE tenant = :tenant"), {"tenant": tenant_id})
    assert webhooks.posts(path) == []
    swept = celery_app.send_task(task_names.ALERTS_CLOSE_DUE_GROUPS, queue="alerts",
                                 kwargs=MaintenanceMessage().to_kwargs()).get(timeout=60)
    assert swept["closed"] >= 1 and swept["resent"] >= 1, swept
    posts = wait_for(lambda: len(webhooks.posts(path)) >= 2 and webhooks.posts(path))
    texts = sorted(post["text"] for post in posts)  # the two are sent by separate tasks, in any order
    assert texts == ["[HIGH] stream:stranded · zscore · user-7: 1 alert in the group's window",
                     "[HIGH] stream:stranded · zscore · user-7: value 100 is far above the window"]
    assert [g["closed"] for g in groups_of(tenant_id)] == [True]


def test_beat_writes_each_streams_report_of_the_last_period_once(app, tenant, alert_worker):
    from cortex_tasks import app as celery_app
    from cortex_tasks.core.contracts import task_names
    from cortex_tasks.core.contracts.job_messages import MaintenanceMessage
    from cortex_tasks.core.storage.tables import StreamDeclaration, StreamWindow
    from cortex_tasks.runtime.alerting.reports import period_ending

    tenant_id, keys = tenant
    start, end = period_ending(datetime.now(UTC), 86400)  # the shipped period: yesterday (UTC)
    with tenant_scope(tenant_id), session_scope() as session:
        session.add(StreamDeclaration(id=str(uuid.uuid4()), name="daily", owner="test", spec={"name": "daily"}))
        for step in range(24):
            at = start + timedelta(hours=step)
            session.add(StreamWindow(stream="daily", key="k", window_start=at, window_end=at + timedelta(hours=1),
                                     count=5 + step, total=1.0, mean=1.0, minimum=1.0, maximum=1.0, anomalies=0))

    def beat() -> dict[str, Any]:
        return celery_app.send_task(task_names.REPORTS_WRITE_PERIODIC_REPORTS, queue="alerts",
                                    kwargs=MaintenanceMessage().to_kwargs()).get(timeout=60)

    assert beat()["queued"] >= 1
    reader = api_of(app, keys, "reader")

    def ready() -> list[dict[str, Any]] | None:
        reports = reader.get("/api/v1/reports?stream=daily").get_json()["reports"]
        return reports if reports and all(r["status"] in ("ready", "failed") for r in reports) else None

    reports = wait_for(ready, timeout=180, every=0.5)
    assert [(r["trigger"], r["status"], r["from"], r["to"]) for r in reports] == [
        ("schedule", "ready", start.isoformat(), end.isoformat())]
    assert reports[0]["summary"]["windows"] == 24
    beat()  # the same period again: nothing new for this stream
    time.sleep(1)
    assert len(reader.get("/api/v1/reports?stream=daily").get_json()["reports"]) == 1


def test_retention_deletes_old_alerts_reports_windows_and_verdicts_of_every_tenant_and_keeps_recent_ones(
        app, alert_env, s3, monkeypatch):
    """The shipped retention (90 days for alerts, reports and windows, 30 for verdicts) against rows dated
    past and within it, in two tenants; a report whose files cannot be deleted keeps its row until a run
    that can delete them."""
    from cortex_tasks.core.storage import object_store
    from cortex_tasks.core.storage.object_store import S3ObjectStore, get_object_store
    from cortex_tasks.core.storage.tables import (
        Alert,
        AlertDelivery,
        AlertGroup,
        StreamDeclaration,
        StreamReport,
        StreamVerdict,
        StreamWindow,
    )
    from cortex_tasks.runtime.alerting.reports import object_names
    from cortex_tasks.runtime.alerting.retention import expire_stream_history

    now = datetime.now(UTC)
    old, recent, old_verdict = now - timedelta(days=100), now - timedelta(days=1), now - timedelta(days=40)
    store = get_object_store()

    def add_group(tenant_id: str, name: str, at: datetime, last_seen: datetime) -> None:
        group_id = str(uuid.uuid4())
        with tenant_scope(tenant_id), session_scope() as session:
            session.add(AlertGroup(id=group_id, source="stream:s", rule=name, group_key="k", severity="high",
                                   opened_at=at, closes_at=at + timedelta(minutes=5), alert_count=1,
                                   folded_count=0, policy={}, channels=[], closed=True, notified_at=at))
            session.flush()
            session.add(Alert(id=str(uuid.uuid4()), group_id=group_id, source="stream:s", rule=name, group_key="k",
                              severity="high", summary=name, details={}, dedup_key=name, occurred_at=at,
                              first_seen_at=at, last_seen_at=last_seen, occurrences=1, state="open"))
            session.add(AlertDelivery(id=str(uuid.uuid4()), group_id=group_id, channel="ops", kind="first",
                                      notification={}, status="delivered", attempts=1, created_at=at))

    def add_report(tenant_id: str, at: datetime) -> str:
        report_id = str(uuid.uuid4())
        json_name, html_name = object_names(tenant_id, "s", report_id)
        store.put(json_name, b"{}", "application/json")
        store.put(html_name, b"<html></html>", "text/html")
        with tenant_scope(tenant_id), session_scope() as session:
            session.add(StreamReport(id=report_id, stream="s", period_start=at - timedelta(days=1), period_end=at,
                                     trigger="schedule", status="ready", json_key=json_name, html_key=html_name,
                                     created_at=at, finished_at=at))
        return report_id

    def add_stream_rows(tenant_id: str) -> None:
        with tenant_scope(tenant_id), session_scope() as session:
            session.add(StreamDeclaration(id=str(uuid.uuid4()), name="s", owner="test", spec={"name": "s"}))
            for at in (old, recent):
                session.add(StreamWindow(stream="s", key="k", window_start=at, window_end=at + timedelta(minutes=5),
                                         count=1, total=1.0, mean=1.0, minimum=1.0, maximum=1.0, anomalies=0))
            for n, at in enumerate((old_verdict, recent)):
                session.add(StreamVerdict(stream="s", event_id=f"1-{n}", key="k", detector="robust_zscore",
                                          outcome="normal", score=0.1, value=1.0, expected=1.0, event_time=at,
                                          received_at=at, decided_at=at))

    def remaining(tenant_id: str) -> dict[str, Any]:
        with tenant_scope(tenant_id), session_scope() as session:
            return {
                "groups": sorted(session.execute(select(AlertGroup.rule)).scalars()),
                "alerts": sorted(session.execute(select(Alert.rule)).scalars()),
                "deliveries": session.execute(select(func.count()).select_from(AlertDelivery)).scalar(),
                "reports": sorted(session.execute(select(StreamReport.id)).scalars()),
                "windows": sorted(session.execute(select(StreamWindow.window_start)).scalars()),
                "verdicts": sorted(session.execute(select(StreamVerdict.event_time)).scalars()),
            }

    first, second = new_tenant("retention"), new_tenant("retention")
    add_group(first, "old", old, old)
    add_group(first, "recent", recent, recent)
    add_group(first, "recurring", old, now - timedelta(hours=1))  # an old breach that still repeats
    add_group(second, "recent", recent, recent)
    old_report, recent_report = add_report(first, old), add_report(first, recent)
    other_report = add_report(second, recent)
    add_stream_rows(first)
    add_stream_rows(second)

    # The object store unreachable: the old report keeps its row (and its files), the rest goes.
    dead = S3ObjectStore(f"127.0.0.1:{free_port()}", "key", "secret", alert_env["MINIO_BUCKET"])
    monkeypatch.setitem(object_store._stores, (os.getpid(), None), dead)
    expire_stream_history()
    assert remaining(first)["reports"] == sorted([old_report, recent_report])
    assert store.exists(object_names(first, "s", old_report)[1])
    monkeypatch.setitem(object_store._stores, (os.getpid(), None), store)

    done = expire_stream_history()
    assert done["reports"] >= 1 and done["report_deletions_failed"] == 0, done
    kept = remaining(first)
    assert kept["groups"] == ["recent", "recurring"] and kept["alerts"] == ["recent", "recurring"]
    assert kept["deliveries"] == 2
    assert kept["reports"] == [recent_report]
    assert kept["windows"] == [recent] and kept["verdicts"] == [recent]
    assert not any(store.exists(name) for name in object_names(first, "s", old_report))
    assert all(store.exists(name) for name in object_names(first, "s", recent_report))
    other = remaining(second)
    assert other["groups"] == ["recent"] and other["deliveries"] == 1 and other["reports"] == [other_report]
    assert other["windows"] == [recent] and other["verdicts"] == [recent]
    assert all(store.exists(name) for name in object_names(second, "s", other_report))
