"""A Python client generated from the OpenAPI document (openapi-python-client) builds, imports, talks to the
gateway in-process (httpx's WSGI transport) and reads the views' bodies into its typed models."""
from __future__ import annotations

import importlib
import time

import httpx
import pytest

from cortex_web import create_app
from tests.support.openapi_client import generated_client


@pytest.fixture(scope="module")
def app():
    return create_app()


@pytest.fixture(scope="module")
def client_package(app, tmp_path_factory):
    spec = app.test_client().get("/api/v1/openapi.json").get_json()
    with generated_client(spec, tmp_path_factory.mktemp("generated")) as package:
        yield package


def test_every_operation_has_a_client_function(app, client_package):
    spec = app.test_client().get("/api/v1/openapi.json").get_json()
    operation_ids = {operation["operationId"] for item in spec["paths"].values() for operation in item.values()}
    for operation_id in operation_ids:
        module = importlib.import_module(f"cortex_client.api.default.{operation_id.replace('.', '_')}")
        assert callable(module.sync_detailed), operation_id


def test_generated_client_calls_the_gateway(app, client_package):
    from cortex_client.api.default import docs_docs_asset, health_health
    from cortex_client.models import ErrorResponse

    client = client_package.Client(base_url="http://gateway", raise_on_unexpected_status=True,
                                   httpx_args={"transport": httpx.WSGITransport(app=app)})
    assert health_health.sync_detailed(client=client).status_code == 200
    # A public route, so no key (an authenticated call would need Redis and PostgreSQL, and a refused one
    # writes an audit event to them): a 404 read into the documented error model.
    answer = docs_docs_asset.sync_detailed("index.html", client=client)
    assert answer.status_code == 404
    assert isinstance(answer.parsed, ErrorResponse)
    assert answer.parsed.error.code == "not_found"


def test_generated_models_read_what_predict_returns(app, client_package):
    from cortex_client.models import Accepted, PredictResponse

    from cortex_tasks.core.catalogue import MODELS, TASKS
    from cortex_web.blueprints.predict import accepted
    from cortex_web.predictions import Prediction, success_body

    model = next(iter(MODELS.values()))
    outcome = {"status": "succeeded", "result": {"task": model.task, "model": {"name": model.name},
                                                 "outputs": ["POSITIVE"], "timings": {"inference_ms": 3.5}}}
    body = success_body(Prediction("job-1", TASKS[model.task], model, outcome, time.perf_counter()))
    parsed = PredictResponse.from_dict(body)
    assert parsed.job_id == "job-1" and parsed.outputs == ["POSITIVE"] and parsed.cached is False
    with app.test_request_context():
        response, _ = accepted("job-1")
    queued = Accepted.from_dict(response.get_json())
    assert queued.status_url == "/api/v1/jobs/job-1"
