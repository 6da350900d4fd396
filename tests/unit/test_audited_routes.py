"""Every state-changing route under /api/v1 leaves a record in the audit log with the caller's tenant,
key, the action and the resource: as a configuration change (`@audited(...)`), as model access (the
`limit_prediction` / `limit_model_work` decorators), or it is listed below with the reason it is neither.
A new POST, PUT, PATCH or DELETE route fails here until someone decides which."""
from __future__ import annotations

import pytest
from flask import Flask

from cortex_web import create_app
from cortex_web.audit import AUDIT_MARK, MODEL_ACCESS_MARK

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
NOT_AUDITED = {
    "documents.index_documents": "a data write, as frequent as predictions; the indexing job records the key "
                                 "(owner, indexed_by), collection and documents",
    "vectors.upsert": "a data write, as frequent as predictions; the items keep created_by and the job its owner",
    "documents.answer_question": "a read: POST only to carry the question; changes nothing",
    "vectors.search": "a read: POST only to carry the query; changes nothing",
    "streams.send_events": "a data write, as frequent as predictions (a stream's events); the Redis Stream keeps "
                           "every event and the stream's declaration its owner",
    "prompts.render": "a read: POST only to carry the variables; changes nothing",
}


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app()


def state_changing_routes(app: Flask) -> dict[str, str | None]:
    """endpoint -> how its calls are recorded (an @audited action, "model_access", or None)."""
    found = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and STATE_CHANGING & set(rule.methods or ()):
            found[rule.endpoint] = getattr(app.view_functions[rule.endpoint], AUDIT_MARK, None)
    return found


def test_every_state_changing_route_is_audited_or_explained(app):
    unrecorded = sorted(endpoint for endpoint, mark in state_changing_routes(app).items()
                        if mark is None and endpoint not in NOT_AUDITED)
    assert unrecorded == [], "audit these routes (cortex_web.audit.audited) or list them with a reason"


def test_the_explained_routes_exist_and_are_not_recorded_anyway(app):
    routes = state_changing_routes(app)
    assert {endpoint: routes.get(endpoint, "gone") for endpoint in NOT_AUDITED} == dict.fromkeys(NOT_AUDITED)


def test_the_marks_are_what_the_decorators_leave(app):
    routes = state_changing_routes(app)
    assert routes["keys.create"] == "key.create" and routes["vectors.drop_collection"] == "collection.delete"
    assert routes["predict.predict"] == MODEL_ACCESS_MARK and routes["batch.submit"] == MODEL_ACCESS_MARK
    assert routes["documents.delete_document"] == "document.delete"


def test_the_check_catches_an_unrecorded_route():
    bare = Flask(__name__)

    @bare.post("/api/v1/things")
    def make_thing() -> str:
        return "made"

    assert state_changing_routes(bare) == {"make_thing": None}
