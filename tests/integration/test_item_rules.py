"""The same bad item gets the same error code from every entry point that takes items
(core/validation/items.py): /predict, /predict/batch, /batch/submit (per item, in the worker), /vectors and
/documents."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

CODE = "invalid_input"
BAD_TEXTS = {"over-long text": "x" * 10_001, "control character": "bell\x07 character", "empty text": "",
             "blank text": "   "}
# JSON cannot spell NaN or Infinity (the body parser refuses them with 400 non_finite_number), but 1e999
# decodes to infinity: the item rule is what catches it.
BAD_VECTORS = {"infinite value": [1.0, float("inf"), 0.0], "too many values": [0.5] * 4097}


def post_raw(api, path: str, body: dict[str, Any]):
    """POST with infinities written as 1e999, a number JSON allows and Python decodes to inf."""
    raw = json.dumps(body).replace("Infinity", "1e999")
    return api.client.post(path, data=raw, content_type="application/json", headers=api.headers())


def assert_refused(response) -> None:
    body = response.get_json()
    assert (response.status_code, body["error"]["code"]) == (422, CODE), body


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("text", BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
@pytest.mark.parametrize("path", ["/api/v1/predict", "/api/v1/predict/batch"])
def test_a_bad_text_is_refused_by_predict(api, path, text):
    assert_refused(api.post(path, {"task": "embed", "inputs": ["a fine text", text]}))


@pytest.mark.parametrize("vector", BAD_VECTORS.values(), ids=BAD_VECTORS.keys())
@pytest.mark.parametrize("path", ["/api/v1/predict", "/api/v1/predict/batch"])
def test_a_bad_vector_is_refused_by_predict(api, path, vector):
    assert_refused(post_raw(api, path, {"task": "reduce", "inputs": [[1.0, 2.0, 3.0], vector]}))


@pytest.mark.parametrize("text", BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
def test_a_bad_text_is_refused_by_vectors(api, text):
    name = unique("items")
    assert_refused(api.post(f"/api/v1/vectors/{name}", {"items": [{"id": "a", "text": text}]}))
    assert_refused(api.post(f"/api/v1/vectors/{name}/search", {"text": text}))


@pytest.mark.parametrize("vector", BAD_VECTORS.values(), ids=BAD_VECTORS.keys())
def test_a_bad_vector_is_refused_by_vectors(api, vector):
    name = unique("items")
    assert_refused(post_raw(api, f"/api/v1/vectors/{name}", {"items": [{"id": "a", "vector": vector}]}))
    assert_refused(post_raw(api, f"/api/v1/vectors/{name}/search", {"vector": vector}))


@pytest.mark.parametrize("text", [text for name, text in BAD_TEXTS.items() if name != "over-long text"],
                         ids=[name for name in BAD_TEXTS if name != "over-long text"])
def test_a_bad_text_is_refused_by_documents(api, text):
    # A document's content has its own, larger limit (50,000 characters): an over-long *item* text is a
    # fine document, so every other text rule applies here.
    document = {"content": text}
    assert_refused(api.post("/api/v1/documents", {"collection": unique("items"), "documents": [document]}))
    if text.strip():  # an id is never blank (a 422 invalid_request by its own length rule)
        document = {"content": "fine content", "id": text}
        assert_refused(api.post("/api/v1/documents", {"collection": unique("items"), "documents": [document]}))


def batch_errors(api, task: str, inputs: list[Any]) -> list[dict[str, Any]]:
    submitted = post_raw(api, "/api/v1/batch/submit", {"task": task, "inputs": inputs})
    assert submitted.status_code == 202, submitted.get_json()
    job_id = submitted.get_json()["job_id"]
    deadline = time.monotonic() + 240
    while api.get(f"/api/v1/batch/progress/{job_id}").get_json()["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, f"batch {job_id} did not finish"
        time.sleep(0.25)
    return api.get(f"/api/v1/batch/errors/{job_id}").get_json()["errors"]


def test_the_same_bad_items_fail_alone_in_a_batch_with_the_same_code(api, workers):
    # Every item is bad, so the chunk fails them without calling a model.
    for task, bad in (("embed", list(BAD_TEXTS.values())), ("reduce", [BAD_VECTORS["too many values"]] * 2)):
        errors = batch_errors(api, task, bad)
        assert [(entry["index"], entry["error"]["code"]) for entry in errors] == [
            (index, CODE) for index in range(len(bad))], errors


def test_a_non_finite_number_refuses_the_batch_with_the_same_code(api):
    # It cannot be stored with the batch (PostgreSQL's JSON has no Infinity; this was a 500), so the
    # gateway refuses the request instead of failing the item later.
    response = post_raw(api, "/api/v1/batch/submit",
                        {"task": "reduce", "inputs": [[1.0, 2.0, 3.0], BAD_VECTORS["infinite value"]]})
    assert_refused(response)
    assert response.get_json()["error"]["details"] == {"index": 1}
