"""The usage ledger's worker seconds of the jobs that do not go through the prediction path: a training
run, a document indexing and a vector upsert that embeds texts, with the session's real workers, each
found in GET /api/v1/usage under its own tenant, key and model, and recorded once however often its
message is delivered. Each test acts for a tenant of its own, so the ledger it reads holds only its jobs."""
from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import select

from cortex_tasks import app as celery_app
from cortex_tasks.core.auth.keys import create_key
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import DocumentIndexMessage, VectorUpsertMessage
from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.outcomes import REPLY_CHANNEL_PREFIX
from cortex_tasks.core.jobs.running import JobInputError, run_job
from cortex_tasks.core.queues import GPU
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import WorkerUsage
from cortex_tasks.core.tenancy import tenant_scope
from cortex_tasks.core.usage.worker_time import ModelClock, charge_model_call
from tests.integration.conftest import Api
from tests.integration.test_training_jobs import topic_rows
from tests.support.tenants import new_tenant
from tests.support.waiting import finished, wait_for

EMBEDDER = "all-MiniLM-L6-v2"


class Tenant:
    """A new tenant with a model_admin and an inference_user key (and their ids, as the ledger names them)."""

    def __init__(self, app: Any) -> None:
        self.id = new_tenant("ledger")
        issued = {role: create_key(role, name=f"ledger {role}", tier="unlimited", tenant=self.id)
                  for role in ("model_admin", "inference_user")}
        self.key_ids = {role: key.key_id for role, key in issued.items()}
        self.apis = {role: Api(app.test_client(), key.key) for role, key in issued.items()}

    def ledger(self, role: str = "model_admin") -> dict[str, dict[str, Any]]:
        """GET /api/v1/usage as `role`: its rows by model."""
        answer = self.apis[role].get("/api/v1/usage")
        assert answer.status_code == 200, answer.get_json()
        return {item["model"]: item for item in answer.get_json()["items"]}

    def rows_of(self, job_id: str) -> list[WorkerUsage]:
        with tenant_scope(self.id), session_scope() as session:
            rows = list(session.scalars(select(WorkerUsage).where(WorkerUsage.job_id == job_id).order_by(WorkerUsage.id)))
            session.expunge_all()
        return rows


@pytest.fixture()
def tenant(app, workers) -> Tenant:
    return Tenant(app)


def training_status(api: Api, job_id: str, predicate, what: str, timeout: float = 240) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = api.get(f"/api/v1/training/status/{job_id}").get_json()
        if predicate(body):
            return body
        assert body["status"] not in ("failed", "succeeded", "cancelled"), f"ended waiting for {what}: {body}"
        return None

    return wait_for(reached, timeout, what, interval=0.2)


def deliver_again(task: str, message: Any) -> dict[str, Any]:
    """Send a job's message once more, as a redelivery would, and return the outcome the worker replies."""
    channel = f"{REPLY_CHANNEL_PREFIX}ledger-{uuid.uuid4().hex[:8]}"
    subscriber = redis.Redis.from_url(get_settings().redis_url).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(channel)
    try:
        celery_app.send_task(task, queue=GPU, kwargs=message.model_copy(update={"reply_to": channel}).to_kwargs())
        reply = wait_for(lambda: subscriber.get_message(timeout=1), 120, "the worker's reply")
    finally:
        subscriber.close()
    return orjson.loads(reply["data"])["outcomes"][message.job_id]


def test_a_training_run_is_charged_its_training_workers_seconds(tenant):
    name = f"ledger-topics-{uuid.uuid4().hex[:6]}"
    rows = topic_rows(per_label=12)
    submitted = tenant.apis["model_admin"].post("/api/v1/training/submit", {
        "kind": "classifier", "model": name, "dataset": {"rows": rows}, "params": {"epochs": 5}})
    assert submitted.status_code == 202, submitted.get_json()
    job_id = submitted.get_json()["job_id"]
    training_status(tenant.apis["model_admin"], job_id, lambda body: body["status"] == "succeeded", "success")

    item = tenant.ledger()[name]
    assert (item["tenant"], item["key_id"]) == (tenant.id, tenant.key_ids["model_admin"])
    assert item["worker_jobs"] == 1 and item["worker_items"] == len(rows) and item["worker_seconds"] > 0
    assert item["openai_calls"] == 0
    [row] = tenant.rows_of(job_id)
    assert (row.task, row.worker_kind, row.owner) == ("training.classifier", "training", tenant.key_ids["model_admin"])
    with tenant_scope(tenant.id):
        job = store.get_job(job_id)
    # The run's stretch on the worker lies within the job's start and finish as the database recorded them.
    assert row.worker_seconds <= (job.finished_at - job.started_at).total_seconds()
    # The key that trained sees it too; another key of the tenant, which spent nothing, sees nothing.
    assert name not in tenant.ledger("inference_user")


def test_each_stretch_of_a_paused_and_resumed_run_is_charged_once(tenant):
    admin = tenant.apis["model_admin"]
    name = f"ledger-pausable-{uuid.uuid4().hex[:6]}"
    rows = topic_rows(per_label=12)
    job_id = admin.post("/api/v1/training/submit", {
        "kind": "classifier", "model": name, "dataset": {"rows": rows},
        "params": {"epochs": 100_000, "auto_promote": False}}).get_json()["job_id"]
    training_status(admin, job_id, lambda body: body["phase"] == "training" and body["epoch"] >= 2, "epoch 2")
    assert admin.post(f"/api/v1/training/control/{job_id}", {"action": "pause"}).status_code == 202
    training_status(admin, job_id, lambda body: body["status"] == "paused", "the pause")
    [paused] = tenant.rows_of(job_id)
    assert (paused.task, paused.items) == ("training.classifier", len(rows)) and paused.worker_seconds > 0

    assert admin.post(f"/api/v1/training/control/{job_id}", {"action": "resume"}).status_code == 202
    training_status(admin, job_id, lambda body: body["status"] == "running" and body["phase"] == "training",
                    "the resumed run")
    assert admin.post(f"/api/v1/training/control/{job_id}", {"action": "cancel"}).status_code == 202
    training_status(admin, job_id, lambda body: body["status"] == "cancelled", "the cancel")
    charged = tenant.rows_of(job_id)
    assert len(charged) == 2 and charged[0].id == paused.id  # the paused stretch, then the cancelled one
    item = tenant.ledger()[name]
    assert item["worker_jobs"] == 2 and item["worker_items"] == 2 * len(rows)
    assert item["worker_seconds"] == pytest.approx(sum(row.worker_seconds for row in charged), abs=1e-5)


def test_a_document_indexing_is_charged_its_embeddings_once(tenant):
    user = tenant.apis["inference_user"]
    collection = f"ledger-{uuid.uuid4().hex[:8]}"
    documents = [{"id": "tides", "content": "Tides are caused by the gravity of the moon and the sun. "
                                            "Spring tides happen at new and full moon."},
                 {"id": "bees", "content": "Honey bees communicate with a waggle dance. The dance tells other "
                                           "bees the direction and distance of flowers. " * 6}]
    response = user.post("/api/v1/documents", {"collection": collection, "documents": documents, "wait": 60})
    result = finished(user, response)
    job_id = response.get_json()["job_id"]
    assert result["passages_written"] >= 2

    item = tenant.ledger("inference_user")[EMBEDDER]
    assert (item["tenant"], item["key_id"]) == (tenant.id, tenant.key_ids["inference_user"])
    assert item["worker_jobs"] == 1 and item["worker_items"] == result["passages_written"]
    assert item["worker_seconds"] > 0
    [row] = tenant.rows_of(job_id)
    assert (row.task, row.worker_kind, row.model) == ("documents.index", "gpu", EMBEDDER)

    # The same message delivered again is answered from the job's record: nothing is embedded or charged.
    again = deliver_again(task_names.DOCUMENTS_INDEX, DocumentIndexMessage(
        job_id=job_id, tenant=tenant.id, collection=collection, documents=documents,
        indexed_by=tenant.key_ids["inference_user"]))
    assert again["status"] == "succeeded"
    assert [saved.id for saved in tenant.rows_of(job_id)] == [row.id]
    assert tenant.ledger("inference_user")[EMBEDDER]["worker_jobs"] == 1


def test_a_vector_upsert_that_embeds_texts_is_charged_once(tenant):
    user = tenant.apis["inference_user"]
    collection = f"ledger-{uuid.uuid4().hex[:8]}"
    items = [{"id": "owl", "text": "An owl hunts at night."}, {"id": "oak", "text": "The oak lost its leaves."},
             {"id": "given", "vector": [0.0] * 383 + [1.0]}]
    response = user.post(f"/api/v1/vectors/{collection}", {"items": items, "wait": 60})
    body = finished(user, response)
    job_id = response.get_json()["job_id"]
    assert body["embedded"] == 2

    item = tenant.ledger("inference_user")[EMBEDDER]
    assert (item["tenant"], item["key_id"]) == (tenant.id, tenant.key_ids["inference_user"])
    # Only the texts were computed: an item given as a vector costs no model time.
    assert item["worker_jobs"] == 1 and item["worker_items"] == 2 and item["worker_seconds"] > 0
    [row] = tenant.rows_of(job_id)
    assert (row.task, row.worker_kind, row.model) == ("vectors.upsert", "gpu", EMBEDDER)
    again = deliver_again(task_names.VECTORS_UPSERT_ITEMS, VectorUpsertMessage(
        job_id=job_id, tenant=tenant.id, collection=collection, items=items,
        created_by=tenant.key_ids["inference_user"]))
    assert again["status"] == "succeeded"
    assert [saved.id for saved in tenant.rows_of(job_id)] == [row.id]

    # A vector search embeds its query but is not among the jobs charged (documented in docs/usage.md);
    # vectors-only upserts are answered by the gateway and cost no worker time either.
    found = user.post(f"/api/v1/vectors/{collection}/search", {"text": "a bird of prey", "k": 1, "wait": 30})
    assert found.status_code == 200, found.get_json()
    assert user.post(f"/api/v1/vectors/{collection}", {"items": [{"id": "v", "vector": [1.0] + [0.0] * 383}]}
                     ).status_code == 200
    assert tenant.ledger("inference_user")[EMBEDDER]["worker_jobs"] == 1


def test_a_job_that_fails_after_its_model_calls_is_charged_them_and_only_once(tenant):
    """run_job with a clock: the model time spent before a failure is charged with the failure, in the
    statement that records it; a second delivery of the finished job records nothing."""
    with tenant_scope(tenant.id):
        job, _ = store.create_job(store.NewJob(owner=tenant.key_ids["inference_user"], kind="vectors",
                                               task="vectors.upsert", total=3))

        def embeds_then_refuses() -> dict[str, Any]:
            charge_model_call(EMBEDDER, 3, 0.25)
            raise JobInputError("dimension_mismatch", "the collection holds 8-d vectors")

        outcome = run_job(job.id, embeds_then_refuses, ModelClock("vectors.upsert", GPU))
        assert outcome["status"] == "failed" and outcome["error"]["code"] == "dimension_mismatch"
        delivered_again = run_job(job.id, embeds_then_refuses, ModelClock("vectors.upsert", GPU))
        assert delivered_again["status"] == "failed"
        # A job without a clock records no time, even when what it runs charges model calls.
        plain, _ = store.create_job(store.NewJob(owner=tenant.key_ids["inference_user"], kind="vectors",
                                                 task="vectors.search", total=1))

        def searches() -> dict[str, Any]:
            charge_model_call(EMBEDDER, 1, 0.5)
            return {"results": []}

        assert run_job(plain.id, searches)["status"] == "succeeded"
    [row] = tenant.rows_of(job.id)
    assert (row.items, row.worker_seconds, row.model, row.owner) == (3, 0.25, EMBEDDER, tenant.key_ids["inference_user"])
    assert tenant.rows_of(plain.id) == []
    assert tenant.ledger()[EMBEDDER]["worker_seconds"] == pytest.approx(0.25)
