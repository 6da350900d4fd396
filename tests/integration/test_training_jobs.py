"""Training jobs through the HTTP API with real workers: a classifier trained through the API serves
/predict as name@version; pause checkpoints and resume continues from the checkpoint; cancel stops a
run within seconds; bad data is refused with a report; quotas answer 429."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest


# Calls this module makes to the stores directly act for the default tenant, as the suite's keys do.
pytestmark = pytest.mark.usefixtures("in_default_tenant")

TOPICS = Path(__file__).resolve().parents[2] / "cortex_tasks" / "runtime" / "data" / "topics.jsonl"


def topic_rows(labels: tuple[str, ...] = ("sports", "health", "politics"), per_label: int = 24) -> list[dict]:
    picked: dict[str, list[dict]] = {label: [] for label in labels}
    for line in TOPICS.read_text().splitlines():
        row = json.loads(line)
        first = row["labels"][0]
        if first in picked and len(picked[first]) < per_label and len(row["labels"]) == 1:
            picked[first].append({"text": row["text"], "label": first})
    return [row for label in labels for row in picked[label]]


def wait_for_status(api, job_id: str, predicate, timeout: float = 240, what: str = "a state"):
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        body = api.get(f"/api/v1/training/status/{job_id}").get_json()
        if predicate(body):
            return body
        if body["status"] in ("failed", "succeeded", "cancelled") and not predicate(body):
            raise AssertionError(f"job ended while waiting for {what}: {body}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {body}")


def test_trained_classifier_serves_predict_as_name_at_version(admin_api, workers):
    name = f"topics-{uuid.uuid4().hex[:6]}"
    response = admin_api.post("/api/v1/training/submit", {
        "kind": "classifier", "model": name, "dataset": {"rows": topic_rows()},
        "params": {"epochs": 40, "learning_rate": 0.05}})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    status = wait_for_status(admin_api, job_id, lambda b: b["status"] == "succeeded", what="success")

    result = status["result"]
    assert result["reference"] == f"{name}@1" and result["task"] == "classify"
    assert result["metrics"]["held_out_rows"] >= 9
    assert result["metrics"]["accuracy"] >= 0.7
    assert status["validation"]["valid"] and status["validation"]["class_counts"] == {
        "health": 24, "politics": 24, "sports": 24}
    assert [epoch["epoch"] for epoch in status["history"]] == list(range(1, 41))
    assert status["data_fingerprint"].startswith("sha256:")
    assert status["resources"]["cpu_seconds"] > 0

    predicted = admin_api.post("/api/v1/predict", {
        "task": "classify", "model": f"{name}@1", "wait": 30,
        "inputs": ["The goalkeeper saved a penalty in the last minute of the cup final.",
                   "Parliament passed the budget bill after a long debate between the parties.",
                   "Doctors recommend regular exercise and a balanced diet to lower blood pressure."]})
    assert predicted.status_code == 200, predicted.get_json()
    body = predicted.get_json()
    assert body["model"]["name"] == name and body["model"]["version"] == "1"
    assert [output["label"] for output in body["outputs"]] == ["sports", "politics", "health"]

    version = admin_api.get(f"/api/v1/models/{name}/versions/1").get_json()
    assert version["stage"] in ("staging", "canary")
    assert version["data_fingerprint"] == result["data_fingerprint"]
    assert version["metrics"]["accuracy"] == result["metrics"]["accuracy"]

    runs = admin_api.get(f"/api/v1/training/runs/{name}").get_json()
    assert [run["run_id"] for run in runs["runs"]] == [job_id]
    assert runs["runs"][0]["config"]["params"]["epochs"] == 40
    assert runs["comparison"]["best"]["version"] == 1
    listed = admin_api.get(f"/api/v1/models/{name}").get_json()["training_runs"]
    assert listed["count"] == 1 and listed["runs"][0]["data_fingerprint"] == status["data_fingerprint"]
    assert listed["comparison"]["metric"] == "accuracy"


def test_pause_checkpoints_resume_continues_and_cancel_stops(admin_api, workers):
    name = f"pausable-{uuid.uuid4().hex[:6]}"
    job_id = admin_api.post("/api/v1/training/submit", {
        "kind": "classifier", "model": name, "dataset": {"rows": topic_rows(per_label=12)},
        "params": {"epochs": 100_000, "auto_promote": False}}).get_json()["job_id"]
    wait_for_status(admin_api, job_id, lambda b: b["phase"] == "training" and b["epoch"] >= 3, what="epoch 3")

    paused = admin_api.post(f"/api/v1/training/control/{job_id}", {"action": "pause"})
    assert paused.status_code == 202 and paused.get_json()["status"] == "pausing"
    status = wait_for_status(admin_api, job_id, lambda b: b["status"] == "paused", what="the pause")
    checkpoint = status["checkpoint"]["epoch"]
    assert status["phase"] == "paused" and checkpoint >= 3
    assert [epoch["epoch"] for epoch in status["history"]] == list(range(1, checkpoint + 1))
    time.sleep(1)
    assert admin_api.get(f"/api/v1/training/status/{job_id}").get_json()["epoch"] == checkpoint  # really stopped
    assert admin_api.post(f"/api/v1/training/control/{job_id}", {"action": "pause"}).status_code == 409

    resumed = admin_api.post(f"/api/v1/training/control/{job_id}", {"action": "resume"})
    assert resumed.status_code == 202 and resumed.get_json()["status"] == "queued"
    status = wait_for_status(admin_api, job_id, lambda b: b["phase"] == "training" and b["epoch"] >= checkpoint + 3,
                             what="training past the checkpoint")
    epochs = [epoch["epoch"] for epoch in status["history"]]
    assert epochs == list(range(1, len(epochs) + 1))  # continued from the checkpoint, not from epoch 1
    losses = [epoch["loss"] for epoch in status["history"]]
    assert losses[checkpoint] < losses[0]  # the first epoch after resuming starts from trained weights

    asked = time.monotonic()
    cancelled = admin_api.post(f"/api/v1/training/control/{job_id}", {"action": "cancel"})
    assert cancelled.status_code == 202 and cancelled.get_json()["status"] == "cancelling"
    status = wait_for_status(admin_api, job_id, lambda b: b["status"] == "cancelled", timeout=30, what="the cancel")
    assert time.monotonic() - asked < 30
    assert status["phase"] == "cancelled" and status["registered"] is None
    assert admin_api.get(f"/api/v1/models/{name}").status_code == 404


def test_invalid_dataset_fails_with_a_report(admin_api, workers):
    rows = topic_rows(("sports", "health"), per_label=6)
    rows[2] = {"text": "", "label": "sports"}
    rows[4] = {"label": "sports"}
    rows.append({"text": "only one example of this class", "label": "weather"})
    job_id = admin_api.post("/api/v1/training/submit", {
        "kind": "classifier", "model": f"bad-{uuid.uuid4().hex[:6]}", "dataset": {"rows": rows}}).get_json()["job_id"]
    status = wait_for_status(admin_api, job_id, lambda b: b["status"] == "failed", what="the failure")
    assert status["error"]["code"] == "invalid_dataset"
    problems = status["validation"]["errors"]
    assert {(problem["row"], problem["field"]) for problem in problems} >= {(2, "text"), (4, "text"), (None, "label")}
    assert any("'weather' has 1 example" in problem["problem"] for problem in problems)


def test_bad_requests_and_quota(admin_api, monkeypatch):
    assert admin_api.post("/api/v1/training/submit", {"kind": "telepathy", "model": "x",
                                                      "dataset": {"rows": [{}]}}).status_code == 422
    assert admin_api.post("/api/v1/training/submit", {"kind": "classifier", "model": "../etc",
                                                      "dataset": {"rows": [{}]}}).status_code == 422
    assert admin_api.post("/api/v1/training/submit", {"kind": "classifier", "model": "x",
                                                      "dataset": {}}).status_code == 422
    assert admin_api.post("/api/v1/training/control/00000000-0000-0000-0000-000000000000",
                          {"action": "pause"}).status_code == 404

    from cortex_tasks.core.auth.keys import create_key
    from cortex_tasks.core.settings import reset_settings_cache

    owner = admin_api.as_key(create_key("model_admin").key)
    monkeypatch.setenv("CORTEX_TRAINING_MAX_CONCURRENT", "1")
    reset_settings_cache()
    try:
        body = {"kind": "classifier", "model": f"quota-{uuid.uuid4().hex[:6]}",
                "dataset": {"rows": topic_rows(per_label=4)}, "params": {"epochs": 100_000}}
        first = owner.post("/api/v1/training/submit", body)
        assert first.status_code == 202
        second = owner.post("/api/v1/training/submit", body)
        assert second.status_code == 429
        assert second.get_json()["error"]["code"] == "training_quota_exceeded"
        assert "at most 1" in second.get_json()["error"]["message"]
        assert owner.post(f"/api/v1/training/control/{first.get_json()['job_id']}",
                          {"action": "cancel"}).status_code == 202
    finally:
        monkeypatch.delenv("CORTEX_TRAINING_MAX_CONCURRENT")
        reset_settings_cache()


def test_resources_report_queue_capacity_and_host(admin_api, workers):
    body = admin_api.get("/api/v1/training/resources").get_json()
    assert body["concurrency"]["max_concurrent_jobs"] == 5
    assert body["queue"]["name"] == "training" and body["queue"]["queue_size"] == 100
    assert body["host"]["cpu_count"] >= 1 and body["host"]["memory"]["total_mb"] > 0
    assert body["concurrency"]["workers"] >= 1


def test_a_classifier_trains_on_an_uploaded_dataset_that_other_tenants_cannot_read(app, admin_api, workers):
    from tests.integration.conftest import Api
    from tests.support.tenants import new_tenant, tenant_keys

    name = f"topics/{uuid.uuid4().hex[:8]}.jsonl"
    body = "".join(json.dumps(row) + "\n" for row in topic_rows(per_label=12)).encode()
    uploaded = admin_api.client.put(f"/api/v1/training/datasets/{name}", data=body, headers=admin_api.headers())
    assert uploaded.status_code == 201, uploaded.get_json()
    assert uploaded.get_json()["dataset"] == {"object": name} and uploaded.get_json()["size"] == len(body)
    assert name in admin_api.get("/api/v1/training/datasets").get_json()["datasets"]

    model = f"uploaded-{uuid.uuid4().hex[:6]}"
    response = admin_api.post("/api/v1/training/submit", {"kind": "classifier", "model": model,
                                                          "dataset": {"object": name}, "params": {"epochs": 5}})
    assert response.status_code == 202, response.get_json()
    status = wait_for_status(admin_api, response.get_json()["job_id"], lambda b: b["status"] == "succeeded",
                             what="success")
    assert status["validation"]["class_counts"] == {"health": 12, "politics": 12, "sports": 12}

    # Another tenant naming the same dataset names its own (empty) folder: its job fails, reading nothing.
    other = Api(app.test_client(), tenant_keys(new_tenant("ds"))["model_admin"])
    assert other.get("/api/v1/training/datasets").get_json()["datasets"] == []
    theirs = other.post("/api/v1/training/submit", {"kind": "classifier", "model": model,
                                                    "dataset": {"object": name}, "params": {"epochs": 1}})
    assert theirs.status_code == 202, theirs.get_json()
    failed = wait_for_status(other, theirs.get_json()["job_id"], lambda b: b["status"] == "failed", what="failure")
    assert failed["error"]["code"] == "dataset_unavailable"
    assert other.delete(f"/api/v1/training/datasets/{name}").status_code == 404

    for bad_name, data in ((f"{name}.exe", body), ("../x.jsonl", body), (f"empty-{name}", b"")):
        refused = admin_api.client.put(f"/api/v1/training/datasets/{bad_name}", data=data, headers=admin_api.headers())
        assert refused.status_code in (404, 422), (bad_name, refused.get_json())
    assert admin_api.delete(f"/api/v1/training/datasets/{name}").get_json() == {"name": name, "deleted": True}
    assert name not in admin_api.get("/api/v1/training/datasets").get_json()["datasets"]
