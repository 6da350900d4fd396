"""The predict endpoints beyond /predict: batch (inline item errors), stream (SSE) and pipeline."""
from __future__ import annotations

import json
import time

import pytest

from cortex_tasks.core.jobs import store

# Calls this module makes to the stores directly act for the default tenant, as the suite's keys do.
pytestmark = pytest.mark.usefixtures("in_default_tenant")

# These tests read or write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("in_default_tenant")


def sse_events(response) -> list[tuple[str, dict]]:
    events = []
    for block in response.get_data(as_text=True).strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_batch_answers_every_item(api, workers):
    response = api.post("/api/v1/predict/batch", {"task": "embed", "inputs": ["one", "two", "three"]})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["errors"] == 0
    assert [len(vector) for vector in body["outputs"]] == [384, 384, 384]


def test_stream_sends_one_event_per_item_then_done(api, workers):
    response = api.post("/api/v1/predict/stream", {"task": "embed", "inputs": ["alpha", "beta"]})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = sse_events(response)
    assert [name for name, _ in events] == ["start", "item", "item", "done"]
    assert [data["index"] for name, data in events if name == "item"] == [0, 1]
    assert events[-1][1]["status"] == "succeeded"


def test_stream_generate_sends_tokens_and_records_the_text(api, workers):
    response = api.post("/api/v1/predict/stream", {"task": "generate", "inputs": ["Name three colours."],
                                                  "params": {"max_tokens": 12, "temperature": 0}})
    events = sse_events(response)
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done", events[-3:]
    tokens = [data["text"] for name, data in events if name == "token"]
    assert len(tokens) >= 2
    item = next(data for name, data in events if name == "item")
    assert item["output"]["text"] == "".join(tokens)
    job = store.get_job(events[0][1]["job_id"])
    assert job.status == "succeeded" and job.result["outputs"][0]["text"] == item["output"]["text"]


def test_stream_disconnect_cancels_generation(app, keys, workers):
    client = app.test_client()
    response = client.post("/api/v1/predict/stream", headers={"Authorization": f"Bearer {keys['inference_user']}"},
                           json={"task": "generate", "inputs": ["Write a long story about the sea."],
                                 "params": {"max_tokens": 400, "temperature": 0}}, buffered=False)
    chunks = response.response  # the SSE generator
    first = next(iter(chunks)).decode()
    job_id = json.loads(first.split("data: ", 1)[1])["job_id"]
    for chunk in chunks:  # wait for the first token, then hang up
        if b"event: token" in chunk:
            break
    response.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store.get_job(job_id).status == "running":
        time.sleep(0.2)
    job = store.get_job(job_id)
    assert job.status == "cancelled", job.status


def test_pipeline_masks_then_embeds(api, workers):
    response = api.post("/api/v1/predict/pipeline", {
        "steps": [{"task": "pii_mask"}, {"task": "embed"}],
        "inputs": ["Write to jane.roe@example.org about the invoice."]})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [step["task"] for step in body["steps"]] == ["pii_mask", "embed"]
    masked = body["steps"][1]["inputs"][0]
    assert "jane.roe" not in masked and "example.org" in masked
    assert len(body["outputs"][0]) == 384


def test_pipeline_language_then_ner_keeps_the_text(api, workers):
    response = api.post("/api/v1/predict/pipeline", {
        "steps": [{"task": "language"}, {"task": "ner"}], "inputs": ["Barack Obama was born in Hawaii."]})
    assert response.status_code == 200, response.get_json()
    steps = response.get_json()["steps"]
    assert steps[1]["inputs"] == ["Barack Obama was born in Hawaii."]


def test_pipeline_rejects_unknown_step(api):
    response = api.post("/api/v1/predict/pipeline", {"steps": [{"task": "nope"}], "inputs": ["x"]})
    assert response.status_code == 404
