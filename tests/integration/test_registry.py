"""The model registry against real PostgreSQL, Redis and workers: numbered versions and pins, model cards,
promote -> canary split (sticky per key) -> production (blue-green, readiness checked by a worker) ->
rollback, tampered artifacts refused, promotions followed by other processes without a restart."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from cortex_tasks.core.registry import artifacts, routing, service, stats
from cortex_tasks.core.storage.object_store import ArtifactIntegrityError
from tests.support.processes import REPO_ROOT

# Calls this module makes to the stores directly act for the default tenant, as the suite's keys do.
pytestmark = pytest.mark.usefixtures("in_default_tenant")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register(name: str, payload: bytes, accuracy: float = 0.9) -> service.VersionRecord:
    return service.register_version(
        name, task="classify", framework="test-pickle", artifact=payload,
        metrics={"accuracy": accuracy, "f1_macro": accuracy - 0.02}, parameters={"C": 1.0, "epochs": 3},
        data_fingerprint=service.fingerprint_rows([{"text": "a", "label": "x"}]), created_by="trainer",
        description="A test classifier head.")


def promote_via_service(name: str, version: int, stage: str, traffic: float | None = None) -> None:
    pending = service.request_promotion(name, version, stage, traffic, actor="test")
    service.complete_deployment(pending["id"])


def test_versions_are_numbered_monotonically_and_can_be_pinned():
    name = unique("numbers")
    assert [register(name, f"v{i}".encode()).version for i in (1, 2)] == [1, 2]
    assert service.reserve_version(name, "classify") == 3  # taken by a registration that then failed
    assert register(name, b"v4").version == 4  # numbers are never reused
    assert service.resolve(f"{name}@2").artifact_sha256 == service.get_version(name, 2).artifact_sha256
    assert service.resolve(f"{name}@latest").version == 4
    with pytest.raises(service.VersionNotFound):
        service.resolve(f"{name}@3")
    with pytest.raises(service.RegistryConflict) as caught:
        service.resolve(name)  # nothing deployed: a bare name has nothing to route to
    assert caught.value.code == "not_deployed"
    for bad in (f"{name}@beta", "../etc@1", "a/b@1", ""):
        with pytest.raises(service.RegistryError):
            service.resolve(bad)
    with pytest.raises(service.RegistryConflict):
        service.register_version(name, task="ner", framework="x", artifact=b"x")  # one task per model


def test_model_views_show_versions_metrics_and_card(admin_api, keys):
    name = unique("views")
    first = register(name, b"weights one", accuracy=0.81)
    register(name, b"weights two", accuracy=0.86)
    reader = admin_api.as_key(keys["reader"])
    listed = reader.get("/api/v1/models").get_json()["models"]
    assert any(item["name"] == name and item["latest_version"] == 2 for item in listed)
    assert any(item["name"] == "all-MiniLM-L6-v2" and item["source"] == "catalogue" for item in listed)
    shown = reader.get(f"/api/v1/models/{name}").get_json()
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    version = shown["versions"][0]
    assert version["stage"] == "staging" and version["metrics"]["accuracy"] == 0.81
    assert version["parameters"] == {"C": 1.0, "epochs": 3} and version["created_by"] == "trainer"
    assert version["data_fingerprint"].startswith("sha256:") and version["artifact"]["sha256"] == first.artifact_sha256
    card = reader.get(version["card_url"])
    assert card.status_code == 200 and card.mimetype == "text/markdown"
    text = card.get_data(as_text=True)
    assert f"# Model card: {name} version 1" in text and "| accuracy | 0.81 |" in text
    assert first.artifact_sha256 in text and "A test classifier head." in text
    assert reader.get("/api/v1/models/all-MiniLM-L6-v2").get_json()["source"] == "catalogue"
    missing = reader.get(f"/api/v1/models/{unique('nope')}")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "model_not_found"
    # A version number PostgreSQL's integer cannot hold is a version that does not exist (schemathesis
    # found these answering 500).
    for path in (f"/api/v1/models/{name}/versions/{2**31}", f"/api/v1/models/{name}/versions/{10**20}/card"):
        too_big = reader.get(path)
        assert too_big.status_code == 404 and too_big.get_json()["error"]["code"] == "version_not_found"
    promoted = admin_api.post(f"/api/v1/models/{name}/versions/{2**40}/promote", {"stage": "canary"})
    assert promoted.status_code == 404, promoted.get_json()


def test_promote_canary_split_production_and_rollback(admin_api, workers):
    from cortex_tasks.core.auth.keys import create_key

    name = unique("deploy")
    register(name, b"version one weights")
    register(name, b"version two weights", accuracy=0.93)

    promoted = admin_api.post(f"/api/v1/models/{name}/versions/1/promote", {"stage": "production", "wait": 30})
    assert promoted.status_code == 200, promoted.get_json()
    assert promoted.get_json()["stage"] == "production" and promoted.get_json()["readiness"]["artifact_verified"]

    canary = admin_api.post(f"/api/v1/models/{name}/versions/2/promote", {"stage": "canary", "traffic": 20, "wait": 30})
    assert canary.status_code == 200, canary.get_json()
    assert (canary.get_json()["stage"], canary.get_json()["traffic_percent"]) == ("canary", 20.0)

    # The split: ~20% of callers get the canary, each caller always the same version.
    cache = routing.ServingCache()
    choices = {f"caller-{i}": routing.choose_version(name, f"caller-{i}", cache).version for i in range(3000)}
    share = Counter(choices.values())[2] / len(choices)
    assert 0.17 <= share <= 0.23, share
    assert all(routing.choose_version(name, caller, cache).version == version
               for caller, version in list(choices.items())[:200])
    assert routing.routed_reference(name, "caller-7") == f"{name}@{choices['caller-7']}"
    assert routing.routed_reference(f"{name}@1", "caller-7") == f"{name}@1"  # a pin is never rerouted
    assert routing.routed_reference("all-MiniLM-L6-v2", "caller-7") == "all-MiniLM-L6-v2"

    # Sticky per API key over HTTP, and responses say which version answers.
    seen = Counter()
    for _ in range(60):
        caller = admin_api.as_key(create_key("reader").key)
        first, again = (caller.get(f"/api/v1/models/{name}/route").get_json() for _ in range(2))
        assert first["version"] == again["version"] and first["stage"] == again["stage"]
        seen[first["version"]] += 1
    assert set(seen) == {1, 2} and seen[1] > seen[2]

    # Per-version figures side by side (recorded here as a serving process would record them).
    for _ in range(8):
        stats.record(name, 1, 0.020)
    stats.record(name, 2, 0.030)
    stats.record(name, 2, 0.300, ok=False)
    shown = admin_api.get(f"/api/v1/models/{name}").get_json()
    production, canary_view = shown["serving"]["production"], shown["serving"]["canary"]
    assert (production["version"], canary_view["version"], canary_view["traffic_percent"]) == (1, 2, 20.0)
    assert production["stats"]["request_count"] == 8 and production["stats"]["error_rate"] == 0.0
    assert canary_view["stats"]["request_count"] == 2 and canary_view["stats"]["error_rate"] == 0.5
    assert "## Serving" in canary_view["card"]
    metrics = admin_api.client.get("/metrics").get_data(as_text=True)
    series = [line for line in metrics.splitlines() if name in line]
    # Labelled by tenant too: two tenants' versions of a model of the same name are different models.
    one, two = (f'{{model="{name}",tenant="default",version="{version}"}}' for version in (1, 2))
    assert f"cortex_model_version_requests_total{two} 2.0" in series, series
    assert f"cortex_model_version_errors_total{two} 1.0" in series, series
    assert f"cortex_model_version_latency_seconds_count{one} 8.0" in series, series

    # Canary to production (blue-green): v1 is archived, but stays available for a rollback.
    switched = admin_api.post(f"/api/v1/models/{name}/versions/2/promote", {"stage": "production", "wait": 30})
    assert switched.status_code == 200, switched.get_json()
    assert switched.get_json()["previous_production"] == 1
    shown = admin_api.get(f"/api/v1/models/{name}").get_json()
    assert shown["serving"]["production"]["version"] == 2 and shown["serving"]["canary"] is None
    assert {v["version"]: v["stage"] for v in shown["versions"]} == {1: "archived", 2: "production"}
    assert all(routing.choose_version(name, f"caller-{i}").version == 2 for i in range(50))

    rolled = admin_api.post(f"/api/v1/models/{name}/rollback")
    assert rolled.status_code == 200, rolled.get_json()
    assert (rolled.get_json()["version"], rolled.get_json()["rolled_back_from"]) == (1, 2)
    shown = admin_api.get(f"/api/v1/models/{name}").get_json()
    assert {v["version"]: v["stage"] for v in shown["versions"]} == {1: "production", 2: "archived"}
    assert [d["action"] for d in shown["deployments"]] == ["rollback", "promote_production", "promote_canary",
                                                          "promote_production"]
    assert all(d["status"] == "succeeded" for d in shown["deployments"])


def test_promotion_switches_only_after_readiness_and_a_tampered_artifact_is_refused(admin_api, workers):
    name = unique("bluegreen")
    register(name, b"good weights v1")
    second = register(name, b"good weights v2")
    promote_via_service(name, 1, "production")

    # Two-phase: a pending deployment changes nothing for callers until it completes.
    pending = service.request_promotion(name, 2, "production", actor="test")
    assert service.serving(name).production == 1
    duplicate = admin_api.post(f"/api/v1/models/{name}/versions/2/promote", {"stage": "production"})
    assert duplicate.status_code == 409 and duplicate.get_json()["error"]["code"] == "deployment_in_progress"
    service.fail_deployment(pending["id"], {"code": "test", "message": "abandoned by the test"})

    # Someone replaces v2's weights in storage: the worker's readiness check refuses it, v1 keeps serving.
    path = Path(unquote(urlparse(second.artifact_uri).path))
    path.write_bytes(b"malicious weights")
    refused = admin_api.post(f"/api/v1/models/{name}/versions/2/promote", {"stage": "production", "wait": 30})
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["error"]["code"] == "artifact_checksum_mismatch"
    shown = admin_api.get(f"/api/v1/models/{name}").get_json()
    assert shown["serving"]["production"]["version"] == 1
    failed = shown["deployments"][0]
    assert (failed["version"], failed["status"], failed["error"]["code"]) == (2, "failed", "artifact_checksum_mismatch")
    with pytest.raises(ArtifactIntegrityError):
        artifacts.fetch_artifact(second)


def test_promotions_reach_other_processes_without_a_restart():
    """Another process (think: a worker) with a long-lived routing cache follows a promotion at once,
    through the registry generation in Redis."""
    name = unique("follow")
    register(name, b"one")
    register(name, b"two")
    promote_via_service(name, 1, "production")
    script = (
        "import sys\n"
        "from cortex_tasks.core.registry import routing\n"
        "from cortex_tasks.core.tenancy import tenant_scope\n"
        "cache = routing.ServingCache(ttl=3600, check_every=0)\n"
        "for line in sys.stdin:\n"
        "    with tenant_scope('default'):\n"
        f"        print(routing.choose_version({name!r}, 'caller', cache).version, flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        def ask() -> int:
            child.stdin.write("?\n")
            child.stdin.flush()
            return int(child.stdout.readline())

        assert ask() == 1
        assert ask() == 1  # now cached for an hour...
        promote_via_service(name, 2, "production")
        assert ask() == 2  # ...yet the promotion is seen on the next request
        service.rollback(name)
        assert ask() == 1
    finally:
        child.stdin.close()
        child.wait(10)


def test_deploy_permissions(api, admin_api, keys):
    name = unique("perm")
    register(name, b"weights")
    reader = admin_api.as_key(keys["reader"])
    assert reader.get(f"/api/v1/models/{name}").status_code == 200
    for caller in (reader, api):
        assert caller.post(f"/api/v1/models/{name}/versions/1/promote", {"stage": "canary"}).status_code == 403
        assert caller.post(f"/api/v1/models/{name}/rollback").status_code == 403
    assert admin_api.as_key(None).get(f"/api/v1/models/{name}").status_code == 401


def test_bad_promotions_are_4xx(admin_api):
    name = unique("bad")
    register(name, b"one")
    register(name, b"two")
    promote_via_service(name, 1, "production")
    cases = [
        (f"/api/v1/models/{name}/versions/2/promote", {"stage": "production", "traffic": 10}, 422),
        (f"/api/v1/models/{name}/versions/2/promote", {"stage": "canary", "traffic": 150}, 422),
        (f"/api/v1/models/{name}/versions/2/promote", {"stage": "live"}, 422),
        (f"/api/v1/models/{name}/versions/2/promote", {"stage": "canary", "traffic": True}, 422),
        (f"/api/v1/models/{name}/versions/9/promote", {"stage": "canary"}, 404),
        (f"/api/v1/models/{unique('ghost')}/versions/1/promote", {"stage": "canary"}, 404),
        (f"/api/v1/models/{name}/versions/1/promote", {"stage": "production"}, 409),  # already production
        (f"/api/v1/models/{name}/versions/1/promote", {"stage": "archived"}, 409),  # production leaves by rollback
        (f"/api/v1/models/{name}/rollback", None, 409),  # no earlier production version
        (f"/api/v1/models/{name}/rollback", {"to_version": 1}, 409),
        (f"/api/v1/models/{name}/rollback", {"to_version": 7}, 404),
    ]
    for path, body, status in cases:
        response = admin_api.post(path, body) if body is not None else admin_api.post(path)
        assert response.status_code == status, (path, body, response.get_json())
        assert response.get_json()["error"]["code"]
    # Ending a canary: back to staging.
    promote_via_service(name, 2, "canary", 50)
    retired = admin_api.post(f"/api/v1/models/{name}/versions/2/promote", {"stage": "staging"})
    assert retired.status_code == 200 and retired.get_json()["stage"] == "staging"
    assert service.serving(name).canary is None


def test_directory_artifacts_are_packed_and_verified_on_fetch(tmp_path):
    folder = tmp_path / "hf-model"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "config.json").write_text('{"architectures": ["DistilBertForSequenceClassification"]}')
    (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    record = service.register_version(unique("folder"), task="classify", framework="transformers", artifact=folder)
    assert record.artifact_uri.endswith(".tar.gz")
    local = artifacts.fetch_artifact(record, cache_dir=tmp_path / "cache")
    assert (local / "config.json").read_text().startswith('{"architectures"')
    assert (local / "tokenizer" / "vocab.txt").exists()
    # Registering the same folder again gives the same bytes (a reproducible archive).
    again = service.register_version(record.model, task="classify", framework="transformers", artifact=folder)
    assert again.artifact_sha256 == record.artifact_sha256 and again.version == record.version + 1


def test_a_promotion_whose_message_was_lost_stops_blocking_the_model_at_the_next_sweep():
    """The activation job's message went with an emptied Redis: the lost-message sweep fails the job
    (message_lost), and the same sweep pass settles its pending deployment, so the model can be promoted
    again at once instead of after the pending deployment's 15-minute expiry."""
    from cortex_tasks.core.jobs import store
    from cortex_tasks.core.registry.records import PENDING_DEPLOYMENT_EXPIRY
    from cortex_tasks.runtime.maintenance import lost_messages
    from cortex_tasks.runtime.maintenance.service import settle_abandoned_deployments

    name = unique("lostpromotion")
    register(name, b"one")
    register(name, b"two")
    promote_via_service(name, 1, "production")
    job_id = store.new_job_id()
    pending = service.request_promotion(name, 2, "production", actor="test", job_id=job_id)
    job, _ = store.create_job(store.NewJob(owner="test", kind="deploy", task="registry.promote",
                                           model=f"{name}@2", total=1), job_id=job_id)
    with pytest.raises(service.RegistryConflict):  # blocked while its job may still run
        service.request_promotion(name, 2, "production", actor="test")
    settle_abandoned_deployments()  # a queued job: nothing to settle yet
    assert service.deployment(pending["id"])[1]["status"] == "pending"

    # The lost-message sweep's verdict on a job with no message left (lost_messages.py).
    lost = lost_messages.OpenJob(job.id, job.kind, job.status, job.attempts, 0, job.priority, job.tenant, None)
    assert lost_messages._take_up([lost], lost_messages.MESSAGE_LOST) == ([], [job.id])
    assert settle_abandoned_deployments() >= 1

    settled = service.deployment(pending["id"])[1]
    assert settled["status"] == "failed" and settled["error"]["code"] == "message_lost", settled
    assert PENDING_DEPLOYMENT_EXPIRY.total_seconds() == 15 * 60  # what it used to wait for, still the backstop
    again = service.request_promotion(name, 2, "production", actor="test")
    service.complete_deployment(again["id"])
    assert service.serving(name).production == 2



def test_a_promotion_that_could_not_be_queued_leaves_nothing_pending(admin_api, monkeypatch):
    """The broker refuses the activation job's message (Redis went away between the job's row and its
    message): the client gets the 503 to retry, and the pending deployment is failed at once, so the retry
    is not refused as `deployment_in_progress`."""
    import kombu.exceptions

    from cortex_tasks import app as celery_app

    name = unique("notqueued")
    register(name, b"one")

    def broker_away(*args, **kwargs):
        raise kombu.exceptions.OperationalError("Connection refused")

    monkeypatch.setattr(celery_app, "send_task", broker_away)
    refused = admin_api.post(f"/api/v1/models/{name}/versions/1/promote", {"stage": "production", "wait": 0})
    monkeypatch.undo()
    assert refused.status_code == 503, refused.get_json()

    deployments = admin_api.get(f"/api/v1/models/{name}").get_json()["deployments"]
    assert [(d["status"], d["error"]["code"]) for d in deployments] == [("failed", "not_queued")], deployments
    assert deployments[0]["job_id"]  # named before the job was to be queued
    retried = service.request_promotion(name, 1, "production", actor="test")  # not deployment_in_progress
    service.complete_deployment(retried["id"])
    assert service.serving(name).production == 1
