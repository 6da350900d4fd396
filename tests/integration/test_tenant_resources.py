"""Tenants keep their vector collections, documents and registered models apart, through the real app, the
real stores and real workers: the same names in two tenants are two resources; another tenant's resource
answers 404 on every route that names it (never 403: its existence is not revealed) and never appears in
a list; deleting needs model_admin; per-model key limits are a 403 that says why. Also the leak the issue
reports: a question asked by one tenant is never answered from another tenant's documents."""
from __future__ import annotations

import io
import json
import time
import uuid

import numpy as np
import pytest

from cortex_tasks.core.auth.keys import create_key
from cortex_tasks.core.cache.service import keys_for
from cortex_tasks.core.catalogue import find_model
from cortex_tasks.core.registry import service as registry
from cortex_tasks.core.tenancy import tenant_scope
from tests.integration.conftest import Api
from tests.support.tenants import new_tenant, tenant_keys
from tests.support.waiting import finished

FALCON = "Project Falcon budget is 4.2 million dollars."


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"




class Tenant:
    """A tenant with one key per role."""

    def __init__(self, app, prefix: str) -> None:
        self.id = new_tenant(prefix)
        keys = tenant_keys(self.id)
        client = app.test_client()
        self.reader = Api(client, keys["reader"])
        self.user = Api(client, keys["inference_user"])
        self.admin = Api(client, keys["model_admin"])


@pytest.fixture(scope="module")
def team_a(app) -> Tenant:
    return Tenant(app, "team-a")


@pytest.fixture(scope="module")
def team_b(app) -> Tenant:
    return Tenant(app, "team-b")


def assert_not_found(response, code: str) -> None:
    assert response.status_code == 404, (response.status_code, response.get_json())
    assert response.get_json()["error"]["code"] == code


# --- vector collections ---------------------------------------------------------------------------------


def test_the_same_collection_name_in_two_tenants_is_two_collections(team_a, team_b):
    for team, vector in ((team_a, [1.0, 0.0, 0.0]), (team_b, [0.0, 1.0, 0.0])):
        created = team.user.client.put("/api/v1/vectors/products", json={"dimension": 3, "model": None},
                                       headers=team.user.headers())
        assert created.status_code == 201, created.get_json()  # new for each: the other's is not seen
        upserted = team.user.post("/api/v1/vectors/products", {"items": [{"id": f"{team.id}-1", "vector": vector}]})
        assert upserted.status_code == 200, upserted.get_json()

    for team, other in ((team_a, team_b), (team_b, team_a)):
        found = team.user.post("/api/v1/vectors/products/search", {"vector": [1.0, 1.0, 0.0], "k": 10}).get_json()
        assert [hit["id"] for hit in found["results"]] == [f"{team.id}-1"]
        listed = team.reader.get("/api/v1/vectors").get_json()["collections"]
        assert [item["name"] for item in listed] == ["products"]  # its own only, once
        assert team.reader.get("/api/v1/vectors/products/count").get_json()["count"] == 1

    # An upsert of an id the other tenant uses writes this tenant's item only.
    team_b.user.post("/api/v1/vectors/products", {"items": [{"id": f"{team_a.id}-1", "vector": [0.0, 0.0, 1.0]}]})
    assert team_b.reader.get("/api/v1/vectors/products/count").get_json()["count"] == 2
    assert team_a.reader.get("/api/v1/vectors/products/count").get_json()["count"] == 1

    # Deleting needs model_admin; an admin deletes in its own tenant only.
    for caller in (team_b.reader, team_b.user):
        for response in (caller.post("/api/v1/vectors/products/delete", {"ids": [f"{team_a.id}-1"]}),
                         caller.delete("/api/v1/vectors/products")):
            assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    deleted = team_b.admin.post("/api/v1/vectors/products/delete", {"ids": [f"{team_a.id}-1"]})
    assert deleted.status_code == 200 and deleted.get_json()["deleted"] == 1
    assert team_b.admin.delete("/api/v1/vectors/products").status_code == 200
    assert team_a.reader.get("/api/v1/vectors/products/count").get_json()["count"] == 1
    assert_not_found(team_b.reader.get("/api/v1/vectors/products"), "collection_not_found")


def test_another_tenants_collection_answers_404_on_every_route(team_a, team_b):
    name = unique("secret")
    assert team_a.user.client.put(f"/api/v1/vectors/{name}", json={"dimension": 3, "model": None},
                                  headers=team_a.user.headers()).status_code == 201
    team_a.user.post(f"/api/v1/vectors/{name}", {"items": [{"id": "x", "vector": [1.0, 2.0, 3.0]}]})
    base = f"/api/v1/vectors/{name}"
    for response in (
        team_b.admin.get(base),
        team_b.admin.get(f"{base}/count"),
        team_b.admin.post(f"{base}/search", {"vector": [1.0, 2.0, 3.0]}),
        team_b.admin.post(f"{base}/search", {"text": "anything"}),  # refused before a job is queued
        team_b.admin.post(f"{base}/delete", {"ids": ["x"]}),
        team_b.admin.delete(base),
        team_b.admin.post(f"{base}/index", {}),
    ):
        assert_not_found(response, "collection_not_found")
    assert name not in [item["name"] for item in team_b.admin.get("/api/v1/vectors").get_json()["collections"]]
    assert team_a.reader.get(f"{base}/count").get_json()["count"] == 1  # untouched


def test_a_text_search_embeds_within_the_callers_tenant(team_a, team_b, workers):
    """Texts go to a worker: the message carries the tenant, and the worker searches that tenant's collection."""
    name = unique("notes")
    for team, text in ((team_a, "The quarterly budget of the falcon project."),
                       (team_b, "A recipe for lemon cake with almonds.")):
        finished(team.user, team.user.post(f"/api/v1/vectors/{name}", {"items": [{"id": team.id, "text": text}],
                                                                      "wait": 60}))
    for team in (team_a, team_b):
        result = finished(team.user, team.user.post(f"/api/v1/vectors/{name}/search",
                                                    {"text": "budget", "k": 5, "wait": 30}))
        assert [hit["id"] for hit in result["results"]] == [team.id]


# --- documents and QA ------------------------------------------------------------------------------------


def test_qa_never_answers_from_another_tenants_documents(team_a, team_b, workers):
    """The issue's leak: team B asked and got team A's "Project Falcon budget is 4.2 million dollars"."""
    indexed = finished(team_a.user, team_a.user.post("/api/v1/documents", {
        "documents": [{"id": "falcon", "content": FALCON}], "wait": 60}))
    assert indexed["documents"][0]["id"] == "falcon"
    question = {"question": "What is the Project Falcon budget?", "wait": 60}

    own = finished(team_a.user, team_a.user.post("/api/v1/qa", {**question, "generate": False}))
    assert own["sources"][0]["document_id"] == "falcon" and "4.2 million" in own["answer"]

    for generate in (False, True):
        answer = finished(team_b.user, team_b.user.post("/api/v1/qa", {**question, "generate": generate}))
        assert answer["sources"] == [] and answer["extractive_answer"] is None, answer
        assert "4.2" not in json.dumps(answer) and "Falcon budget is" not in answer["answer"]

    listed = team_b.reader.get("/api/v1/documents").get_json()
    assert listed["documents"] == [] and listed["total"] == 0 and listed["collections"] == {}
    assert [item["id"] for item in team_a.reader.get("/api/v1/documents").get_json()["documents"]] == ["falcon"]

    # Deleting: another tenant's document is a 404, not a 403; within the tenant it needs model_admin.
    assert_not_found(team_b.admin.delete("/api/v1/documents/falcon"), "document_not_found")
    refused = team_a.user.delete("/api/v1/documents/falcon")
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
    assert team_a.admin.delete("/api/v1/documents/falcon").get_json()["passages_deleted"] >= 1


# --- registered models -----------------------------------------------------------------------------------


def head_artifact(label_index: int) -> bytes:
    """A classifier head on MiniLM embeddings (the `cortex-embedding-head` framework) that answers one
    fixed label whatever the text: two tenants' heads of the same name are told apart by their answers."""
    labels = ["alpha", "beta"]
    bias = np.full(len(labels), -5.0)
    bias[label_index] = 5.0
    zeros = np.zeros((len(labels), 384))
    buffer = io.BytesIO()
    np.savez(buffer, softmax_weights=zeros, softmax_bias=bias, ovr_weights=zeros, ovr_bias=bias,
             labels=np.array(json.dumps(labels)), metadata=np.array(json.dumps({"embedder": "all-MiniLM-L6-v2"})))
    return buffer.getvalue()


def register_head(tenant: str, name: str, label_index: int) -> registry.VersionRecord:
    with tenant_scope(tenant):
        return registry.register_version(name, task="classify", framework="cortex-embedding-head",
                                         artifact=head_artifact(label_index), artifact_filename="head.npz",
                                         created_by="test")


@pytest.fixture(scope="module")
def same_named_models(team_a, team_b) -> str:
    name = unique("sentiment-custom")
    first, second = register_head(team_a.id, name, 0), register_head(team_b.id, name, 1)
    assert first.version == second.version == 1  # numbered per tenant
    # Artifacts are kept per tenant: the same name and version cannot overwrite each other.
    assert first.artifact_uri != second.artifact_uri
    assert f"/{team_a.id}/{name}/1/" in first.artifact_uri and f"/{team_b.id}/{name}/1/" in second.artifact_uri
    return name


def test_name_at_version_is_each_tenants_own_model(team_a, team_b, same_named_models, workers):
    name = same_named_models
    text = "The same words, asked by both teams."
    for _ in range(2):  # the second round is answered from the cache: still each tenant's own answer
        for team, label in ((team_a, "alpha"), (team_b, "beta")):
            body = team.user.predict("classify", [text], model=f"{name}@1")
            assert body["outputs"][0]["label"] == label, (team.id, body)
            assert body["model"]["name"] == name  # the plain name: the qualified one is internal


def test_cache_keys_hold_the_tenant_for_tenant_models_only(team_a, team_b, same_named_models):
    name = same_named_models
    with tenant_scope(team_a.id):
        entry_a = find_model(f"{name}@1")
        bundled_a = keys_for("embed", "all-MiniLM-L6-v2", "1", {}, ["hello"])
    with tenant_scope(team_b.id):
        entry_b = find_model(f"{name}@1")
        bundled_b = keys_for("embed", "all-MiniLM-L6-v2", "1", {}, ["hello"])
        # A qualified reference of another tenant names nothing here.
        assert find_model(entry_a.name) is None
    assert entry_a.name == f"{team_a.id}/{name}@1" and entry_b.name == f"{team_b.id}/{name}@1"
    assert keys_for("classify", entry_a.name, "1", {}, ["hello"]) != keys_for("classify", entry_b.name, "1", {},
                                                                              ["hello"])
    assert bundled_a == bundled_b  # bundled models' answers are shared


def test_another_tenants_model_answers_404_and_is_never_listed(team_a, team_b, app):
    only_a = unique("only-a")
    register_head(team_a.id, only_a, 0)
    base = f"/api/v1/models/{only_a}"
    for response in (team_b.admin.get(base), team_b.admin.get(f"{base}/versions/1"),
                     team_b.admin.get(f"{base}/versions/1/card"),
                     team_b.admin.post(f"{base}/versions/1/promote", {"stage": "production"}),
                     team_b.admin.post(f"{base}/rollback")):
        assert_not_found(response, "model_not_found")
    assert_not_found(team_b.admin.get(f"{base}/route"), "not_deployed")
    predicted = team_b.user.post("/api/v1/predict", {"task": "classify", "model": f"{only_a}@1", "inputs": ["x"]})
    assert_not_found(predicted, "unknown_model")
    # The qualified form is internal: not a model name a request may give (refused for every tenant alike).
    qualified = team_b.user.post("/api/v1/predict", {"task": "classify", "model": f"{team_a.id}/{only_a}@1",
                                                     "inputs": ["x"]})
    assert qualified.status_code == 422 and qualified.get_json()["error"]["code"] == "invalid_request"

    listed_b = {item["name"]: item["source"] for item in team_b.reader.get("/api/v1/models").get_json()["models"]}
    assert only_a not in listed_b and listed_b["vader"] == "catalogue"  # bundled models: everyone's
    listed_a = {item["name"]: item["source"] for item in team_a.reader.get("/api/v1/models").get_json()["models"]}
    assert listed_a[only_a] == "registry"


def test_promotion_stays_within_the_tenant(team_a, team_b, same_named_models, workers):
    name = same_named_models
    promoted = team_a.admin.post(f"/api/v1/models/{name}/versions/1/promote", {"stage": "production", "wait": 60})
    assert promoted.status_code == 200, promoted.get_json()
    shown_a = team_a.reader.get(f"/api/v1/models/{name}").get_json()
    shown_b = team_b.reader.get(f"/api/v1/models/{name}").get_json()
    assert shown_a["serving"]["production"]["version"] == 1
    assert shown_b["serving"]["production"] is None
    # A bare name routes to the caller's tenant's production version, or to nothing.
    assert team_a.user.predict("classify", ["routed"], model=name)["outputs"][0]["label"] == "alpha"
    assert_not_found(team_b.user.post("/api/v1/predict", {"task": "classify", "model": name, "inputs": ["x"]}),
                     "unknown_model")


def test_bundled_models_are_read_only(team_b):
    for response in (team_b.admin.post("/api/v1/models/vader/versions/1/promote", {"stage": "production"}),
                     team_b.admin.post("/api/v1/models/vader/rollback")):
        assert response.status_code == 403, response.get_json()
        assert response.get_json()["error"]["code"] == "read_only_model"


def test_keys_limited_to_models_or_tasks_are_refused_with_the_reason(team_a, same_named_models):
    client = team_a.admin.client
    deployer = Api(client, create_key("model_admin", tenant=team_a.id, tier="unlimited",
                                      models=["all-MiniLM-L6-v2"]).key)
    refused = deployer.post(f"/api/v1/models/{same_named_models}/rollback")
    assert refused.status_code == 403
    error = refused.get_json()["error"]
    assert error["code"] == "model_not_allowed" and error["details"]["allowed_models"] == ["all-MiniLM-L6-v2"]

    embedder = Api(client, create_key("inference_user", tenant=team_a.id, tier="unlimited", tasks=["embed"]).key)
    refused = embedder.post("/api/v1/predict", {"task": "sentiment", "inputs": ["great"]})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "task_not_allowed"
    refused = embedder.post("/api/v1/predict", {"task": "classify", "model": f"{same_named_models}@1",
                                                "inputs": ["x"]})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "task_not_allowed"

    limited = Api(client, create_key("inference_user", tenant=team_a.id, tier="unlimited", models=["vader"]).key)
    refused = limited.post("/api/v1/documents", {"documents": [{"content": "x"}]})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "model_not_allowed"
    refused = limited.post(f"/api/v1/vectors/{unique('c')}", {"items": [{"id": "1", "text": "words"}]})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "model_not_allowed"


def test_cache_warming_warms_a_tenants_model_for_that_tenant_only(team_a, team_b, same_named_models, workers):
    from sqlalchemy import select

    from cortex_tasks.core.cache.service import MISSING, get_cache
    from cortex_tasks.core.cache.warming import QUERY_COUNTER, WARMING_OWNER, warm_cache
    from cortex_tasks.core.storage.db import session_scope
    from cortex_tasks.core.storage.tables import Job
    from cortex_tasks.core.tenancy import all_tenants

    name, text = same_named_models, f"asked often by team a {uuid.uuid4()}"
    for _ in range(3):
        assert team_a.user.predict("classify", [text], model=f"{name}@1")["outputs"][0]["label"] == "alpha"
    QUERY_COUNTER.flush()
    cache = get_cache()
    cache.l2.clear()  # as if the answers had expired
    cache.l1.clear()
    report = warm_cache(min_frequency=3, popular_models=50)
    assert f"classify:{team_a.id}/{name}@1" in report["models"]

    with all_tenants(), session_scope() as session:
        warming = set(session.scalars(select(Job.tenant).where(Job.owner == WARMING_OWNER,
                                                               Job.model == f"{team_a.id}/{name}@1")))
    assert warming == {team_a.id}  # the job, and so the message and the model's lookup, are team a's
    ours, theirs = (keys_for("classify", f"{team.id}/{name}@1", "1", {}, [text]) for team in (team_a, team_b))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and cache.l2.get_many(ours)[0] is MISSING:
        time.sleep(0.2)
    assert cache.l2.get_many(ours)[0]["label"] == "alpha"
    assert cache.l2.get_many(theirs)[0] is MISSING  # team b's model of that name was not warmed with it
    assert team_b.user.predict("classify", [text], model=f"{name}@1")["outputs"][0]["label"] == "beta"
