"""A worker announces itself once its models are loaded, and keeps the announcement alive while it runs.
/ready shows who is ready to a caller with a key; to anyone else only whether the service is ready."""
from __future__ import annotations

import json
import time

import redis

from cortex_tasks.core.settings import get_settings, reset_settings_cache
from cortex_tasks.core.worker_records import READY_KEY_PREFIX, READY_TTL_SECONDS


def test_readiness_is_refreshed_by_heartbeats(workers, app, keys):
    client = redis.Redis.from_url(get_settings().redis_url)
    key = READY_KEY_PREFIX + workers["gpu"].hostname
    status = json.loads(client.get(key))
    assert "all-MiniLM-L6-v2" in status["models"] and "gpu" in status["queues"]
    client.expire(key, 30)  # as if it were about to lapse
    time.sleep(5)  # heartbeats come every 2 s
    assert client.ttl(key) > READY_TTL_SECONDS - 10
    ready = app.test_client().get("/ready", headers={"Authorization": f"Bearer {keys['reader']}"}).get_json()
    assert {"gpu", "nlp"} <= set(ready["queues_served"])


def test_ready_waits_for_a_worker_on_every_queue(app, keys, workers, monkeypatch):
    client = app.test_client()
    headers = {"Authorization": f"Bearer {keys['reader']}"}
    assert client.get("/ready").status_code == 200  # the session's workers serve every queue
    monkeypatch.setenv("CORTEX_READY_QUEUES", "gpu,nlp,an-unserved-queue")
    reset_settings_cache()
    assert client.get("/ready").get_json() == {"status": "not_ready"}
    details = client.get("/ready", headers=headers)
    assert details.status_code == 503
    assert details.get_json()["checks"]["workers"] == {"ok": False, "queues_without_worker": ["an-unserved-queue"]}


def test_the_default_ready_queues_are_every_queue(monkeypatch):
    from cortex_tasks.core.queues import QUEUE_NAMES

    monkeypatch.delenv("CORTEX_READY_QUEUES", raising=False)  # the suite's own (tests/conftest.py)
    reset_settings_cache()
    assert set(get_settings().ready_queues) == set(QUEUE_NAMES)


def test_an_anonymous_caller_learns_only_the_status(app, keys, workers):
    client = app.test_client()
    for path, status in (("/ready", "ready"), ("/health", "ok")):
        response = client.get(path)
        assert response.status_code == 200 and response.get_json() == {"status": status}, path
    # A key of any role gets the details; a bad key is refused rather than answered as anonymous.
    keyed = client.get("/ready", headers={"X-API-Key": keys["reader"]})
    assert keyed.status_code == 200 and keyed.get_json()["status"] == "ready"
    refused = client.get("/ready", headers={"Authorization": "Bearer ctx_0123456789ab_not-a-key"})
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "invalid_api_key"
    # Liveness looks at no key (it must not depend on the database keys are checked against).
    assert client.get("/health", headers={"Authorization": "Bearer not-a-key"}).get_json() == {"status": "ok"}
    details = client.get("/ready", headers={"Authorization": f"Bearer {keys['reader']}"}).get_json()
    assert set(details) == {"status", "checks", "workers", "queues_served"}
    assert details["checks"]["database"] == {"ok": True} and details["checks"]["redis"] == {"ok": True}
    assert details["checks"]["workers"] == {"ok": True}


def test_a_failed_model_load_is_shown_as_a_code_never_its_text(app, keys):
    """A record as a worker of an earlier version wrote it (the exception's text), and one as workers now
    write it: callers with a key see a code and a short message either way."""
    client = redis.Redis.from_url(get_settings().redis_url)
    secret = "postgresql://cortex:hunter2@db/x at /home/op/.cache/model"
    older, current = READY_KEY_PREFIX + "older-worker@test", READY_KEY_PREFIX + "current-worker@test"
    client.set(older, json.dumps({"hostname": "older-worker@test", "queues": ["spare"], "models": [],
                                  "failed_models": {"some-model": f"OperationalError: {secret}"}}), ex=60)
    client.set(current, json.dumps({"hostname": "current-worker@test", "queues": ["spare"], "models": [],
                                    "failed_models": {"some-model": {
                                        "code": "model_files_missing",
                                        "message": "the model's files were not found (FileNotFoundError); "
                                                   "the worker's log has the details"}}}), ex=60)
    try:
        headers = {"Authorization": f"Bearer {keys['model_admin']}"}
        for path in ("/ready", "/api/v1/health/metrics", "/api/v1/health/resources"):
            response = app.test_client().get(path, headers=headers)
            assert "hunter2" not in response.get_data(as_text=True), path
            shown = {worker["hostname"]: worker["failed_models"]["some-model"]
                     for worker in response.get_json()["workers"] if worker["hostname"].endswith("@test")}
            assert shown["older-worker@test"]["code"] == "model_load_failed", path
            assert shown["current-worker@test"]["code"] == "model_files_missing", path
    finally:
        client.delete(older, current)
