"""Personal data at rest, with the real stack: pii_detect (and any request marked sensitive) leaves no
clear input or result in Redis (cache, query log, queues, results) or PostgreSQL (jobs, batch chunks) or
the object store, while its owner still reads the results; keys rotate; discard mode keeps nothing.

The session's data folder holds a data key, as `cortex up` makes one (tests/conftest.py), so the workers
seal. Tests that change keys or the storage mode do so in this process only: they write and read rows
through the same store functions the workers use.
"""
from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from typing import Any

import pytest
import redis
from sqlalchemy import select

from cortex_tasks.core.auth.keys import verify_key
from cortex_tasks.core.cache.warming import QUERY_COUNTER
from cortex_tasks.core.jobs import store
from cortex_tasks.core.settings import get_settings, reset_settings_cache
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.object_store import get_object_store
from cortex_tasks.core.storage.resealing import reseal_all
from cortex_tasks.core.storage.tables import BatchChunk, Job
from tests.support.waiting import wait_for

# These tests read and write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("in_default_tenant")

POLL_SECONDS = 180  # a fresh pool child loads spaCy on its first request


def redis_contents() -> bytes:
    """Every key and every value in Redis, whatever its type, as one blob to search."""
    client = redis.Redis.from_url(get_settings().redis_url)
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                parts += [field, value]
        elif kind == b"set":
            parts.extend(client.smembers(key))
        elif kind == b"zset":
            parts.extend(client.zrange(key, 0, -1))
        elif kind == b"stream":
            for _id, fields in client.xrange(key):
                for field, value in fields.items():
                    parts += [field, value]
    return b"\n".join(parts)


def stored_rows(job_ids: list[str]) -> str:
    """The jobs' params, results and errors, and their batch chunks' inputs, as PostgreSQL returns them."""
    with session_scope() as session:
        jobs = session.execute(select(Job.params, Job.result, Job.error).where(Job.id.in_(job_ids))).all()
        chunks = session.execute(select(BatchChunk.inputs, BatchChunk.errors)
                                 .where(BatchChunk.job_id.in_(job_ids))).all()
    return json.dumps([list(row) for row in jobs] + [list(row) for row in chunks])


def personal_text() -> tuple[str, dict[str, str]]:
    email = f"jane.{uuid.uuid4().hex[:10]}@example.com"
    found = {"EMAIL": email, "PHONE": "+1 212-555-0199", "US_SSN": "536-80-4398"}
    return f"Write to {email} or call {found['PHONE']}; SSN {found['US_SSN']}.", found


def assert_nowhere(values: dict[str, str], job_ids: list[str]) -> None:
    QUERY_COUNTER.flush()  # the gateway's query log, had it recorded anything
    in_redis, in_rows = redis_contents(), stored_rows(job_ids)
    for kind, value in values.items():
        assert value.encode() not in in_redis, f"{kind} {value!r} is in Redis"
        assert value not in in_rows, f"{kind} {value!r} is in PostgreSQL"


def owner_of(api) -> str:
    principal = verify_key(api.key)
    assert principal is not None
    return principal.key_id


def test_pii_detect_leaves_no_personal_data_at_rest_and_its_owner_reads_it(api, workers):
    text, values = personal_text()
    body = api.predict("pii_detect", [text], poll_seconds=POLL_SECONDS)
    found = {entity["type"]: entity["text"] for entity in body["outputs"][0]["entities"]}
    assert {kind: found.get(kind) for kind in values} == values
    assert body["cached"] is False

    job = store.get_job(body["job_id"])
    assert job.result["sealed"] == 1 and job.result["kid"] == "k1"  # the session's key file
    shown = api.get(f"/api/v1/jobs/{body['job_id']}").get_json()
    assert shown["status"] == "succeeded" and shown["result"]["outputs"] == body["outputs"]

    # Asked again: not answered from a cache (there is none for it), and still nothing at rest.
    again = api.predict("pii_detect", [text], poll_seconds=POLL_SECONDS)
    assert again["cached"] is False and again["job_id"] != body["job_id"]
    # The worker's after-reply work (cache writes) would run right after the answer: give it that moment.
    time.sleep(1.0)
    assert_nowhere({**values, "text": text}, [body["job_id"], again["job_id"]])


def test_a_request_marked_sensitive_is_not_cached_and_others_still_are(api, workers):
    plain = f"an ordinary sentence {uuid.uuid4().hex}"
    first = api.post("/api/v1/predict", {"task": "embed", "inputs": [plain], "wait": 30}).get_json()
    second = wait_for(lambda: (answer := api.post("/api/v1/predict", {"task": "embed", "inputs": [plain]})
                               .get_json())["cached"] and answer, 10, "the embedding from the cache")
    assert second["outputs"] == first["outputs"]
    QUERY_COUNTER.flush()
    assert plain.encode() in redis_contents()  # the query log holds ordinary inputs: the scan sees it

    secret = f"my diagnosis is {uuid.uuid4().hex}"
    request = {"task": "embed", "inputs": [secret], "wait": 30, "sensitive": True}
    marked = api.post("/api/v1/predict", request)
    assert marked.status_code == 200, marked.get_json()
    time.sleep(1.0)
    repeated = api.post("/api/v1/predict", request).get_json()
    assert repeated["cached"] is False and repeated["job_id"]
    assert repeated["outputs"] == marked.get_json()["outputs"]
    assert store.get_job(repeated["job_id"]).result["sealed"] == 1
    assert_nowhere({"text": secret}, [marked.get_json()["job_id"], repeated["job_id"]])


def test_sensitive_batch_is_sealed_in_rows_and_objects(api, workers):
    texts, values = zip(*(personal_text() for _ in range(3)))
    response = api.post("/api/v1/batch/submit", {"task": "pii_detect", "inputs": list(texts)})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    progress = wait_for(lambda: (body := api.get(f"/api/v1/batch/progress/{job_id}").get_json())["status"]
                        in ("succeeded", "failed") and body, POLL_SECONDS, "the batch")
    assert progress["status"] == "succeeded", progress
    items = api.get(f"/api/v1/batch/results/{job_id}").get_json()["items"]
    assert [{entity["type"]: entity["text"] for entity in item["output"]["entities"]}["EMAIL"] for item in items] \
        == [found["EMAIL"] for found in values]
    assert api.get(f"/api/v1/batch/results/{job_id}?format=parquet").status_code == 200

    job = store.get_job(job_id)
    objects = get_object_store()
    stored = b"".join(objects.get(name) for name in objects.list(f"batches/{job_id}/"))
    assert stored  # the chunk objects and the merged file
    for found in values:
        assert found["EMAIL"].encode() not in stored
    assert job.params["sensitive"] is True
    assert_nowhere({f"{kind}{i}": value for i, found in enumerate(values) for kind, value in found.items()}
                   | {f"text{i}": text for i, text in enumerate(texts)}, [job_id])


@pytest.fixture()
def keys_env(monkeypatch: pytest.MonkeyPatch):
    """Set CORTEX_DATA_KEYS (and other variables) for this process, read afresh."""

    def configure(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        reset_settings_cache()

    return configure


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _finished_sensitive_job(owner: str, result: dict[str, Any]) -> str:
    """A pii_detect job recorded finished as a worker records it (store.record_finished)."""
    job_id = store.new_job_id()
    record = store.NewJob(owner=owner, kind="predict", task="pii_detect", model="presidio-patterns", total=1,
                          params={"entities": ["EMAIL_ADDRESS"]}, sensitive=True)
    assert store.record_finished({job_id: (store.SUCCEEDED, result)}, {job_id: record}, time.time()) == {job_id}
    return job_id


def test_key_rotation_reads_old_rows_seals_new_ones_under_the_new_key_and_reseals(api, keys_env):
    owner, k1, k2 = owner_of(api), _key(), _key()
    old_result = {"outputs": [{"entities": [{"type": "EMAIL", "text": "old@example.com"}]}]}
    keys_env(CORTEX_DATA_KEYS=f"k1:{k1}")
    old = _finished_sensitive_job(owner, old_result)
    assert store.get_job(old).result["kid"] == "k1" and store.get_job(old).params["kid"] == "k1"

    keys_env(CORTEX_DATA_KEYS=f"k2:{k2},k1:{k1}")
    assert api.get(f"/api/v1/jobs/{old}").get_json()["result"] == old_result
    new = _finished_sensitive_job(owner, {"outputs": []})
    assert store.get_job(new).result["kid"] == "k2"

    report = reseal_all()
    assert report.jobs >= 1 and not {where for where in report.failed if old in where}
    assert store.get_job(old).result["kid"] == "k2" and store.get_job(old).params["kid"] == "k2"

    keys_env(CORTEX_DATA_KEYS=f"k2:{k2}")  # k1 retired: the resealed row still reads
    assert api.get(f"/api/v1/jobs/{old}").get_json()["result"] == old_result

    keys_env(CORTEX_DATA_KEYS=f"k3:{_key()}")  # k2 lost: a clear error for the job, not a 500
    response = api.get(f"/api/v1/jobs/{old}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "succeeded" and body["result"] is None
    assert body["result_unavailable"]["code"] == "data_key_unavailable" and "'k2'" in body["result_unavailable"]["message"]


def test_a_sealed_value_moved_to_another_row_does_not_open(api, keys_env):
    owner = owner_of(api)
    keys_env(CORTEX_DATA_KEYS=f"k1:{_key()}")
    one = _finished_sensitive_job(owner, {"outputs": ["one"]})
    other = _finished_sensitive_job(owner, {"outputs": ["other"]})
    with session_scope() as session:
        session.get(Job, other).result = store.get_job(one).result
    body = api.get(f"/api/v1/jobs/{other}").get_json()
    assert body["result"] is None and body["result_unavailable"]["code"] == "sealed_value_invalid"


def test_discard_mode_keeps_no_sensitive_input_or_result(api, keys_env):
    keys_env(CORTEX_SENSITIVE_STORAGE="discard")
    job_id = _finished_sensitive_job(owner_of(api), {"outputs": [{"entities": [{"text": "gone@example.com"}]}]})
    job = store.get_job(job_id)
    assert "gone@example.com" not in json.dumps([job.params, job.result])
    assert job.result == {"discarded": 1, "reason": "sensitive"} and job.params == job.result
    body = api.get(f"/api/v1/jobs/{job_id}").get_json()
    assert body["status"] == "succeeded" and body["result"] is None
    assert body["result_unavailable"]["code"] == "sensitive_not_stored"

    # A batch must keep its inputs until its chunks run: refused rather than stored in clear.
    refused = api.post("/api/v1/batch/submit", {"task": "pii_mask", "inputs": ["mail a@b.example"]})
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "sensitive_storage_unavailable"
    marked = api.post("/api/v1/batch/submit", {"task": "embed", "inputs": ["x"], "sensitive": True})
    assert marked.status_code == 503
    assert api.post("/api/v1/batch/submit", {"task": "embed", "inputs": ["x"]}).status_code == 202


def test_no_key_configured_behaves_as_discard(api, keys_env, tmp_path):
    keys_env(CORTEX_DATA_DIR=str(tmp_path), CORTEX_DATA_KEYS="")  # no key file in this folder either
    assert get_settings().data_keys == {}
    job_id = _finished_sensitive_job(owner_of(api), {"outputs": ["x@example.com"]})
    assert store.get_job(job_id).result == {"discarded": 1, "reason": "sensitive"}
