"""Batch jobs through the HTTP API with real workers: chunked on the batch queue, progress counted in
PostgreSQL, results in object storage, per-item failures, idempotency, and a worker killed mid-batch."""
from __future__ import annotations

import io
import math
import os
import signal
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cortex_tasks.core.settings import reset_settings_cache
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.runtime.batch.recovery import requeue_stalled_batches
from tests.support.processes import WorkerProcess

# These tests read or write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("in_default_tenant")

WORDS = ("river", "market", "violin", "engine", "harvest", "orbit", "ledger", "meadow", "signal", "canyon",
         "lantern", "protein", "glacier", "tariff", "sonnet", "circuit")


def sentence(i: int) -> str:
    """Distinct, deterministic sentences of varied length."""
    picked = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(3 + i % 9)]
    return f"Item {i}: the {' and the '.join(picked)} were noted on day {i % 31}."


def wait_until_finished(api, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/api/v1/batch/progress/{job_id}").get_json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.25)
    raise AssertionError(f"batch {job_id} did not finish: {body}")


def all_items(api, job_id: str, size: int = 200) -> list[dict]:
    items, page = [], 1
    while True:
        body = api.get(f"/api/v1/batch/results/{job_id}?page={page}&size={size}").get_json()
        items.extend(body["items"])
        if "next" not in body:
            return items
        page += 1


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_thousand_item_batch_completes_in_order_with_correct_results(api, workers):
    texts = [sentence(i) for i in range(1000)]
    response = api.post("/api/v1/batch/submit", {"task": "embed", "inputs": texts})
    assert response.status_code == 202, response.get_json()
    submitted = response.get_json()
    assert submitted["chunks"] == 10 and submitted["total"] == 1000
    job_id = submitted["job_id"]

    progress = wait_until_finished(api, job_id)
    assert progress["status"] == "succeeded", progress
    assert (progress["done"], progress["failed"], progress["total"]) == (1000, 0, 1000)
    assert progress["chunks"]["finished"] == 10

    items = all_items(api, job_id)
    assert [item["index"] for item in items] == list(range(1000))
    assert all(item["status"] == "succeeded" and len(item["output"]) == 384 for item in items)
    # The catalogue's model, loaded here the way a worker loads it: the same vectors for the same texts,
    # wherever they sat in the batch.
    from cortex_tasks.runtime.models.loaded import get_model

    reference = get_model("all-MiniLM-L6-v2").predict([texts[i] for i in (0, 99, 100, 537, 999)], {})
    for expected, index in zip(reference, (0, 99, 100, 537, 999)):
        assert cosine(expected, items[index]["output"]) > 0.99999
    assert cosine(items[0]["output"], items[1]["output"]) < 0.999  # not one vector repeated

    job = api.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["kind"] == "batch" and job["progress"] == {"done": 1000, "total": 1000}
    assert job["result_ref"] == f"batches/{job_id}/results.parquet"
    assert job["result"]["done"] == 1000

    default_page = api.get(f"/api/v1/batch/results/{job_id}").get_json()
    assert default_page["size"] == 50 and len(default_page["items"]) == 50 and default_page["pages"] == 20
    assert api.get(f"/api/v1/batch/results/{job_id}?size=201").status_code == 422

    parquet = api.get(f"/api/v1/batch/results/{job_id}?format=parquet")
    assert parquet.status_code == 200 and parquet.mimetype == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(parquet.data))
    assert table.num_rows == 1000 and table.column("index").to_pylist() == list(range(1000))
    assert table.column("output")[537].as_py() == items[537]["output"]
    arrow = api.get(f"/api/v1/batch/results/{job_id}?format=arrow")
    with pa.ipc.open_stream(io.BytesIO(arrow.data)) as reader:
        assert reader.read_all().num_rows == 1000
    assert api.get(f"/api/v1/batch/errors/{job_id}").get_json()["errors"] == []


def test_bad_items_are_reported_exactly_and_the_rest_succeed(api, workers):
    texts = [sentence(i) for i in range(150)]
    bad = {3: "", 47: "   ", 99: 42, 100: {"text": "an object"}, 101: "x" * 10_001, 149: "bell\x07 character"}
    for index, value in bad.items():
        texts[index] = value
    job_id = api.post("/api/v1/batch/submit", {"task": "embed", "inputs": texts}).get_json()["job_id"]
    progress = wait_until_finished(api, job_id)
    assert progress["status"] == "succeeded"
    assert (progress["done"], progress["failed"]) == (150 - len(bad), len(bad))

    errors = api.get(f"/api/v1/batch/errors/{job_id}").get_json()
    assert [entry["index"] for entry in errors["errors"]] == sorted(bad)
    assert all(entry["error"]["code"] == "invalid_input" for entry in errors["errors"])
    assert errors["errors"][2]["input"] == 42
    items = all_items(api, job_id)
    assert [item["index"] for item in items if item["status"] == "failed"] == sorted(bad)
    assert all(len(item["output"]) == 384 for item in items if item["status"] == "succeeded")


def test_unknown_task_and_oversized_batch_are_rejected(api):
    assert api.post("/api/v1/batch/submit", {"task": "nope", "inputs": ["a"]}).status_code == 404
    too_many = api.post("/api/v1/batch/submit", {"task": "embed", "inputs": ["a"] * 1001})
    assert too_many.status_code == 422 and too_many.get_json()["error"]["code"] == "too_many_inputs"
    assert api.post("/api/v1/batch/submit", {"task": "embed", "inputs": []}).status_code == 422


def test_idempotency_key_same_body_same_job_other_body_422_and_concurrent_duplicates(app, api, keys, workers):
    key = f"nightly-{uuid.uuid4()}"
    body = {"task": "embed", "inputs": [sentence(i) for i in range(250)]}
    answers: list[dict] = []

    def submit() -> None:
        client = api.as_key(keys["inference_user"])
        client.client = app.test_client()
        response = client.post("/api/v1/batch/submit", body, headers={"Idempotency-Key": key})
        answers.append({**response.get_json(), "http": response.status_code})

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {answer["http"] for answer in answers} == {202}
    assert len({answer["job_id"] for answer in answers}) == 1
    assert sum(answer["created"] for answer in answers) == 1
    job_id = answers[0]["job_id"]
    with session_scope() as session:
        from sqlalchemy import text

        assert session.execute(text("SELECT count(*) FROM batch_chunks WHERE job_id = :id"),
                               {"id": job_id}).scalar() == 3

    again = api.post("/api/v1/batch/submit", body, headers={"Idempotency-Key": key})
    assert again.status_code == 202 and again.get_json()["job_id"] == job_id
    other = api.post("/api/v1/batch/submit", {**body, "inputs": ["something else"]},
                     headers={"Idempotency-Key": key})
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert wait_until_finished(api, job_id)["done"] == 250


def test_batch_survives_its_worker_being_killed_mid_run(api, monkeypatch):
    """The batch's worker is SIGKILLed (master and pool) after some chunks finished: a new worker takes
    over the chunk that was running once the visibility timeout has passed (shortened to seconds here),
    runs the rest, and the finished chunks are not run again."""
    queue = f"batch-kill-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("CORTEX_BATCH_QUEUE", queue)
    reset_settings_cache()
    env = {"CORTEX_VISIBILITY_TIMEOUT": "8", "CORTEX_UNACKED_RESTORE_INTERVAL": "1"}
    first = WorkerProcess(queue, pool="prefork", concurrency=1, name="batch-doomed", env=env).start()
    texts = [sentence(i) for i in range(1000)]
    try:
        job_id = api.post("/api/v1/batch/submit", {"task": "embed", "inputs": texts}).get_json()["job_id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            progress = api.get(f"/api/v1/batch/progress/{job_id}").get_json()
            if progress["done"] >= 100:
                break
            time.sleep(0.05)
        assert 100 <= progress["done"] < 1000, progress
    finally:
        first.kill(signal.SIGKILL)
    with session_scope() as session:
        from sqlalchemy import text

        finished_before = set(session.execute(text(
            "SELECT chunk_index FROM batch_chunks WHERE job_id = :id AND status = 'succeeded'"),
            {"id": job_id}).scalars())
    assert finished_before and len(finished_before) < 10
    second = WorkerProcess(queue, pool="prefork", concurrency=1, name="batch-heir", env=env).start()
    try:
        try:
            progress = wait_until_finished(api, job_id, timeout=120)
        except AssertionError:
            # The kill can land between marking a chunk queued and sending its message; then no redelivery
            # can bring it back and the stale-job sweep (Beat, every 5 minutes) re-sends it. Run the sweep
            # as Beat would, with the staleness bound shortened like the visibility timeout above.
            monkeypatch.setenv("CORTEX_BATCH_STALE_CHUNK_SECONDS", "5")
            reset_settings_cache()
            time.sleep(6)
            assert requeue_stalled_batches()["chunks_requeued"] >= 1
            progress = wait_until_finished(api, job_id, timeout=180)
    finally:
        second.stop()
        reset_settings_cache()
    assert progress["status"] == "succeeded", progress
    assert (progress["done"], progress["failed"]) == (1000, 0)
    items = all_items(api, job_id)
    assert [item["index"] for item in items] == list(range(1000))
    with session_scope() as session:
        from sqlalchemy import text

        attempts = dict(session.execute(text(
            "SELECT chunk_index, attempts FROM batch_chunks WHERE job_id = :id"), {"id": job_id}).all())
    assert all(attempts[index] == 1 for index in finished_before)  # resumed, not redone
    assert os.environ["CORTEX_BATCH_QUEUE"] == queue
