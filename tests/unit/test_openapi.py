"""The OpenAPI document: valid OpenAPI 3.1, every reference resolves, every JSON-body route has the request
model its view parses, the documented responses match what the views build, and /api/v1/docs serves an
interactive page whose assets come from the installed package (no network)."""
from __future__ import annotations

import inspect
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from cortex_web import create_app
from cortex_web.errors import error_response

# How a view names the model it parses its body with (request_body.parse_body, predict.parse_prediction).
PARSED_MODEL = re.compile(r"(?<!\w)(?:parse_body|_body)\(([A-Z]\w+)")


@pytest.fixture(scope="module")
def app():
    return create_app()


@pytest.fixture(scope="module")
def spec(app) -> dict[str, Any]:
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve at {part!r}"
        node = node[part]
    return node


def _matches(spec: dict[str, Any], ref: str, body: Any) -> list[str]:
    """The errors of `body` against the schema `ref` points at (an empty list: it matches)."""
    validator = Draft202012Validator({"$ref": ref, "components": spec["components"]})
    return [error.message for error in validator.iter_errors(body)]


def test_document_is_valid_openapi_3_1(spec):
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises OpenAPIValidationError with the first problem


def test_every_reference_resolves_into_components(spec):
    refs = set(_refs(spec))
    assert refs, "the document references no schema"
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        _resolve(spec, ref)
    assert "$defs" not in str(spec)


def test_every_json_body_route_documents_the_model_it_parses(app, spec):
    checked = 0
    for rule in app.url_map.iter_rules():
        view = inspect.unwrap(app.view_functions[rule.endpoint])
        source = inspect.getsource(view)
        parsed = PARSED_MODEL.findall(source) or (["PredictRequest"] if "parse_prediction()" in source else [])
        if not parsed:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            body = spec["paths"][path][method.lower()].get("requestBody")
            assert body is not None, (method, path)
            assert body["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{parsed[0]}"}, (method, path)
            checked += 1
    assert checked >= 18  # predict x4, keys, batch, chat, documents x2, models x2, training x2, vectors x5


def test_errors_are_documented_with_the_error_schema(spec):
    predict = spec["paths"]["/api/v1/predict"]["post"]["responses"]
    for status in ("401", "403", "422", "429", "4XX", "503", "5XX"):
        assert predict[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}, status
        assert predict[status]["description"]
    assert "Retry-After" in predict["429"]["headers"] and "Retry-After" in predict["503"]["headers"]
    # Public routes need no key, so they document no 401/403 (/ready refuses a bad key: its own test).
    assert "401" not in spec["paths"]["/health"]["get"]["responses"]
    assert "403" not in spec["paths"]["/ready"]["get"]["responses"]


def test_error_answers_match_the_error_schema(app, spec):
    with app.test_request_context():
        body = error_response(429, "rate_limited", "slow down", {"retry_after": 2}).get_json()
    assert _matches(spec, "#/components/schemas/ErrorResponse", body) == []
    assert _matches(spec, "#/components/schemas/ErrorResponse", {"error": {"code": "x"}}) != []


def test_predict_responses_match_what_the_view_builds(app, spec):
    from cortex_tasks.core.catalogue import MODELS, TASKS
    from cortex_web.blueprints.predict import accepted
    from cortex_web.predictions import Prediction, success_body

    responses = spec["paths"]["/api/v1/predict"]["post"]["responses"]
    ok = responses["200"]["content"]["application/json"]["schema"]["$ref"]
    queued = responses["202"]["content"]["application/json"]["schema"]["$ref"]
    model = next(iter(MODELS.values()))
    outcome = {"status": "succeeded", "result": {"task": model.task, "model": {"name": model.name},
                                                 "outputs": [{"label": "POSITIVE"}, "x"],
                                                 "timings": {"inference_ms": 3.5}}}
    for cached_items in (0, 1):
        body = success_body(Prediction("job-1", TASKS[model.task], model, outcome, time.perf_counter(),
                                       cached_items))
        assert _matches(spec, ok, body) == [], body
    # The cache answered every input: no job ran, so no job id (schemathesis found the document said string).
    body = success_body(Prediction(None, TASKS[model.task], model, outcome, time.perf_counter(), 2))
    assert body["job_id"] is None and _matches(spec, ok, body) == [], body
    with app.test_request_context():
        response, status = accepted("job-1")
    assert status == 202 and _matches(spec, queued, response.get_json()) == []
    assert _matches(spec, ok, {"job_id": "job-1", "status": "queued", "status_url": "/x"}) != []


def test_job_and_batch_responses_are_documented(spec):
    expected = {("get", "/api/v1/jobs/{job_id}", "200"): "JobResponse",
                ("post", "/api/v1/batch/submit", "202"): "BatchSubmitted",
                ("get", "/api/v1/batch/progress/{job_id}", "200"): "BatchProgress",
                ("get", "/api/v1/batch/results/{job_id}", "200"): "BatchResultsPage",
                ("post", "/api/v1/predict/batch", "202"): "Accepted"}
    for (method, path, status), name in expected.items():
        content = spec["paths"][path][method]["responses"][status]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}
    assert "200" not in spec["paths"]["/api/v1/batch/submit"]["post"]["responses"]


def test_job_response_matches_job_to_api(spec):
    from datetime import UTC, datetime

    from cortex_tasks.core.jobs.store import job_to_api
    from cortex_tasks.core.storage.tables import Job

    now = datetime.now(UTC)
    job = Job(id="job-1", owner="k", kind="predict", task="sentiment", model="m", status="succeeded",
              progress_done=1, progress_total=1, created_at=now, started_at=now, finished_at=now, attempts=1,
              result={"outputs": [1]}, result_ref=None, error=None)
    assert _matches(spec, "#/components/schemas/JobResponse", job_to_api(job)) == []


def test_docs_page_is_swagger_ui_served_from_the_package(app):
    client = app.test_client()
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "SwaggerUIBundle" in html and "/api/v1/openapi.json" in html
    assets = re.findall(r'(?:src|href)="(/api/v1/docs/assets/[^"]+)"', html)
    assert {asset.rsplit("/", 1)[1] for asset in assets} >= {"swagger-ui.css", "swagger-ui-bundle.js"}
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert response.get_data(), asset
    assert client.get("/api/v1/docs/assets/index.html").status_code == 404
    assert client.get("/api/v1/docs/assets/../__init__.py").status_code == 404


# A view's success status: `return jsonify(...), 202` or `..., 200 if existed else 201`.
RETURNED_STATUS = re.compile(r"\)\s*,\s*(2\d\d)\b|\b(2\d\d) if \w+ else (2\d\d)\b")


def test_every_success_status_a_view_returns_is_documented(app, spec):
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        source = inspect.getsource(inspect.unwrap(app.view_functions[rule.endpoint]))
        statuses = {status for match in RETURNED_STATUS.findall(source) for status in match if status}
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            documented = spec["paths"][path][method.lower()]["responses"]
            for status in statuses:
                assert status in documented, (method, path, status)
                # A bare 200 is the default of a route whose answer is not modelled yet; any other status a
                # view chose on purpose has its body documented.
                assert status == "200" or "content" in documented[status], (method, path, status)
                checked += 1
    assert checked >= 9  # batch, chat, keys, promote x2, predict, training x2, vectors x2


def test_request_examples_are_valid_request_bodies(spec):
    from cortex_web.openapi import REQUEST_BODIES, REQUEST_EXAMPLES

    for method, path in REQUEST_EXAMPLES:
        media = spec["paths"][path][method]["requestBody"]["content"]["application/json"]
        for example in media["examples"].values():
            assert _matches(spec, media["schema"]["$ref"], example["value"]) == [], (method, path)
            REQUEST_BODIES[(method, path)].model_validate(example["value"])  # what the view parses with


def test_health_and_ready_answers_match_their_documented_schemas(app, spec):
    from cortex_tasks.core.auth.keys import create_key

    client = app.test_client()
    key = create_key("reader", name="test openapi readiness").key
    for path in ("/health", "/ready"):
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            response = client.get(path, headers=headers)
            documented = spec["paths"][path]["get"]["responses"][str(response.status_code)]
            ref = documented["content"]["application/json"]["schema"]["$ref"]
            assert _matches(spec, ref, response.get_json()) == [], (path, response.get_json())
    # /ready: anonymous or with a key, and a bad key is a documented 401; /health does not look at keys.
    operation = spec["paths"]["/ready"]["get"]
    assert {} in operation["security"] and {"bearer": []} in operation["security"]
    assert "invalid_api_key" in operation["responses"]["401"]["description"]
    assert "security" not in spec["paths"]["/health"]["get"]
    # /ready's 503 is its own body, not the error object the other 503s are.
    assert spec["paths"]["/ready"]["get"]["responses"]["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Readiness"}


def test_key_name_with_a_nul_character_is_refused_and_documented(spec):
    from pydantic import ValidationError

    from cortex_web.schemas import CreateKeyRequest

    # PostgreSQL text cannot store U+0000: the view answered 500 before the model refused it.
    with pytest.raises(ValidationError):
        CreateKeyRequest.model_validate({"role": "reader", "name": "a\x00b"})
    assert CreateKeyRequest.model_validate({"role": "reader", "name": "ci\tbot é"}).name == "ci\tbot é"
    ref = "#/components/schemas/CreateKeyRequest"
    assert _matches(spec, ref, {"role": "reader", "name": "a\x00b"}) != []
    assert _matches(spec, ref, {"role": "reader", "name": "ci bot"}) == []


# How a view reads a query argument: request.args.get("x"), positive_int_arg("x", ...), _int_arg("x", ...).
QUERY_ARGUMENT = re.compile(r"""(?:request\.args\.get|positive_int_arg|_int_arg)\(\s*["'](\w+)["']""")
# Helpers the views call to read an argument, and the argument each reads.
QUERY_HELPERS = {"_collection_arg(": "collection", "_moment(": None}


def test_every_query_argument_a_view_reads_is_documented(app, spec):
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        source = inspect.getsource(inspect.unwrap(app.view_functions[rule.endpoint]))
        names = set(QUERY_ARGUMENT.findall(source))
        names |= {name for helper, name in QUERY_HELPERS.items() if name and helper in source}
        names |= set(re.findall(r"""_moment\(["'](\w+)["']\)""", source))
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            documented = {parameter["name"]: parameter for parameter in spec["paths"][path][method.lower()][
                "parameters"] if parameter["in"] == "query"}
            assert names <= set(documented), (method, path, names - set(documented))
            checked += len(names)
    assert checked >= 14  # audit x6, batch results x3, documents x4, usage, training runs, vectors count


def test_path_parameters_carry_the_patterns_the_views_check(spec):
    from cortex_tasks.core.chat.history import valid_session_id
    from cortex_tasks.core.errors import CortexError
    from cortex_tasks.core.jobs.store import get_job
    from cortex_tasks.core.registry.records import check_model_name
    from cortex_tasks.core.storage.vector_store import check_collection_name

    def schema(path: str, method: str, name: str) -> dict[str, Any]:
        return next(parameter["schema"] for parameter in spec["paths"][path][method]["parameters"]
                    if parameter["name"] == name)

    def valid(parameter: dict[str, Any], value: str) -> bool:
        return not list(Draft202012Validator(parameter).iter_errors(value))

    collection = schema("/api/v1/vectors/{collection}", "get", "collection")
    for value in ("docs", "a.b-c_1", "x" * 64, "", "-a", "x" * 65, "a/b", "a b", "é"):
        try:
            accepted = check_collection_name(value) == value
        except CortexError:
            accepted = False
        assert valid(collection, value) == accepted, value
    model = schema("/api/v1/models/{name}", "get", "name")
    for value in ("sst2-distilbert", "a.b", "a..b", "..", ".a", "a/b", "x" * 129):
        try:
            accepted = check_model_name(value) == value
        except CortexError:
            accepted = False
        assert valid(model, value) == accepted, value
    session = schema("/api/v1/chat/{session_id}", "get", "session_id")
    for value in ("s-1", "A_b", "", "_a", "a.b", "x" * 129):
        assert valid(session, value) == valid_session_id(value), value
    job_id = schema("/api/v1/jobs/{job_id}", "get", "job_id")
    assert valid(job_id, "0b8e6f1e-54a1-4c7e-9a53-3c1f0d2b9e11") and not valid(job_id, "job-1")
    assert get_job("job-1") is None  # not a UUID: never looked up, a 404


def test_prediction_bodies_name_the_catalogue_tasks_and_their_inputs(spec):
    from cortex_tasks.core.catalogue import TASKS
    from cortex_tasks.core.errors import ItemError
    from cortex_tasks.core.validation.items import check_text

    ref = "#/components/schemas/PredictRequest"
    for name in TASKS:
        assert _matches(spec, ref, {"task": name, "inputs": ["x"]}) == [], name
    for name in ("embed ", "Embed", "embed|ner", ""):
        assert _matches(spec, ref, {"task": name, "inputs": ["x"]}) != [], name
    assert _matches(spec, ref, {"task": "no-such-task", "inputs": ["x"]}) != []
    for text in ("hello", " a\tb\n", "é", "", "  \n", "a\x00b", "bell\x07", "x" * 10_001):
        try:
            accepted = check_text(text, "inputs[0]") == text
        except ItemError:
            accepted = False
        assert (_matches(spec, ref, {"task": "embed", "inputs": [text]}) == []) == accepted, repr(text)
    assert _matches(spec, ref, {"task": "reduce", "inputs": [[0.5, 1.0]]}) == []
    assert _matches(spec, ref, {"task": "embed", "inputs": [{"text": "x"}]}) != []
    for model in ("sst2-distilbert", "m@3", None):
        assert _matches(spec, ref, {"task": "embed", "inputs": ["x"], "model": model}) == [], model
    for model in ("a/b", "a..b", "", "m@"):
        assert _matches(spec, ref, {"task": "embed", "inputs": ["x"], "model": model}) != [], model
    step = "#/components/schemas/PipelineStep"
    assert _matches(spec, step, {"task": "pii_mask"}) == [] and _matches(spec, step, {"task": "nope"}) != []


def test_every_success_answer_documents_its_body(spec):
    # The docs page's assets (CSS, JavaScript, icons) are files of several types, described by their names.
    undescribed = {("get", "/api/v1/docs/assets/{filename}")}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status.startswith("2") and (method, path) not in undescribed:
                    assert answer.get("content"), (method, path, status)
    card = spec["paths"]["/api/v1/models/{name}/versions/{version}/card"]["get"]["responses"]["200"]
    assert list(card["content"]) == ["text/markdown"]
    haystack = spec["paths"]["/api/v1/health/haystack"]["get"]["responses"]["503"]
    assert haystack["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/HaystackHealth"}


def test_catalogue_model_answers_match_their_documented_schemas(app, spec):
    from cortex_tasks.core.catalogue import MODELS, TASKS

    name, entry = next(iter(MODELS.items()))
    listed = {"name": name, "task": entry.task, "source": "catalogue", "latest_version": entry.version,
              "production": {"version": entry.version}, "canary": None, "description": entry.description}
    assert _matches(spec, "#/components/schemas/ModelList", {"models": [listed]}) == []
    route = {"model": name, "version": entry.version, "stage": "production", "source": "catalogue"}
    assert _matches(spec, "#/components/schemas/ModelRoute", route) == []
    health = {"model": entry.name, "version": entry.version, "task": entry.task, "queue": TASKS[entry.task].queue,
              "loaded_on_workers": [], "status": "not_loaded", "batching": {}}
    assert _matches(spec, "#/components/schemas/ModelHealth", health) == []
    assert _matches(spec, "#/components/schemas/ModelHealth", {**health, "status": "gone"}) != []


def test_other_bodies_carry_their_validators_rules(spec):
    from pydantic import ValidationError

    from cortex_tasks.core.documents.requests import DocumentIn
    from cortex_tasks.core.errors import ItemError
    from cortex_tasks.core.training.kinds import KINDS

    document = "#/components/schemas/DocumentIn"
    for body in ({"content": "text"}, {"content": "", "id": "d"}, {"content": " \n"}, {"content": "a\x01"},
                 {"content": "x", "id": ""}, {"content": "x", "meta": {"collection": "a"}},
                 {"content": "x", "meta": {"1bad": 1}}, {"content": "x", "meta": {"ok_key": 1}}):
        try:
            accepted = bool(DocumentIn.model_validate(body))
        except (ValidationError, ItemError):  # the view answers both with a 422
            accepted = False
        assert (_matches(spec, document, body) == []) == accepted, body
    assert _matches(spec, "#/components/schemas/DeleteItemsRequest", {"ids": [""]}) != []
    assert _matches(spec, "#/components/schemas/DeleteItemsRequest", {"ids": ["a"]}) == []
    training = "#/components/schemas/TrainingSubmitRequest"
    rows = {"rows": [{"text": "a", "label": "b"}]}
    for kind in KINDS:
        assert _matches(spec, training, {"kind": kind, "model": "m", "dataset": rows}) == [], kind
    assert _matches(spec, training, {"kind": "no-such-kind", "model": "m", "dataset": rows}) != []
    assert _matches(spec, training, {"kind": next(iter(KINDS)), "model": "a/b", "dataset": rows}) != []
    pipeline = "#/components/schemas/PipelineRequest"
    assert _matches(spec, pipeline, {"steps": [{"task": "ner"}], "inputs": [{}]}) != []
    assert _matches(spec, pipeline, {"steps": [{"task": "ner"}], "inputs": ["a text"]}) == []


def _accepted(check, body: Any) -> bool:
    from pydantic import ValidationError

    from cortex_tasks.core.errors import CortexError

    try:
        check(body)
    except (ValidationError, CortexError):  # the views answer both with a 422
        return False
    return True


@pytest.mark.parametrize("dataset", [
    {"rows": [{"text": "a"}]}, {"rows": []}, {"rows": "a"}, {}, {"object": "datasets/train.jsonl"},
    {"object": "../up"}, {"object": ""}, {"object": "d.csv", "format": "csv"}, {"object": "d", "format": "xls"},
    {"uri": "http://host/d.jsonl"}, {"rows": [{}], "object": "d"},
    {"rows": [{}], "extra": 1}])
def test_a_training_dataset_the_document_allows_is_one_the_view_accepts(spec, dataset):
    from cortex_tasks.core.tenancy import tenant_scope
    from cortex_tasks.core.training.intake import check_dataset

    documented = _matches(spec, "#/components/schemas/TrainingSubmitRequest",
                          {"kind": "classifier", "model": "m", "dataset": dataset}) == []
    with tenant_scope("default"):
        assert documented == _accepted(check_dataset, dataset), dataset


@pytest.mark.parametrize("schedule", [
    {"cron": "0 3 * * 1"}, {"cron": "*/15 * * * *"}, {"cron": "0 0 0 * *"}, {"cron": "61 * * * *"},
    {"cron": "0 3 * *"}, {"metric": "accuracy", "threshold": 0.8}, {"metric": "accuracy"}, {"threshold": 0.8},
    {"cron": "0 3 * * 1", "metric": "accuracy"}, {"cron": "0 3 * * 1", "metric": "f1", "threshold": 0.7}, {}])
def test_a_schedule_the_document_allows_is_one_the_view_accepts(spec, schedule):
    from cortex_tasks.core.training.intake import RetrainingSchedule, check_schedule

    documented = _matches(spec, "#/components/schemas/TrainingSubmitRequest",
                          {"kind": "classifier", "model": "m", "dataset": {"rows": [{}]}, "schedule": schedule}) == []
    fields = {name: schedule.get(name) for name in ("cron", "metric", "threshold")}
    assert documented == _accepted(lambda _: check_schedule(RetrainingSchedule(**fields)), schedule), schedule


@pytest.mark.parametrize("item", [
    {"id": "a", "text": "words"}, {"id": "a", "vector": [0.1, 0.2]}, {"id": "a"},
    {"id": "a", "text": "words", "vector": [0.1]}, {"id": "a", "vector": []}, {"id": "a", "text": " "},
    {"id": "a", "text": "words", "metadata": {"k": 1}}, {"id": "", "text": "words"}])
def test_a_vector_item_the_document_allows_is_one_the_view_accepts(spec, item):
    from cortex_web.blueprints.vectors import UpsertRequest

    documented = _matches(spec, "#/components/schemas/UpsertRequest", {"items": [item]}) == []
    assert documented == _accepted(UpsertRequest.model_validate, {"items": [item]}), item


@pytest.mark.parametrize("search", [
    {"text": "words"}, {"vector": [0.1]}, {}, {"text": "words", "vector": [0.1]}, {"text": "words", "exact": True},
    {"vector": [0.1], "exact": True, "effort": 40, "include_vectors": True}, {"text": "words", "k": 5,
                                                                               "filter": {"lang": "en"}}])
def test_a_search_the_document_allows_is_one_the_view_accepts(spec, search):
    from cortex_web.blueprints.vectors import SearchRequest

    documented = _matches(spec, "#/components/schemas/SearchRequest", search) == []
    assert documented == _accepted(SearchRequest.model_validate, search), search


def test_a_key_tier_is_one_of_the_configured_tiers(spec):
    key = "#/components/schemas/CreateKeyRequest"
    assert _matches(spec, key, {"role": "reader", "tier": "premium"}) == []
    assert _matches(spec, key, {"role": "reader", "tier": "gold"}) != []


@pytest.mark.parametrize("collection", [
    {}, {"model": None, "dimension": 3}, {"model": None}, {"index": {"type": "hnsw", "m": 8}},
    {"index": {"type": "hnsw", "probes": 4}}, {"index": {"type": "ivfflat", "lists": 50, "probes": 5}},
    {"index": {"lists": 50}}, {"index": {"type": "ivfflat", "lists": 0}}, {"index": {"m": 16, "ef_search": None}}])
def test_a_collection_the_document_allows_is_one_the_view_accepts(spec, collection):
    from cortex_tasks.core.storage.vector_store import index_from_dict
    from cortex_web.blueprints.vectors import CreateCollectionRequest

    def create(body: dict[str, Any]) -> None:
        request = CreateCollectionRequest.model_validate(body)
        index_from_dict(request.index.as_spec())
        if request.model is None and request.dimension is None:
            raise ValueError("dimension is required for a collection without a model")

    documented = _matches(spec, "#/components/schemas/CreateCollectionRequest", collection) == []
    try:
        create(collection)
        accepted = True
    except Exception:  # pydantic's, the store's and the service's refusals: each a 422
        accepted = False
    assert documented == accepted, collection


# --- multipart/form-data uploads (request_body._multipart_body) ---

UPLOAD_ROUTES = {"/api/v1/predict": "PredictRequest", "/api/v1/predict/batch": "PredictRequest",
                 "/api/v1/batch/submit": "BatchSubmitRequest", "/api/v1/vectors/{collection}": "UpsertRequest",
                 "/api/v1/vectors/{collection}/search": "SearchRequest"}


def test_every_route_that_takes_uploads_documents_its_form_beside_its_json_body(app, spec):
    uploads = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            content = spec["paths"][path][method.lower()].get("requestBody", {}).get("content", {})
            takes_uploads = getattr(app.view_functions[rule.endpoint], "takes_uploads", False)
            assert ("multipart/form-data" in content) == takes_uploads, (method, path)
            if takes_uploads:
                uploads.add(path)
                assert content["application/json"]["schema"] == {
                    "$ref": f"#/components/schemas/{UPLOAD_ROUTES[path]}"}
    assert uploads == set(UPLOAD_ROUTES)


def test_an_upload_form_names_the_fields_the_view_reads_and_how_each_is_encoded(spec):
    from cortex_web.request_body import JSON_FORM_FIELDS

    for path, model in UPLOAD_ROUTES.items():
        form = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        body = _resolve(spec, f"#/components/schemas/{model}")
        shapes = [_resolve(spec, shape["$ref"]) for shape in body["anyOf"]] if "anyOf" in body else [body]
        fields = {name for shape in shapes for name in shape["properties"]}
        properties = form["schema"]["properties"]
        assert {"request", *fields} >= set(properties), path
        assert form["schema"]["additionalProperties"] is False
        # JSON-valued fields (and the whole body) are sent as JSON, files as bytes, the rest as text.
        json_fields = {"request", *(fields & set(JSON_FORM_FIELDS))}
        assert {name for name, part in form["encoding"].items() if part["contentType"] == "application/json"} \
            == json_fields, path
        assert json_fields <= set(properties)
        if "inputs" in fields:
            assert properties["inputs"] == {**properties["inputs"], "type": "array",
                                            "items": {"type": "string", "format": "binary"}}
            assert form["encoding"]["inputs"]["contentType"] == "application/octet-stream"
        binary = {name for name, schema in properties.items() if schema.get("items", {}).get("format") == "binary"}
        assert binary == ({"inputs"} & fields), path  # files are read from the field `inputs` only


def _form_documented(spec: dict[str, Any], path: str, fields: dict[str, str], files: int) -> bool:
    """Whether the document allows a form: its JSON-encoded parts decoded as its encoding says, each file
    one item of its field's array."""
    import json

    form = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
    instance: dict[str, Any] = {}
    for name, value in fields.items():
        if form["encoding"].get(name, {}).get("contentType") == "application/json":
            try:
                instance[name] = json.loads(value)
            except ValueError:
                return False
        else:
            instance[name] = value
    if files:
        instance["inputs"] = ["<file bytes>"] * files
    validator = Draft202012Validator({**form["schema"], "components": spec["components"]})
    return not list(validator.iter_errors(instance))


def _form_accepted(app, path: str, fields: dict[str, str], files: int) -> bool:
    """Whether the view takes the form: the body _multipart_body builds from it, validated by the model the
    view parses it with."""
    import io

    from pydantic import ValidationError

    from cortex_tasks.core.errors import CortexError
    from cortex_web.blueprints.batch import BatchSubmitRequest
    from cortex_web.blueprints.vectors import SearchRequest, UpsertRequest
    from cortex_web.errors import ApiError
    from cortex_web.request_body import _multipart_body
    from cortex_web.schemas import PredictRequest

    models = {"PredictRequest": PredictRequest, "BatchSubmitRequest": BatchSubmitRequest,
              "UpsertRequest": UpsertRequest, "SearchRequest": SearchRequest}
    data: dict[str, Any] = dict(fields)
    if files:
        data["inputs"] = [(io.BytesIO(b"\x89PNG picture %d" % index), f"picture-{index}.png")
                          for index in range(files)]
    url = path.replace("{collection}", "photos")
    with app.test_request_context(url, method="POST", data=data, content_type="multipart/form-data"):
        try:
            models[UPLOAD_ROUTES[path]].model_validate(_multipart_body())
        except (ApiError, ValidationError, CortexError):  # each a 4xx
            return False
    return True


@pytest.mark.parametrize(("path", "fields", "files"), [
    ("/api/v1/predict", {"task": "image_embed"}, 2),
    ("/api/v1/predict", {"task": "image_classify", "model": "efficientnet-lite0-imagenet", "priority": "high",
                         "params": '{"top_k": 3}', "wait": "10", "sensitive": "true"}, 1),
    ("/api/v1/predict", {"task": "transcribe", "params": '{"language": "en"}', "wait": "null"}, 1),
    ("/api/v1/predict", {"request": '{"task": "embed", "inputs": ["a text"]}'}, 0),
    ("/api/v1/predict", {"request": '{"task": "image_embed", "wait": 5}'}, 1),
    ("/api/v1/predict", {"request": '{"task": "image_embed"', "wait": "5"}, 1),  # not JSON
    ("/api/v1/predict", {"request": '["image_embed"]'}, 1),  # JSON, not an object
    ("/api/v1/predict", {"task": "image_embed"}, 0),  # no inputs
    ("/api/v1/predict", {"task": "embed", "inputs": "a text"}, 0),  # inputs as text: not files
    ("/api/v1/predict", {"task": "image_embed", "sensitive": "True"}, 1),  # not JSON
    ("/api/v1/predict", {"task": "image_embed", "wait": "31"}, 1),
    ("/api/v1/predict", {"task": "image_embed", "params": "[3]"}, 1),
    ("/api/v1/predict", {"task": "image_embed", "priority": "urgent"}, 1),
    ("/api/v1/predict", {"task": "image_embed", "model": "../up"}, 1),
    ("/api/v1/predict", {"task": "image_embed", "top_k": "3"}, 1),  # not a field of the body
    ("/api/v1/predict/batch", {"task": "image_classify", "wait": "1"}, 3),
    ("/api/v1/batch/submit", {"task": "image_embed", "sensitive": "false", "params": "{}"}, 2),
    ("/api/v1/batch/submit", {"task": "image_embed", "wait": "5"}, 1),  # a batch has no wait
    ("/api/v1/vectors/{collection}", {"request": '{"items": [{"id": "a", "text": "words"}]}', "wait": "5"}, 0),
    ("/api/v1/vectors/{collection}", {"wait": "5"}, 0),
    ("/api/v1/vectors/{collection}", {"items": '[{"id": "a", "text": "words"}]'}, 0),  # items only in request
    ("/api/v1/vectors/{collection}", {"request": '{"items": [{"id": "a", "text": "words"}]}'}, 1),  # no inputs
    ("/api/v1/vectors/{collection}/search", {"text": "a cat on a mat", "wait": "5"}, 0),
    ("/api/v1/vectors/{collection}/search", {"image_ref": "tenants/default/images/cat.png"}, 0),
    ("/api/v1/vectors/{collection}/search", {"request": '{"vector": [0.1, 0.2], "k": 3}'}, 0),
    ("/api/v1/vectors/{collection}/search", {"text": "a cat", "image": "aGVsbG8="}, 0),  # two queries
    ("/api/v1/vectors/{collection}/search", {"text": "a cat", "k": "3"}, 0),  # k only in request
    ("/api/v1/vectors/{collection}/search", {"wait": "5"}, 0),
    ("/api/v1/vectors/{collection}/search", {"text": " "}, 0),
])
def test_an_upload_the_document_allows_is_one_the_view_accepts(app, spec, path, fields, files):
    documented = _form_documented(spec, path, fields, files)
    assert documented == _form_accepted(app, path, fields, files), (path, fields, files)
