"""Tenants are kept apart on every route.

The walk: every /api/v1 route whose URL names a resource is called by a model_admin of tenant B (the
strongest role a tenant has) with the id of a resource that tenant A made, and must answer 404, exactly as
for a missing resource (never 403, which would tell B the id exists, never 200/202). A route with a URL
variable that is in none of the tables below fails the test, so a new route cannot be forgotten. After B's
calls, A still has its resource (B's DELETEs and cancels changed nothing). List routes never show A's rows
to B.

The role matrix: the platform admin against a model_admin for tenants and keys, a reader that cannot submit
work, and keys limited to models or tasks (403 naming the reason).
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from cortex_tasks.core.auth.keys import create_key, create_tenant
from cortex_tasks.core.tenancy import tenant_scope
from tests.integration.conftest import Api

pytestmark = pytest.mark.usefixtures("workers")

ROLES = ("reader", "inference_user", "model_admin")


@dataclass
class Tenant:
    id: str
    keys: dict[str, str]  # role -> key
    key_ids: dict[str, str]
    made: dict[str, Any] = field(default_factory=dict)  # what the fixtures made in this tenant

    def api(self, app, role: str = "model_admin") -> Api:
        return Api(app.test_client(), self.keys[role])


def _tenant(prefix: str) -> Tenant:
    tenant = f"{prefix}-{uuid.uuid4().hex[:8]}"
    assert create_tenant(tenant, name=f"isolation test {prefix}")
    issued = {role: create_key(role, name=f"{tenant} {role}", tier="unlimited", tenant=tenant) for role in ROLES}
    return Tenant(tenant, {role: key.key for role, key in issued.items()},
                  {role: key.key_id for role, key in issued.items()})


@pytest.fixture(scope="module")
def tenant_a() -> Tenant:
    return _tenant("ta")


@pytest.fixture(scope="module")
def tenant_b() -> Tenant:
    return _tenant("tb")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- tenant A's resources, made through the API where there is one ---


@pytest.fixture(scope="module")
def a_predict_job(app, tenant_a) -> str:
    # wait 0: answered 202 with the job's id at once (a unique input, so the cache cannot answer it).
    response = tenant_a.api(app, "inference_user").post(
        "/api/v1/predict", {"task": "embed", "inputs": [_unique("isolation text")], "wait": 0})
    assert response.status_code == 202, response.get_json()
    tenant_a.made["predict_job"] = response.get_json()["job_id"]
    return response.get_json()["job_id"]


@pytest.fixture(scope="module")
def a_batch_job(app, tenant_a) -> str:
    response = tenant_a.api(app, "inference_user").post(
        "/api/v1/batch/submit", {"task": "sentiment", "inputs": [_unique("a fine day"), _unique("a bad day")]})
    assert response.status_code == 202, response.get_json()
    tenant_a.made["batch_job"] = response.get_json()["job_id"]
    return response.get_json()["job_id"]


@pytest.fixture(scope="module")
def a_training(app, tenant_a) -> tuple[str, str]:
    """(job id, model name) of a training run; cancelled at once, its run stays on record."""
    name = _unique("iso-model")
    rows = [{"text": f"{word} match {i}", "label": label}
            for label, word in (("sports", "football"), ("health", "doctor")) for i in range(6)]
    admin = tenant_a.api(app)
    response = admin.post("/api/v1/training/submit", {"kind": "classifier", "model": name,
                                                      "dataset": {"rows": rows}, "params": {"epochs": 1}})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    admin.post(f"/api/v1/training/control/{job_id}", {"action": "cancel"})  # no need to spend the CPU
    tenant_a.made["training_job"], tenant_a.made["training_model"] = job_id, name
    return job_id, name


@pytest.fixture(scope="module")
def a_dataset(app, tenant_a) -> str:
    name = f"iso/{_unique('rows')}.jsonl"
    admin = tenant_a.api(app)
    response = admin.client.put(f"/api/v1/training/datasets/{name}", data=b'{"text": "a", "label": "b"}\n',
                                headers=admin.headers())
    assert response.status_code == 201, response.get_json()
    tenant_a.made["dataset"] = name
    return name


@pytest.fixture(scope="module")
def a_chat_session(app, tenant_a) -> str:
    session_id = _unique("iso-session")
    secret = _unique("heron")
    response = tenant_a.api(app, "inference_user").post(
        f"/api/v1/chat/{session_id}", {"message": f"The secret word is {secret}.", "model": "gpt-4o-mini",
                                       "wait": 60})
    assert response.status_code == 200, response.get_json()
    tenant_a.made["chat_session"], tenant_a.made["chat_secret"] = session_id, secret
    return session_id


@pytest.fixture(scope="module")
def a_key(tenant_a) -> str:
    issued = create_key("reader", name="isolation victim", tenant=tenant_a.id)
    tenant_a.made["key"], tenant_a.made["key_secret"] = issued.key_id, issued.key
    return issued.key_id


@pytest.fixture(scope="module")
def a_collection(app, tenant_a) -> str:
    name = _unique("iso_coll").replace("-", "_")
    admin = tenant_a.api(app)
    created = admin.client.put(f"/api/v1/vectors/{name}", json={}, headers=admin.headers())
    assert created.status_code == 201, created.get_json()
    upserted = admin.post(f"/api/v1/vectors/{name}", {"items": [{"id": "a-item", "text": "tenant A's item"}],
                                                      "wait": 60})
    assert upserted.status_code == 200, upserted.get_json()
    tenant_a.made["collection"] = name
    return name


@pytest.fixture(scope="module")
def a_document(app, tenant_a) -> tuple[str, str]:
    """(collection, document id) of a document indexed by tenant A."""
    collection, document_id = _unique("iso_docs").replace("-", "_"), _unique("iso-doc")
    response = tenant_a.api(app, "inference_user").post("/api/v1/documents", {
        "collection": collection, "wait": 60,
        "documents": [{"id": document_id, "content": "Tenant A's launch code is 4417."}]})
    assert response.status_code == 200, response.get_json()
    tenant_a.made["document"], tenant_a.made["document_collection"] = document_id, collection
    return collection, document_id


@pytest.fixture(scope="module")
def a_model(tenant_a) -> str:
    """A registered model of tenant A, version 1 (the registry has no upload route: made in A's scope)."""
    from cortex_tasks.core.registry import service as registry

    name = _unique("iso-registered")
    with tenant_scope(tenant_a.id):
        registry.register_version(name, task="classify", framework="test", artifact=b"tenant A's weights")
    tenant_a.made["model"] = name
    return name


@pytest.fixture(scope="module")
def a_stream(app, tenant_a) -> str:
    name = _unique("iso-stream")
    response = tenant_a.api(app).post("/api/v1/streams", {
        "name": name, "fields": [{"name": "ts", "type": "timestamp"}, {"name": "v", "type": "number"}],
        "timestamp_field": "ts", "value_field": "v"})
    assert response.status_code == 201, response.get_json()
    tenant_a.made["stream"] = name
    return name


# --- the walk ---

@dataclass(frozen=True)
class Probe:
    """How to call a route with tenant A's resource, and how A checks afterwards that it still has it."""
    resource: str  # the fixture making A's resource
    path: Callable[[Any], str]
    body: dict[str, Any] | None = None
    still_there: Callable[[Any, Tenant, Any], None] | None = None


def _job_readable(app, tenant: Tenant, job_id: str) -> None:
    response = tenant.api(app).get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.get_json()


def _key_works(app, tenant: Tenant, _key_id: str) -> None:
    assert Api(app.test_client(), tenant.made["key_secret"]).get("/api/v1/models").status_code == 200


def _session_kept(app, tenant: Tenant, session_id: str) -> None:
    history = tenant.api(app, "inference_user").get(f"/api/v1/chat/{session_id}")
    assert history.status_code == 200, history.get_json()
    assert tenant.made["chat_secret"] in json.dumps(history.get_json())


def _collection_kept(app, tenant: Tenant, name: str) -> None:
    response = tenant.api(app).get(f"/api/v1/vectors/{name}/count")
    assert response.status_code == 200 and response.get_json()["count"] == 1, response.get_json()


def _document_kept(app, tenant: Tenant, made: tuple[str, str]) -> None:
    collection, document_id = made
    listed = tenant.api(app).get(f"/api/v1/documents?collection={collection}")
    assert listed.status_code == 200 and document_id in json.dumps(listed.get_json()), listed.get_json()


def _model_kept(app, tenant: Tenant, name: str) -> None:
    response = tenant.api(app).get(f"/api/v1/models/{name}")
    assert response.status_code == 200, response.get_json()


def _stream_kept(app, tenant: Tenant, name: str) -> None:
    response = tenant.api(app).get(f"/api/v1/streams/{name}")
    assert response.status_code == 200 and response.get_json()["length"] == 0, response.get_json()


def _dataset_kept(app, tenant: Tenant, name: str) -> None:
    assert name in tenant.api(app).get("/api/v1/training/datasets").get_json()["datasets"]


def _training_kept(app, tenant: Tenant, made: tuple[str, str]) -> None:
    assert tenant.api(app).get(f"/api/v1/training/status/{made[0]}").status_code == 200


# --- images made by image_generate (docs/images-and-speech.md) ---
@pytest.fixture(scope="module")
def a_generated_image(app, tenant_a) -> str:
    response = tenant_a.api(app, "inference_user").post("/api/v1/predict", {
        "task": "image_generate", "inputs": [_unique("a heron in the rain")], "wait": 30})
    assert response.status_code == 200, response.get_json()
    image_id = response.get_json()["outputs"][0]["images"][0]["id"]
    tenant_a.made["generated_image"] = image_id
    return image_id


def _generated_image_kept(app, tenant: Tenant, image_id: str) -> None:
    response = tenant.api(app, "reader").get(f"/api/v1/generated/{image_id}")
    assert response.status_code == 200 and response.mimetype.startswith("image/"), response.status_code


# Every route whose URL names a tenant's resource, keyed by (method, Flask rule).
ROUTES: dict[tuple[str, str], Probe] = {
    ("GET", "/api/v1/jobs/<job_id>"): Probe("a_predict_job", lambda job: f"/api/v1/jobs/{job}",
                                            still_there=_job_readable),
    ("GET", "/api/v1/batch/progress/<job_id>"): Probe("a_batch_job", lambda job: f"/api/v1/batch/progress/{job}",
                                                      still_there=_job_readable),
    ("GET", "/api/v1/batch/results/<job_id>"): Probe("a_batch_job", lambda job: f"/api/v1/batch/results/{job}",
                                                     still_there=_job_readable),
    ("GET", "/api/v1/batch/errors/<job_id>"): Probe("a_batch_job", lambda job: f"/api/v1/batch/errors/{job}",
                                                    still_there=_job_readable),
    ("GET", "/api/v1/training/status/<job_id>"): Probe(
        "a_training", lambda made: f"/api/v1/training/status/{made[0]}", still_there=_training_kept),
    ("POST", "/api/v1/training/control/<job_id>"): Probe(
        "a_training", lambda made: f"/api/v1/training/control/{made[0]}", {"action": "cancel"},
        still_there=_training_kept),
    ("GET", "/api/v1/training/runs/<name>"): Probe(
        "a_training", lambda made: f"/api/v1/training/runs/{made[1]}", still_there=_training_kept),
    ("DELETE", "/api/v1/training/datasets/<path:dataset>"): Probe(
        "a_dataset", lambda name: f"/api/v1/training/datasets/{name}", still_there=_dataset_kept),
    ("GET", "/api/v1/chat/<session_id>"): Probe("a_chat_session", lambda sid: f"/api/v1/chat/{sid}",
                                                still_there=_session_kept),
    ("DELETE", "/api/v1/chat/<session_id>"): Probe("a_chat_session", lambda sid: f"/api/v1/chat/{sid}",
                                                   still_there=_session_kept),
    ("DELETE", "/api/v1/keys/<key_id>"): Probe("a_key", lambda key_id: f"/api/v1/keys/{key_id}",
                                               still_there=_key_works),
    ("GET", "/api/v1/vectors/<collection>"): Probe("a_collection", lambda c: f"/api/v1/vectors/{c}",
                                                   still_there=_collection_kept),
    ("DELETE", "/api/v1/vectors/<collection>"): Probe("a_collection", lambda c: f"/api/v1/vectors/{c}",
                                                      still_there=_collection_kept),
    ("GET", "/api/v1/vectors/<collection>/count"): Probe(
        "a_collection", lambda c: f"/api/v1/vectors/{c}/count", still_there=_collection_kept),
    ("POST", "/api/v1/vectors/<collection>/delete"): Probe(
        "a_collection", lambda c: f"/api/v1/vectors/{c}/delete", {"ids": ["a-item"]},
        still_there=_collection_kept),
    ("POST", "/api/v1/vectors/<collection>/index"): Probe(
        "a_collection", lambda c: f"/api/v1/vectors/{c}/index", {}, still_there=_collection_kept),
    ("POST", "/api/v1/vectors/<collection>/search"): Probe(
        "a_collection", lambda c: f"/api/v1/vectors/{c}/search", {"text": "tenant A", "k": 1},
        still_there=_collection_kept),
    ("DELETE", "/api/v1/documents/<path:document_id>"): Probe(
        "a_document", lambda made: f"/api/v1/documents/{made[1]}?collection={made[0]}",
        still_there=_document_kept),
    ("GET", "/api/v1/models/<name>"): Probe("a_model", lambda name: f"/api/v1/models/{name}",
                                            still_there=_model_kept),
    ("GET", "/api/v1/models/<name>/route"): Probe("a_model", lambda name: f"/api/v1/models/{name}/route",
                                                  still_there=_model_kept),
    ("POST", "/api/v1/models/<name>/rollback"): Probe(
        "a_model", lambda name: f"/api/v1/models/{name}/rollback", {}, still_there=_model_kept),
    ("GET", "/api/v1/models/<name>/versions/<int:version>"): Probe(
        "a_model", lambda name: f"/api/v1/models/{name}/versions/1", still_there=_model_kept),
    ("GET", "/api/v1/models/<name>/versions/<int:version>/card"): Probe(
        "a_model", lambda name: f"/api/v1/models/{name}/versions/1/card", still_there=_model_kept),
    ("POST", "/api/v1/models/<name>/versions/<int:version>/promote"): Probe(
        "a_model", lambda name: f"/api/v1/models/{name}/versions/1/promote", {"stage": "production"},
        still_there=_model_kept),
    # Real-time streams: B's events never land in A's stream, B never reads or deletes it.
    ("GET", "/api/v1/streams/<name>"): Probe("a_stream", lambda name: f"/api/v1/streams/{name}",
                                             still_there=_stream_kept),
    ("DELETE", "/api/v1/streams/<name>"): Probe("a_stream", lambda name: f"/api/v1/streams/{name}",
                                                still_there=_stream_kept),
    ("POST", "/api/v1/streams/<name>/events"): Probe(
        "a_stream", lambda name: f"/api/v1/streams/{name}/events", {"ts": 1_700_000_000, "v": 1.0},
        still_there=_stream_kept),
    ("GET", "/api/v1/streams/<name>/live"): Probe("a_stream", lambda name: f"/api/v1/streams/{name}/live?seconds=1",
                                                  still_there=_stream_kept),
    ("GET", "/api/v1/streams/<name>/windows"): Probe("a_stream", lambda name: f"/api/v1/streams/{name}/windows",
                                                     still_there=_stream_kept),
    ("GET", "/api/v1/generated/<image_id>"): Probe(
        "a_generated_image", lambda image_id: f"/api/v1/generated/{image_id}", still_there=_generated_image_kept),
}

# Alerts, alert channels and stream reports (blueprints/alerts.py, blueprints/reports.py).
@pytest.fixture(scope="module")
def an_alert(tenant_a) -> str:
    """An alert of tenant A, processed by the alert worker's own service code (no delivery needed here)."""
    from datetime import UTC, datetime

    from cortex_tasks.core.alerting.intake import AlertCandidate, alert_message
    from cortex_tasks.core.tenancy import tenant_scope
    from cortex_tasks.runtime.alerting.service import process_alert

    message = alert_message(AlertCandidate("stream:isolation", "zscore", "k", "high", "tenant A's alert", {},
                                           datetime.now(UTC), "zscore:k:1"), tenant=tenant_a.id)
    with tenant_scope(tenant_a.id):
        return process_alert(message).alert_id or ""


@pytest.fixture(scope="module")
def an_alert_channel(app, tenant_a) -> str:
    response = tenant_a.api(app).post("/api/v1/alert-channels", {
        "name": "a-channel", "kind": "email", "recipients": ["ops@example.org"]})
    assert response.status_code == 201, response.get_json()
    return "a-channel"


@pytest.fixture(scope="module")
def a_report(tenant_a) -> str:
    """A report row of tenant A (ready, so that its downloads would be served to its own tenant)."""
    from datetime import UTC, datetime, timedelta

    from cortex_tasks.core.storage.db import session_scope
    from cortex_tasks.core.storage.tables import StreamReport
    from cortex_tasks.core.tenancy import tenant_scope

    report_id = str(uuid.uuid4())
    with tenant_scope(tenant_a.id), session_scope() as session:
        session.add(StreamReport(id=report_id, stream="isolation", period_start=datetime.now(UTC) - timedelta(days=1),
                                 period_end=datetime.now(UTC), trigger="request", status="failed", error="test row"))
    return report_id


def _alert_kept(app, tenant: Tenant, alert_id: str) -> None:
    response = tenant.api(app).get(f"/api/v1/alerts/{alert_id}")
    assert response.status_code == 200 and response.get_json()["state"] == "open", response.get_json()


def _channel_kept(app, tenant: Tenant, name: str) -> None:
    assert name in json.dumps(tenant.api(app).get("/api/v1/alert-channels").get_json())


def _report_kept(app, tenant: Tenant, report_id: str) -> None:
    assert tenant.api(app).get(f"/api/v1/reports/{report_id}").status_code == 200


ROUTES.update({
    ("GET", "/api/v1/alerts/<alert_id>"): Probe("an_alert", lambda a: f"/api/v1/alerts/{a}", still_there=_alert_kept),
    ("POST", "/api/v1/alerts/<alert_id>/acknowledge"): Probe(
        "an_alert", lambda a: f"/api/v1/alerts/{a}/acknowledge", still_there=_alert_kept),
    ("POST", "/api/v1/alerts/<alert_id>/resolve"): Probe(
        "an_alert", lambda a: f"/api/v1/alerts/{a}/resolve", still_there=_alert_kept),
    ("DELETE", "/api/v1/alert-channels/<name>"): Probe(
        "an_alert_channel", lambda name: f"/api/v1/alert-channels/{name}", still_there=_channel_kept),
    ("GET", "/api/v1/reports/<report_id>"): Probe("a_report", lambda r: f"/api/v1/reports/{r}",
                                                  still_there=_report_kept),
    ("GET", "/api/v1/reports/<report_id>/html"): Probe("a_report", lambda r: f"/api/v1/reports/{r}/html",
                                                       still_there=_report_kept),
    ("GET", "/api/v1/reports/<report_id>/data"): Probe("a_report", lambda r: f"/api/v1/reports/{r}/data",
                                                       still_there=_report_kept),
})


# --- tenant A's prompt and agent, and the routes naming them ---


@pytest.fixture(scope="module")
def a_prompt(app, tenant_a) -> str:
    name = _unique("iso-prompt")
    created = tenant_a.api(app).post("/api/v1/prompts", {"name": name, "template": "Tenant A says {x}.",
                                                         "input_variables": ["x"]})
    assert created.status_code == 201, created.get_json()
    added = tenant_a.api(app).post(f"/api/v1/prompts/{name}/versions", {"template": "Tenant A v2."})
    assert added.status_code == 201, added.get_json()
    tenant_a.made["prompt"] = name
    return name


@pytest.fixture(scope="module")
def a_agent(app, tenant_a, a_prompt) -> str:
    name = _unique("iso-agent")
    declared = tenant_a.api(app).post("/api/v1/agents", {"name": name, "prompt": f"{a_prompt}@2",
                                                         "tools": [{"tool": "predict", "task": "sentiment"}]})
    assert declared.status_code == 201, declared.get_json()
    tenant_a.made["agent"] = name
    return name


def _prompt_kept(app, tenant: Tenant, name: str) -> None:
    shown = tenant.api(app).get(f"/api/v1/prompts/{name}")
    assert shown.status_code == 200 and shown.get_json()["production_version"] == 1, shown.get_json()
    assert shown.get_json()["latest_version"] == 2  # B added no version


def _agent_kept(app, tenant: Tenant, name: str) -> None:
    assert tenant.api(app).get(f"/api/v1/agents/{name}").status_code == 200


ROUTES.update({
    ("GET", "/api/v1/prompts/<name>"): Probe("a_prompt", lambda name: f"/api/v1/prompts/{name}"),
    ("GET", "/api/v1/prompts/<name>/versions/<int:version>"): Probe(
        "a_prompt", lambda name: f"/api/v1/prompts/{name}/versions/1"),
    ("POST", "/api/v1/prompts/<name>/versions"): Probe(
        "a_prompt", lambda name: f"/api/v1/prompts/{name}/versions", {"template": "B's words"},
        still_there=_prompt_kept),
    ("POST", "/api/v1/prompts/<name>/versions/<int:version>/promote"): Probe(
        "a_prompt", lambda name: f"/api/v1/prompts/{name}/versions/2/promote", still_there=_prompt_kept),
    ("POST", "/api/v1/prompts/<name>/rollback"): Probe(
        "a_prompt", lambda name: f"/api/v1/prompts/{name}/rollback", {}, still_there=_prompt_kept),
    ("POST", "/api/v1/prompts/<name>/render"): Probe(
        "a_prompt", lambda name: f"/api/v1/prompts/{name}/render", {"variables": {"x": "1"}}),
    ("GET", "/api/v1/agents/<name>"): Probe("a_agent", lambda name: f"/api/v1/agents/{name}"),
    ("DELETE", "/api/v1/agents/<name>"): Probe("a_agent", lambda name: f"/api/v1/agents/{name}",
                                               still_there=_agent_kept),
    ("POST", "/api/v1/agents/<name>/run"): Probe("a_agent", lambda name: f"/api/v1/agents/{name}/run",
                                                 {"input": "hello"}, still_there=_agent_kept),
})


# Routes whose URL variable names no tenant's resource.
EXEMPT: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/health/model/<model_id>"): "the bundled catalogue models, shared read-only by every tenant",
    ("GET", "/api/v1/docs/assets/<path:filename>"): "the API explorer's static files (public)",
}

# Routes where the id is the caller's own name for a resource it makes: B naming A's id makes or uses B's
# own resource of that name, never A's (test_the_same_name_in_two_tenants_is_two_resources).
OWN_NAMESPACE: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/chat/<session_id>"): "session ids are chosen by clients, per tenant",
    ("PUT", "/api/v1/vectors/<collection>"): "collection names are chosen by clients, per tenant",
    ("PUT", "/api/v1/training/datasets/<path:dataset>"): "dataset names are chosen by clients, per tenant",
    ("POST", "/api/v1/vectors/<collection>"): "an upsert into a name the tenant has not used creates its own "
                                              "collection, as upserts always have",
}


def resource_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and "<" in rule.rule:
            routes |= {(method, rule.rule) for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    return routes


def test_every_route_naming_a_resource_is_walked_or_exempt_with_a_reason(app):
    routes = resource_routes(app)
    listed = set(ROUTES) | set(EXEMPT) | set(OWN_NAMESPACE)
    assert sorted(routes - listed) == [], "add these routes to ROUTES (or, with a reason, EXEMPT)"
    assert sorted(listed - routes) == [], "these routes no longer exist"


@pytest.mark.parametrize("route", sorted(ROUTES), ids=lambda route: f"{route[0]} {route[1]}")
def test_another_tenants_resource_is_404_and_stays_untouched(app, request, tenant_a, tenant_b, route):
    probe = ROUTES[route]
    made = request.getfixturevalue(probe.resource)
    method, path = route[0], probe.path(made)
    intruder = tenant_b.api(app)  # model_admin: the strongest role within a tenant
    response = intruder.client.open(path, method=method, headers=intruder.headers(),
                                    json=probe.body if method in ("POST", "PUT") else None)
    assert response.status_code == 404, (method, path, response.status_code, response.get_json())
    assert set(response.get_json()["error"]) == {"code", "message", "details"}
    if probe.still_there is not None:
        probe.still_there(app, tenant_a, made)


def test_the_same_name_in_two_tenants_is_two_resources(app, tenant_a, tenant_b, a_chat_session):
    # B chats in a session of the same id: its own, which knows nothing of A's conversation.
    mine = tenant_b.api(app, "inference_user")
    response = mine.post(f"/api/v1/chat/{a_chat_session}", {"message": "What is the secret word?",
                                                             "model": "gpt-4o-mini", "wait": 60})
    assert response.status_code == 200, response.get_json()
    history = mine.get(f"/api/v1/chat/{a_chat_session}").get_json()
    assert len(history["messages"]) == 2
    assert tenant_a.made["chat_secret"] not in json.dumps(history)
    _session_kept(app, tenant_a, a_chat_session)


def test_the_same_collection_name_in_two_tenants_is_two_collections(app, tenant_a, tenant_b, a_collection):
    admin = tenant_b.api(app)
    try:
        created = admin.client.put(f"/api/v1/vectors/{a_collection}", json={}, headers=admin.headers())
        assert created.status_code == 201, created.get_json()  # B's own, new and empty
        assert admin.get(f"/api/v1/vectors/{a_collection}/count").get_json()["count"] == 0
        # An upsert by B lands in B's collection of that name, never in A's.
        upserted = admin.post(f"/api/v1/vectors/{a_collection}", {"items": [{"id": "b-item", "text": "from B"}]})
        assert upserted.status_code == 200, upserted.get_json()
        assert admin.get(f"/api/v1/vectors/{a_collection}/count").get_json()["count"] == 1
        _collection_kept(app, tenant_a, a_collection)
    finally:
        # B's collection of the same name would otherwise show A's name in B's list (the lists test).
        admin.delete(f"/api/v1/vectors/{a_collection}")


# --- lists ---

LISTS = ("/api/v1/vectors", "/api/v1/models", "/api/v1/documents", "/api/v1/keys", "/api/v1/usage/openai",
         "/api/v1/training/resources", "/api/v1/training/datasets", "/api/v1/prompts", "/api/v1/agents")


@pytest.mark.parametrize("path", LISTS)
def test_lists_never_show_another_tenants_rows(app, request, tenant_a, tenant_b, path):
    # Whatever A has made by now (the fixtures of this module), plus A's keys and jobs.
    for fixture in ("a_predict_job", "a_batch_job", "a_training", "a_chat_session", "a_key", "a_dataset", "a_agent"):
        request.getfixturevalue(fixture)
    markers = {tenant_a.id, *tenant_a.key_ids.values(),
               *(value for value in tenant_a.made.values() if isinstance(value, str))} - {""}
    for role in ROLES:
        response = tenant_b.api(app, role).get(path)
        if response.status_code == 403:
            continue  # the role may not list this at all
        assert response.status_code == 200, (role, path, response.get_json())
        shown = json.dumps(response.get_json())
        assert [marker for marker in markers if marker in shown] == [], (role, path)


def test_a_tenant_sees_its_own_rows_in_the_lists(app, tenant_a, a_key, a_chat_session):
    keys = tenant_a.api(app).get("/api/v1/keys").get_json()["keys"]
    assert {key["tenant"] for key in keys} == {tenant_a.id}
    assert {a_key, *tenant_a.key_ids.values()} <= {key["key_id"] for key in keys}
    usage = tenant_a.api(app).get("/api/v1/usage/openai").get_json()
    assert usage["scope"] == "tenant" and usage["tenant"] == tenant_a.id
    assert {item["tenant"] for item in usage["items"]} == {tenant_a.id}
    assert [totals["tenant"] for totals in usage["tenants"]] == [tenant_a.id]
    assert tenant_a.key_ids["inference_user"] in {item["key_id"] for item in usage["items"]}
    own = tenant_a.api(app, "inference_user").get("/api/v1/usage/openai").get_json()
    assert own["scope"] == "own_key" and {item["key_id"] for item in own["items"]} == {
        tenant_a.key_ids["inference_user"]}


# --- within a tenant: a job is its owner's and its tenant's admins' ---

def test_a_job_is_visible_to_its_owner_and_its_tenants_admin_only(app, tenant_a, a_predict_job):
    assert tenant_a.api(app, "inference_user").get(f"/api/v1/jobs/{a_predict_job}").status_code == 200
    assert tenant_a.api(app, "model_admin").get(f"/api/v1/jobs/{a_predict_job}").status_code == 200
    assert tenant_a.api(app, "reader").get(f"/api/v1/jobs/{a_predict_job}").status_code == 404


# --- roles: tenants and keys ---

def test_only_the_platform_admin_manages_tenants(app, keys, tenant_a):
    platform = Api(app.test_client(), keys["platform_admin"])
    new = _unique("tc")
    created = platform.post("/api/v1/tenants", {"tenant": new, "name": "Team C"})
    assert created.status_code == 201 and created.get_json()["tenant"] == new
    assert platform.post("/api/v1/tenants", {"tenant": new}).status_code == 409
    assert platform.post("/api/v1/tenants", {"tenant": "Not A Slug"}).status_code == 422
    assert new in {row["tenant"] for row in platform.get("/api/v1/tenants").get_json()["tenants"]}
    for role in ROLES:
        tenant_admin = tenant_a.api(app, role)
        assert tenant_admin.post("/api/v1/tenants", {"tenant": _unique("td")}).status_code == 403
        assert tenant_admin.get("/api/v1/tenants").status_code == 403


def test_a_model_admin_makes_keys_in_its_own_tenant_only(app, tenant_a, tenant_b):
    admin = tenant_a.api(app)
    made = admin.post("/api/v1/keys", {"role": "inference_user", "models": ["all-MiniLM-L6-v2"],
                                       "tasks": ["embed"]})
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    assert body["tenant"] == tenant_a.id and body["models"] == ["all-MiniLM-L6-v2"] and body["tasks"] == ["embed"]
    # Another tenant, existing or not, is unknown to it (no existence leak).
    for other in (tenant_b.id, "no-such-tenant"):
        refused = admin.post("/api/v1/keys", {"role": "reader", "tenant": other})
        assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "unknown_tenant"
    assert admin.get(f"/api/v1/keys?tenant={tenant_b.id}").status_code == 404
    # It cannot raise a key above its tenant.
    above = admin.post("/api/v1/keys", {"role": "platform_admin"})
    assert above.status_code == 403 and above.get_json()["error"]["code"] == "role_not_allowed"
    # An inference user manages no keys at all.
    assert tenant_a.api(app, "inference_user").post("/api/v1/keys", {"role": "reader"}).status_code == 403


def test_the_platform_admin_makes_keys_in_any_tenant(app, keys, tenant_a, tenant_b):
    platform = Api(app.test_client(), keys["platform_admin"])
    made = platform.post("/api/v1/keys", {"role": "model_admin", "tenant": tenant_b.id})
    assert made.status_code == 201 and made.get_json()["tenant"] == tenant_b.id
    assert platform.post("/api/v1/keys", {"role": "reader", "tenant": "no-such-tenant"}).status_code == 404
    listed = platform.get(f"/api/v1/keys?tenant={tenant_b.id}").get_json()["keys"]
    assert {key["tenant"] for key in listed} == {tenant_b.id} and made.get_json()["key_id"] in {
        key["key_id"] for key in listed}
    everyone = {key["tenant"] for key in platform.get("/api/v1/keys").get_json()["keys"]}
    assert {tenant_a.id, tenant_b.id, "default"} <= everyone
    # The new key acts in tenant B: it does not see A's keys, and revokes them as missing.
    b_admin = Api(app.test_client(), made.get_json()["key"])
    assert tenant_a.id not in json.dumps(b_admin.get("/api/v1/keys").get_json())
    assert b_admin.delete(f"/api/v1/keys/{tenant_a.key_ids['reader']}").status_code == 404
    assert tenant_a.api(app, "reader").get("/api/v1/models").status_code == 200
    # The platform admin revokes in any tenant.
    victim = create_key("reader", tenant=tenant_b.id)
    assert platform.delete(f"/api/v1/keys/{victim.key_id}").status_code == 200
    assert Api(app.test_client(), victim.key).get("/api/v1/models").status_code == 401


def test_usage_per_tenant_for_the_platform_admin(app, keys, tenant_a, tenant_b, a_chat_session):
    platform = Api(app.test_client(), keys["platform_admin"])
    everything = platform.get("/api/v1/usage/openai").get_json()
    assert everything["scope"] == "all_tenants" and everything["tenant"] is None
    assert tenant_a.id in {totals["tenant"] for totals in everything["tenants"]}
    only_a = platform.get(f"/api/v1/usage/openai?tenant={tenant_a.id}").get_json()
    assert {item["tenant"] for item in only_a["items"]} == {tenant_a.id}
    assert platform.get("/api/v1/usage/openai?tenant=no-such-tenant").status_code == 404
    assert tenant_b.api(app).get(f"/api/v1/usage/openai?tenant={tenant_a.id}").status_code == 404


# --- roles: work ---

@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/predict", {"task": "embed", "inputs": ["x"]}),
    ("/api/v1/predict/batch", {"task": "embed", "inputs": ["x"]}),
    ("/api/v1/predict/stream", {"task": "embed", "inputs": ["x"]}),
    ("/api/v1/predict/pipeline", {"steps": [{"task": "embed"}], "inputs": ["x"]}),
    ("/api/v1/batch/submit", {"task": "embed", "inputs": ["x"]}),
    ("/api/v1/chat/reader-session", {"message": "hi", "model": "gpt-4o-mini"}),
    ("/api/v1/training/submit", {"kind": "classifier", "model": "x", "dataset": {"rows": [{}]}}),
])
def test_a_reader_cannot_submit_work(app, tenant_a, path, body):
    response = tenant_a.api(app, "reader").post(path, body)
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"


def _limited_key(app, tenant: Tenant, role: str, **limits: list[str]) -> Api:
    return Api(app.test_client(), create_key(role, tenant=tenant.id, tier="unlimited", **limits).key)


@pytest.mark.parametrize(("path", "body", "code", "details"), [
    # Only embed: any other task is refused, naming the task and the allowed ones.
    ("/api/v1/predict", {"task": "sentiment", "inputs": ["good"]}, "task_not_allowed",
     {"task": "sentiment", "allowed_tasks": ["embed"]}),
    ("/api/v1/predict/batch", {"task": "ner", "inputs": ["Ada"]}, "task_not_allowed",
     {"task": "ner", "allowed_tasks": ["embed"]}),
    ("/api/v1/predict/stream", {"task": "language", "inputs": ["hello"]}, "task_not_allowed",
     {"task": "language", "allowed_tasks": ["embed"]}),
    # Every step of a pipeline is checked, the second one too.
    ("/api/v1/predict/pipeline", {"steps": [{"task": "embed"}, {"task": "sentiment"}], "inputs": ["x"]},
     "task_not_allowed", {"task": "sentiment", "allowed_tasks": ["embed"]}),
    ("/api/v1/batch/submit", {"task": "sentiment", "inputs": ["good"]}, "task_not_allowed",
     {"task": "sentiment", "allowed_tasks": ["embed"]}),
    # Chat is a generation.
    ("/api/v1/chat/limited-session", {"message": "hi", "model": "gpt-4o-mini"}, "task_not_allowed",
     {"task": "generate", "allowed_tasks": ["embed"]}),
])
def test_a_key_limited_to_tasks_is_refused_other_tasks_with_the_reason(app, tenant_a, path, body, code, details):
    caller = _limited_key(app, tenant_a, "inference_user", tasks=["embed"])
    response = caller.post(path, body)
    assert response.status_code == 403, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code and error["details"] == details


def test_a_key_limited_to_models_is_refused_other_models_with_the_reason(app, tenant_a):
    caller = _limited_key(app, tenant_a, "model_admin", models=["vader"])
    # No model named: the task's default model is the one that would run, and it is not allowed.
    response = caller.post("/api/v1/predict", {"task": "embed", "inputs": ["x"]})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "model_not_allowed"
    assert response.get_json()["error"]["details"] == {"model": "all-MiniLM-L6-v2", "allowed_models": ["vader"]}
    for path, body in [
        ("/api/v1/batch/submit", {"task": "embed", "inputs": ["x"], "model": "all-MiniLM-L6-v2"}),
        ("/api/v1/predict/pipeline", {"steps": [{"task": "sentiment", "model": "vader"}, {"task": "embed"}],
                                      "inputs": ["x"]}),
        ("/api/v1/chat/limited-models", {"message": "hi", "model": "gpt-4o-mini"}),
        ("/api/v1/training/submit", {"kind": "classifier", "model": "not-vader", "dataset": {"rows": [{}]}}),
    ]:
        refused = caller.post(path, body)
        assert refused.status_code == 403, (path, refused.get_json())
        assert refused.get_json()["error"]["code"] == "model_not_allowed", (path, refused.get_json())
    # Its own model it may use.
    allowed = caller.post("/api/v1/predict", {"task": "sentiment", "model": "vader", "inputs": ["lovely"],
                                              "wait": 30})
    assert allowed.status_code == 200, allowed.get_json()


def test_the_default_tenant_keeps_the_data_of_before_tenants(app, keys):
    # Keys made without a tenant (every key before this feature) belong to `default`.
    platform = Api(app.test_client(), keys["platform_admin"])
    listed = platform.get("/api/v1/keys?tenant=default").get_json()["keys"]
    assert {key["tenant"] for key in listed} == {"default"} and len(listed) >= len(keys)


def test_the_cli_creates_tenants_and_limited_keys_in_them(app):
    from click.testing import CliRunner

    from cortex_tasks.cli import main

    runner = CliRunner()
    tenant = _unique("cli")
    assert runner.invoke(main, ["tenants", "create", tenant, "--name", "From the CLI"]).exit_code == 0
    assert runner.invoke(main, ["tenants", "create", tenant]).exit_code != 0  # exists already
    assert tenant in runner.invoke(main, ["tenants", "list"]).output
    made = runner.invoke(main, ["keys", "create", "--tenant", tenant, "--role", "inference_user",
                                "--models", "vader", "--tasks", "sentiment,embed"])
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]  # the key alone on the last line
    listed = json.loads(runner.invoke(main, ["keys", "list", "--tenant", tenant]).output)
    assert [(row["tenant"], row["role"], row["models"], row["tasks"]) for row in listed] == [
        (tenant, "inference_user", ["vader"], ["embed", "sentiment"])]
    refused = Api(app.test_client(), key).post("/api/v1/predict", {"task": "ner", "inputs": ["Ada"]})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "task_not_allowed"
    assert runner.invoke(main, ["keys", "create", "--tenant", "no-such-tenant", "--role", "reader"]).exit_code != 0
