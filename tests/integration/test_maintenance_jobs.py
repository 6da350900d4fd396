"""Beat's housekeeping, run as its tasks run it: a batch whose chunk messages were lost is re-enqueued
by the sweep and finishes; retraining starts on a cron and on a metric under its threshold; metric
roll-ups; result expiry."""
from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import text

from cortex_tasks.core.storage.db import session_scope
from tests.integration.test_batch_jobs import sentence, wait_until_finished
from tests.integration.test_training_jobs import topic_rows

# These tests read or write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("in_default_tenant")


def test_sweep_requeues_a_batch_whose_messages_were_lost(api, workers, monkeypatch):
    from cortex_tasks.core.settings import reset_settings_cache
    from cortex_tasks.runtime.batch.recovery import requeue_stalled_batches

    monkeypatch.setenv("CORTEX_BATCH_QUEUE", f"nobody-listens-{uuid.uuid4().hex[:6]}")
    reset_settings_cache()
    job_id = api.post("/api/v1/batch/submit", {"task": "embed", "inputs": [sentence(i) for i in range(120)]}
                      ).get_json()["job_id"]
    with session_scope() as session:  # the messages are gone (say, Redis lost them) and time has passed
        session.execute(text("UPDATE jobs SET params = jsonb_set(params, '{queue}', '\"batch\"') WHERE id = :id"),
                        {"id": job_id})
        session.execute(text("UPDATE batch_chunks SET updated_at = now() - interval '2 hours' WHERE job_id = :id"),
                        {"id": job_id})
    assert requeue_stalled_batches()["chunks_requeued"] >= 2
    progress = wait_until_finished(api, job_id)
    assert (progress["status"], progress["done"]) == ("succeeded", 120)


def test_retraining_starts_on_cron_and_on_a_metric_below_threshold(admin_api, workers):
    from cortex_tasks.core.registry import service as registry
    from cortex_tasks.core.training.schedules import retrain_due_models

    by_cron, by_metric = f"cron-{uuid.uuid4().hex[:6]}", f"drift-{uuid.uuid4().hex[:6]}"
    rows = topic_rows(per_label=6)
    for name, schedule in ((by_cron, {"cron": "* * * * *"}), (by_metric, {"metric": "live_accuracy", "threshold": 0.8})):
        response = admin_api.post("/api/v1/training/submit", {
            "kind": "classifier", "model": name, "dataset": {"rows": rows},
            "params": {"epochs": 5, "auto_promote": False}, "schedule": schedule})
        assert response.status_code == 202, response.get_json()
        job_id = response.get_json()["job_id"]
        deadline = time.monotonic() + 180
        while admin_api.get(f"/api/v1/training/status/{job_id}").get_json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    with session_scope() as session:
        # Time passes: the cron came due, and the metric trigger's cool-down after the last run is over.
        session.execute(text("UPDATE training_schedules SET last_run_at = now() - interval '7 hours' "
                             "WHERE model_name IN (:a, :b)"), {"a": by_cron, "b": by_metric})
        # Monitoring writes the live accuracy it measured back to the version: it has drifted below 0.8.
        session.execute(text("UPDATE registry_versions SET metrics = metrics || '{\"live_accuracy\": 0.61}' "
                             "WHERE model_id = (SELECT id FROM registry_models WHERE name = :name)"),
                        {"name": by_metric})
    assert registry.get_version(by_metric, 1).metrics["live_accuracy"] == 0.61

    started = {item["model"]: item for item in retrain_due_models()["started"]}
    assert started[by_cron]["trigger"] == "schedule"
    assert started[by_metric]["trigger"] == "metric" and started[by_metric]["value"] == 0.61
    assert by_metric not in {item["model"] for item in retrain_due_models()["started"]}  # cooldown
    for item in started.values():
        admin_api.post(f"/api/v1/training/control/{item['job_id']}", {"action": "cancel"})
        runs = admin_api.get(f"/api/v1/training/runs/{item['model']}").get_json()["runs"]
        assert runs[0]["trigger"] in ("schedule", "metric") and len(runs) == 2


def test_roll_ups_and_result_expiry(api, workers):
    from cortex_tasks.runtime.maintenance.housekeeping import expire_results, roll_up_metrics

    job_id = api.post("/api/v1/batch/submit", {"task": "embed", "inputs": ["one", "two"]}).get_json()["job_id"]
    assert wait_until_finished(api, job_id)["status"] == "succeeded"
    assert roll_up_metrics()["rows_written"] >= 1
    with session_scope() as session:
        row = session.execute(text("SELECT jobs, succeeded, items FROM job_metrics_hourly WHERE kind = 'batch' "
                                   "AND task = 'embed' ORDER BY hour DESC LIMIT 1")).one()
    assert row.jobs >= 1 and row.succeeded >= 1 and row.items >= 2

    with session_scope() as session:
        session.execute(text("UPDATE jobs SET finished_at = now() - interval '30 days' WHERE id = :id"), {"id": job_id})
    assert expire_results(batch_retention_days=7)["batches_expired"] >= 1
    assert api.get(f"/api/v1/batch/results/{job_id}?format=parquet").status_code == 409
    assert api.get(f"/api/v1/jobs/{job_id}").get_json()["result"]["expired"] is True


def test_staged_inputs_and_generated_images_expire_and_nothing_else_does():
    import base64
    import hashlib

    from cortex_tasks.core.images.intake import stage_inputs
    from cortex_tasks.core.media_files import generated_image_name
    from cortex_tasks.core.settings import get_settings
    from cortex_tasks.core.storage.object_store import get_object_store
    from cortex_tasks.runtime.maintenance.housekeeping import expire_media
    from tests.unit.test_image_and_audio_intake import png

    store = get_object_store()
    staged = stage_inputs([{"image": base64.b64encode(png(colour=(1, 2, 3))).decode()}], "default")[0]["image_object"]
    picture = png(colour=(4, 5, 6))
    generated = generated_image_name("default", hashlib.sha256(picture).hexdigest())
    store.put(generated, picture, "image/png")
    own = "tenants/default/images/holiday.png"  # the tenant's own object, named as an image_ref: never expires
    store.put(own, picture, "image/png")
    settings = get_settings()
    # The shipped retention (a week, a month) keeps what was just written.
    assert expire_media(settings.staged_media_retention_days, settings.generated_media_retention_days) == {
        "staged_deleted": 0, "generated_deleted": 0}
    assert store.exists(staged) and store.exists(generated)
    time.sleep(1.5)
    one_second = 1 / 86400
    deleted = expire_media(one_second, one_second)
    assert deleted["staged_deleted"] >= 1 and deleted["generated_deleted"] >= 1
    assert not store.exists(staged) and not store.exists(generated)
    assert store.exists(own)
    store.delete(own)


def test_the_stale_job_sweep_and_record_expiry(api, monkeypatch):
    """The sweep's statements on rows set up as a lost message, a dead trainer and a failed job's run
    leave them: past its deadline a job fails; a trainer silent past its limit is re-enqueued; a failed
    job's run fails with the job's error; records past their retention go."""
    from cortex_tasks.core.jobs.store import NewJob, create_job, get_job
    from cortex_tasks.core.training.runs import get_run
    from cortex_tasks.runtime.maintenance import service
    from cortex_tasks.runtime.training import recovery

    def job(kind: str, **values) -> str:
        return create_job(NewJob(owner="sweep-test", kind=kind, task="classifier", priority=3, **values))[0].id

    lost, expired = job("predict", deadline_seconds=-60), job("predict")
    dead, orphan = job("training"), job("training")
    with session_scope() as session:
        session.execute(text("UPDATE jobs SET status = 'succeeded', finished_at = now() - interval '40 days' "
                             "WHERE id = :id"), {"id": expired})
        session.execute(text("UPDATE jobs SET status = 'running' WHERE id = :id"), {"id": dead})
        session.execute(text("UPDATE jobs SET status = 'failed', error = '{\"code\": \"redelivery_limit\"}' "
                             "WHERE id = :id"), {"id": orphan})
        for run_id in (dead, orphan):
            session.execute(text("INSERT INTO training_runs (id, owner, model_name, kind, phase, updated_at, tenant) "
                                 "VALUES (:id, 'sweep-test', :id, 'classifier', 'training', "
                                 "now() - interval '1 day', 'default')"), {"id": run_id})
    sent: list[tuple[str, int, str]] = []
    monkeypatch.setattr(recovery, "send_training",
                        lambda job_id, priority, tenant: sent.append((job_id, priority, tenant)))

    assert service.fail_stale_jobs() >= 1
    assert get_job(lost).status == "failed" and get_job(lost).error["code"] == "stale_job"
    assert recovery.requeue_dead_training()["training_requeued"] >= 1
    # Sent again in its job's tenant: the sweep itself acts for every tenant.
    assert (dead, 3, "default") in sent and get_job(dead).status == "queued" and get_run(dead).phase == "queued"
    assert recovery.fail_orphaned_runs() >= 1
    run = get_run(orphan)
    assert (run.phase, run.error, run.finished_at is not None) == ("failed", {"code": "redelivery_limit"}, True)
    assert get_run(dead).phase == "queued"  # its job is queued, not failed
    assert service.delete_expired_jobs(30) >= 1
    assert get_job(expired) is None and get_job(lost) is not None
