"""Overload protection: load shedding of low-priority work, circuit breaking per model (with fallback),
and priority aging so that bulk work is not starved by a stream of interactive work."""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import redis

from cortex_tasks import app as celery_app
from cortex_tasks.core.jobs import store
from cortex_tasks.core.load_control.aging import promote_aged
from cortex_tasks.core.load_control.circuit import CircuitBreaker, CircuitPolicy
from cortex_tasks.core.load_control.shedding import LoadShedder, SheddingPolicy, read_queue_load
from cortex_tasks.core.queues import priority_of
from cortex_tasks.core.settings import get_settings
from tests.support.processes import WorkerProcess

# These tests read or write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("in_default_tenant")


@pytest.fixture()
def client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


@pytest.fixture()
def swap_extension(app):
    """Replace one of the app's overload-control objects for a test, then put the original back."""
    saved = {}

    def swap(name: str, value):
        saved.setdefault(name, app.extensions[name])
        app.extensions[name] = value

    yield swap
    app.extensions.update(saved)


def enqueue_embed(queue: str, priority_class: str, inputs: list[str]) -> str:
    priority = priority_of(priority_class)
    job, _ = store.create_job(store.NewJob(owner="load-test", kind="predict", task="embed",
                                           model="all-MiniLM-L6-v2", priority=priority, total=len(inputs)))
    celery_app.send_task("cortex.inference.run_gpu_jobs", queue=queue, priority=priority, task_id=job.id, kwargs={
        "task": "embed", "model": "all-MiniLM-L6-v2", "params": {}, "priority": priority,
        "jobs": [{"job_id": job.id, "inputs": inputs}]})
    return job.id


def test_queue_load_reads_depth_and_oldest_age(client):
    queue = f"shed-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        enqueue_embed(queue, "low", ["x"])
    time.sleep(0.3)
    load = read_queue_load(client, queue)
    assert load.depth == 3 and load.oldest_age >= 0.3
    shedder = LoadShedder(client, SheddingPolicy(max_depth=2, max_age_seconds=60))
    assert "holds 3 messages" in shedder.refusal(queue, "low")[0]
    assert shedder.refusal(queue, "normal") is None and shedder.refusal(queue, "high") is None
    by_age = LoadShedder(client, SheddingPolicy(max_depth=100, max_age_seconds=0.1))
    assert "waited" in by_age.refusal(queue, "low")[0]
    client.delete(queue, *[f"{queue}:{step}" for step in range(1, 10)])


def test_overloaded_low_priority_requests_get_503_with_retry_after(api, client, swap_extension, workers):
    swap_extension("cortex_shedder", LoadShedder(client, SheddingPolicy(max_depth=-1, max_age_seconds=60)))
    text = f"shed me {uuid.uuid4()}"
    response = api.post("/api/v1/predict", {"task": "embed", "inputs": [text], "priority": "low"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "overloaded"
    assert int(response.headers["Retry-After"]) >= 1
    # Interactive work still goes through.
    assert api.post("/api/v1/predict", {"task": "embed", "inputs": [text]}).status_code == 200
    metrics = api.client.get("/metrics").get_data(as_text=True)
    assert 'cortex_shed_requests_total{queue="gpu",reason="depth"}' in metrics


def write_broken_classifier(name: str) -> None:
    from cortex_tasks.core.catalogue.user_models import models_dir

    folder = models_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    # A folder that looks like a DistilBERT classifier, but its weights are garbage: loading it fails.
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["DistilBertForSequenceClassification"], "model_type": "distilbert",
        "id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}}))
    (folder / "model.safetensors").write_bytes(b"these are not weights")
    (folder / "tokenizer.json").write_text("{}")


def test_failing_model_opens_its_circuit_then_half_opens(api, client, swap_extension, workers):
    name = f"broken-{uuid.uuid4().hex[:6]}"
    write_broken_classifier(name)
    swap_extension("cortex_circuits", CircuitBreaker(client, CircuitPolicy(
        error_threshold=0.5, min_requests=3, reset_timeout_seconds=2.0), state_ttl=0.0))
    statuses = [api.post("/api/v1/predict", {"task": "classify", "model": name, "wait": 30,
                                            "inputs": [f"text {i} {uuid.uuid4()}"]}).status_code for i in range(3)]
    assert statuses == [502, 502, 502]
    refused = api.post("/api/v1/predict", {"task": "classify", "model": name, "inputs": ["one more"]})
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "circuit_open"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    metrics = api.client.get("/metrics").get_data(as_text=True)
    assert f'cortex_circuit_trips_total{{model="{name}"}} 1.0' in metrics
    time.sleep(2.2)  # reset timeout: the next request is let through to the model again
    retried = api.post("/api/v1/predict", {"task": "classify", "model": name, "inputs": ["half open"], "wait": 30})
    assert retried.status_code == 502 and retried.get_json()["error"]["code"] == "model_error"


def test_open_circuit_routes_to_the_fallback_model(api, client, swap_extension, workers):
    breaker = CircuitBreaker(client, CircuitPolicy(reset_timeout_seconds=5.0), state_ttl=0.0)
    swap_extension("cortex_circuits", breaker)
    client.set(breaker._open_key("presidio-spacy-sm"), "1", px=5000)
    response = api.post("/api/v1/predict", {"task": "pii_detect", "wait": 30,
                                           "inputs": [f"Mail me at ann.lee@example.com {uuid.uuid4()}"]})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model"]["name"] == "presidio-patterns"
    assert body["model"]["fallback_from"] == "presidio-spacy-sm"
    assert any("EMAIL" in entity["type"] for entity in body["outputs"][0]["entities"]), body["outputs"]
    client.delete(breaker._open_key("presidio-spacy-sm"))


@pytest.mark.slow
def test_aging_lets_bulk_work_through_a_stream_of_interactive_work(client):
    queue = f"aging-{uuid.uuid4().hex[:6]}"
    low = [enqueue_embed(queue, "low", [f"bulk {i} {uuid.uuid4()}"]) for i in range(3)]
    time.sleep(1.2)  # the bulk jobs are now older than twice the aging threshold
    long_inputs = [f"interactive sentence number {j} with a few more words in it" for j in range(32)]
    high = [enqueue_embed(queue, "high", [f"{text} {uuid.uuid4()}" for text in long_inputs]) for _ in range(30)]
    stop = threading.Event()

    def age_periodically() -> None:  # what Beat does every few seconds, here every 0.2 s
        while not stop.is_set():
            promote_aged(client, queue, max_age=0.5)
            time.sleep(0.2)

    ager = threading.Thread(target=age_periodically, daemon=True)
    worker = WorkerProcess(queue, pool="solo", concurrency=1, name="aging")
    ager.start()
    worker.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            jobs = {job_id: store.get_job(job_id) for job_id in low + high}
            if all(job.status == "succeeded" for job in jobs.values()):
                break
            time.sleep(0.5)
    finally:
        stop.set()
        worker.stop()
    assert all(job.status == "succeeded" for job in jobs.values())
    last_high_start = max(jobs[j].started_at for j in high)
    # Without aging the bulk jobs would run after every interactive one; promoted, they overtake most.
    assert max(jobs[j].started_at for j in low) < last_high_start
    overtaken = sum(jobs[j].started_at > max(jobs[k].started_at for k in low) for j in high)
    assert overtaken >= 20
