"""POST /api/v1/predict with task=embed runs the bundled MiniLM on the gpu queue, end to end."""
from __future__ import annotations

import math
import time
import uuid

import pytest


# Calls this module makes to the stores directly act for the default tenant, as the suite's keys do.
pytestmark = pytest.mark.usefixtures("in_default_tenant")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embed_returns_384_dimensional_normalised_vectors(api, workers):
    response = api.post("/api/v1/predict", {"task": "embed", "inputs": [
        "The cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue grew by 4%."]})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model"] == {"name": "all-MiniLM-L6-v2", "version": "1"}
    vectors = body["outputs"]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in vectors)
    # Real semantics: the paraphrase is closer than the unrelated sentence.
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_job_record_has_result_and_owner_can_read_it(api, workers):
    # Unique texts: a repeated one would be answered by the cache, without a job.
    body = api.post("/api/v1/predict", {"task": "embed", "inputs": [f"hello {uuid.uuid4()}"]}).get_json()
    job = api.get(f"/api/v1/jobs/{body['job_id']}").get_json()
    assert job["status"] == "succeeded"
    assert job["kind"] == "predict"
    assert job["progress"] == {"done": 1, "total": 1}
    assert len(job["result"]["outputs"][0]) == 384
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


def test_wait_zero_answers_202_then_job_completes(api, workers):
    response = api.post("/api/v1/predict", {"task": "embed", "inputs": [f"poll me {uuid.uuid4()}"], "wait": 0})
    assert response.status_code == 202
    body = response.get_json()
    assert body["status_url"] == f"/api/v1/jobs/{body['job_id']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = api.get(body["status_url"]).get_json()
        if job["status"] == "succeeded":
            break
        time.sleep(0.2)
    assert job["status"] == "succeeded"


def test_another_users_job_is_404_but_admin_sees_it(api, admin_api, workers):
    from cortex_tasks.core.auth.keys import create_key

    job_id = api.post("/api/v1/predict", {"task": "embed", "inputs": [f"mine {uuid.uuid4()}"]}).get_json()["job_id"]
    stranger = api.as_key(create_key("inference_user").key)
    assert stranger.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert admin_api.get(f"/api/v1/jobs/{job_id}").status_code == 200
