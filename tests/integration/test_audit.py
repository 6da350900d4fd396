"""The audit log through the HTTP API and real PostgreSQL: configuration changes, security violations and
model access recorded with the right fields, alerts at the threshold, GET /audit for admins only, and
retention leaving the chain intact."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from cortex_tasks.core.audit.chain import verify_chain
from cortex_tasks.core.audit.service import AuditRecord, query_events, record_events
from cortex_tasks.core.auth.keys import create_key, create_tenant
from cortex_web.metrics import AUDIT_ALERTS


def key_id(key: str) -> str:
    return key.split("_", 2)[1]


@pytest.fixture()
def flush(app):
    """Write the gateway's buffered events now (the writer thread would within a second)."""
    return app.extensions["cortex_audit"].flush


@pytest.fixture()
def auditor(admin_api, keys):
    """The platform admin, who reads every tenant's events and those of no tenant (refused keys)."""
    return admin_api.as_key(keys["platform_admin"])


def events(auditor, **query) -> list[dict]:
    response = auditor.get("/api/v1/audit", query_string={"size": 200, **query})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["events"]


def test_key_changes_are_recorded_without_the_secret(admin_api, keys, flush, auditor):
    created = admin_api.post("/api/v1/keys", {"role": "reader", "tier": "premium", "name": "audited"}).get_json()
    assert admin_api.delete(f"/api/v1/keys/{created['key_id']}").status_code == 200
    assert admin_api.delete("/api/v1/keys/nosuchkey").status_code == 404
    flush()
    admin = key_id(keys["model_admin"])
    changes = events(auditor, type="configuration_changes", actor=admin)
    by_action = {(event["action"], event["resource"]): event for event in changes}
    made = by_action[("key.create", created["key_id"])]
    assert made["outcome"] == "success" and made["actor"] == {"key_id": admin, "role": "model_admin"}
    assert made["tenant"] == "default"  # the principal's
    assert made["details"]["tier"] == "premium" and made["details"]["request"]["role"] == "reader"
    assert made["ip"] == "127.0.0.1"
    assert created["key"] not in str(changes) and created["key"].split("_", 2)[2] not in str(changes)
    assert by_action[("key.revoke", created["key_id"])]["outcome"] == "success"
    refused = by_action[("key.revoke", "nosuchkey")]
    assert refused["outcome"] == "failure" and refused["details"]["code"] == "key_not_found"


def test_cli_key_changes_are_recorded():
    from click.testing import CliRunner

    from cortex_tasks.cli import main

    result = CliRunner().invoke(main, ["keys", "create", "--role", "reader"])
    assert result.exit_code == 0, result.output
    new_id = key_id(result.output.strip().splitlines()[-1])
    rows, _ = query_events("configuration_changes", since=datetime.now(UTC) - timedelta(minutes=1))
    made = [row for row in rows if row["action"] == "key.create" and row["resource"] == new_id]
    assert made and made[0]["details"]["via"] == "cli" and made[0]["actor"]["key_id"] is None


def test_security_violations_are_recorded(app, admin_api, keys, flush, auditor):
    client = app.test_client()
    address = f"10.0.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    missing = client.get("/api/v1/models", environ_base={"REMOTE_ADDR": address})
    bad = client.get("/api/v1/models", headers={"Authorization": "Bearer ctx_abcdef123456_wrongsecret"},
                     environ_base={"REMOTE_ADDR": address})
    assert (missing.status_code, bad.status_code) == (401, 401)
    reader = keys["reader"]
    assert client.post("/api/v1/keys", json={"role": "reader"},
                       headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    limited_key = create_key("inference_user", tier="default").key
    limited = admin_api.as_key(limited_key)
    statuses = [limited.post("/api/v1/predict", {"task": "embed", "inputs": [""]}).status_code for _ in range(6)]
    assert statuses[-1] == 429
    flush()

    from_address = {event["action"]: event for event in events(auditor, type="security_violations")
                    if event["ip"] == address}
    assert from_address["missing_api_key"]["actor"]["key_id"] is None and from_address["missing_api_key"]["tenant"] is None
    claimed = from_address["invalid_api_key"]
    assert claimed["actor"]["key_id"] == "abcdef123456" and "wrongsecret" not in str(claimed)
    assert claimed["resource"] == "GET /api/v1/models" and claimed["outcome"] == "denied"
    forbidden = events(auditor, type="security_violations", actor=key_id(reader))
    assert any(e["action"] == "forbidden" and e["resource"] == "POST /api/v1/keys" for e in forbidden)
    rate = events(auditor, type="security_violations", actor=key_id(limited_key))
    assert [(e["action"], e["actor"]["role"], e["details"]["status"]) for e in rate] == [
        ("rate_limited", "inference_user", 429)]


def test_model_access_is_aggregated_per_key_model_and_minute(admin_api, workers, flush, auditor):
    caller_key = create_key("inference_user", tier="unlimited").key
    caller = admin_api.as_key(caller_key)
    for _ in range(3):
        caller.predict("embed", ["audited access"])
    assert caller.post("/api/v1/predict", {"task": "embed", "inputs": [""]}).status_code == 422  # not access
    flush()
    rows = events(auditor, type="model_access", actor=key_id(caller_key))
    assert [(row["resource"], row["action"], row["count"], row["actor"]["role"]) for row in rows] == [
        ("all-MiniLM-L6-v2", "predict.predict", 3, "inference_user")]
    assert datetime.fromisoformat(rows[0]["at"]).second == 0  # the minute it counts


def test_alert_fires_once_at_the_threshold(app, admin_api, flush, auditor):
    client = app.test_client()
    address = f"10.1.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"

    def violate(times: int) -> None:
        for _ in range(times):
            assert client.get("/api/v1/models", environ_base={"REMOTE_ADDR": address}).status_code == 401
        flush()

    def alerts() -> list[dict]:
        return [event for event in events(auditor, type="alerts") if event["resource"] == f"ip:{address}"]

    before = AUDIT_ALERTS.labels("security_breach")._value.get()
    violate(2)
    assert alerts() == []
    violate(1)  # the third within 5 minutes
    fired = alerts()
    assert [(a["action"], a["ip"], a["details"]["threshold"], a["details"]["window_seconds"]) for a in fired] == [
        ("security_breach", address, 3, 300.0)]
    assert AUDIT_ALERTS.labels("security_breach")._value.get() == before + 1
    violate(4)  # still the same breach: no second alert
    assert [a["action"] for a in alerts()] == ["security_breach"]
    violate(3)  # ten within the hour
    assert sorted(a["action"] for a in alerts()) == ["security_breach", "unusual_access"]


def test_a_model_admin_reads_its_tenants_events_only(app, admin_api, keys, flush, auditor):
    other = f"audit-{uuid.uuid4().hex[:8]}"
    assert create_tenant(other)
    their_admin = admin_api.as_key(create_key("model_admin", tenant=other, tier="unlimited").key)
    made = their_admin.post("/api/v1/keys", {"role": "reader", "name": "theirs"}).get_json()["key_id"]
    ours = admin_api.post("/api/v1/keys", {"role": "reader", "name": "ours"}).get_json()["key_id"]
    flush()
    seen_by_them = {event["resource"] for event in their_admin.get(
        "/api/v1/audit", query_string={"size": 200}).get_json()["events"]}
    assert made in seen_by_them and ours not in seen_by_them
    seen_by_us = admin_api.get("/api/v1/audit", query_string={"size": 200}).get_json()["events"]
    assert made not in {event["resource"] for event in seen_by_us}
    assert {event["tenant"] for event in seen_by_us} == {"default"}
    assert admin_api.get("/api/v1/audit", query_string={"tenant": other}).status_code == 404
    assert made in {event["resource"] for event in events(auditor, tenant=other)}
    # The chain is the platform's: only the platform admin checks it.
    assert admin_api.get("/api/v1/audit/verify").status_code == 403


def test_audit_endpoint_is_admin_only_filters_and_pages(app, admin_api, keys, flush):
    for role in ("reader", "inference_user"):
        assert admin_api.as_key(keys[role]).get("/api/v1/audit").status_code == 403
    for query in ({"type": "everything"}, {"since": "yesterday"}, {"size": "500"}, {"page": "0"},
                  {"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}):
        response = admin_api.get("/api/v1/audit", query_string=query)
        assert response.status_code == 422 and response.get_json()["error"]["code"] == "invalid_query", query
    for _ in range(3):
        admin_api.post("/api/v1/keys", {"role": "reader"})
    flush()
    first = admin_api.get("/api/v1/audit", query_string={"size": 2}).get_json()
    second = admin_api.get("/api/v1/audit", query_string={"size": 2, "page": 2}).get_json()
    assert first["next_page"] == 2 and len(first["events"]) == 2
    ordered = first["events"] + second["events"]
    assert len({event["id"] for event in ordered}) == 4
    assert [event["at"] for event in ordered] == sorted((event["at"] for event in ordered), reverse=True)
    future = admin_api.get("/api/v1/audit", query_string={"since": "2999-01-01T00:00:00Z"}).get_json()
    assert future == {"events": [], "page": 1, "size": 50, "next_page": None}


def test_retention_through_the_worker_keeps_the_chain(workers):
    """The Beat task on the session's log. Its rows are all recent, so nothing before the back-dated
    row can go, and so neither can it: retention deletes only the oldest rows of the chain
    (test_audit_chain.py deletes a real prefix in a log of its own)."""
    from cortex_tasks import app as celery_app

    marker = f"retention-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    record_events([AuditRecord("configuration_changes", "test.old", "success", resource=marker,
                               at=now - timedelta(days=91))])
    result = celery_app.send_task("cortex.maintenance.purge_audit_events", queue="maintenance").get(timeout=180)
    assert result == {"deleted": 0}
    left, _ = query_events("configuration_changes", since=now - timedelta(days=100), until=now - timedelta(days=80))
    assert [row["action"] for row in left if row["resource"] == marker] == ["test.old"]
    assert verify_chain().ok


def test_model_access_rows_of_one_minute_are_summed(admin_api, auditor):
    """Each flush appends its own model_access rows (the log is never updated); readers sum a minute's."""
    caller = f"sum{uuid.uuid4().hex[:9]}"
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    for count in (2, 5):  # two flushes, or two gateway processes
        record_events([AuditRecord("model_access", "predict.predict", "success", actor_key_id=caller,
                                   actor_role="inference_user", resource="m", at=minute, count=count,
                                   tenant="default")])
    record_events([AuditRecord("model_access", "predict.predict", "success", actor_key_id=caller,
                               actor_role="inference_user", resource="m", at=minute + timedelta(minutes=1))])
    rows = events(auditor, type="model_access", actor=caller)
    assert [(row["at"], row["count"], row["tenant"]) for row in rows] == [
        ((minute + timedelta(minutes=1)).isoformat(), 1, None), (minute.isoformat(), 7, "default")]


def test_an_event_holding_a_nul_character_is_stored_and_does_not_block_the_log(admin_api, keys, flush, auditor):
    # A revoke of a key id holding U+0000: PostgreSQL refuses that character, and before it was replaced
    # the failed write kept every later event of this gateway process out of the log.
    assert admin_api.delete("/api/v1/keys/bad%00id").status_code in (404, 422)
    created = admin_api.post("/api/v1/keys", {"role": "reader", "name": "after-nul"}).get_json()
    flush()
    changes = events(auditor, type="configuration_changes", actor=key_id(keys["model_admin"]))
    resources = {event["resource"] for event in changes}
    assert created["key_id"] in resources
    assert "bad\ufffdid" in resources


def test_deletions_are_recorded_with_tenant_key_action_and_resource(admin_api, keys, flush, auditor):
    user = admin_api.as_key(keys["inference_user"])
    name = f"audited{uuid.uuid4().hex[:8]}"
    assert user.client.put(f"/api/v1/vectors/{name}", json={"dimension": 3, "model": None},
                           headers=user.headers()).status_code in (200, 201)
    assert user.post(f"/api/v1/vectors/{name}", {"items": [{"id": "a", "vector": [1.0, 0.0, 0.0]}]}).status_code == 200
    # Deleting needs model_admin: the inference_user's attempt is refused (and recorded as a violation).
    assert user.post(f"/api/v1/vectors/{name}/delete", {"ids": ["a", "b"]}).status_code == 403
    assert admin_api.post(f"/api/v1/vectors/{name}/delete", {"ids": ["a", "b"]}).status_code == 200
    assert admin_api.delete(f"/api/v1/vectors/{name}").status_code == 200
    flush()
    changes = [event for actor in ("inference_user", "model_admin")
               for event in events(auditor, type="configuration_changes", actor=key_id(keys[actor]))
               if event["resource"] == name]
    assert sorted((event["action"], event["tenant"], event["actor"]["role"], event["outcome"]) for event in changes) == [
        ("collection.create", "default", "inference_user", "success"),
        ("collection.delete", "default", "model_admin", "success"),
        ("vectors.delete", "default", "model_admin", "success")]
    assert next(event for event in changes if event["action"] == "vectors.delete")["details"]["deleted"] == 1
