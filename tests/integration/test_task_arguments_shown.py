"""What Flower and the worker logs see of a task's arguments: the `argsrepr`/`kwargsrepr` headers of the
message on the broker. Each message here is published by the code that publishes it in production
(the gateway's coalescer, the batch and training senders, the chat endpoint's submit_and_wait) to a
queue no worker reads, and read back from Redis as the broker holds it: ids and sizes, never the text.
"""
from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import redis

from cortex_tasks.core.batch.submission import send_chunks
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import ChatReplyMessage
from cortex_tasks.core.contracts.messages import read_prediction_message
from cortex_tasks.core.jobs.store import NewJob
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.training import submission as training
from cortex_web.coalescer import PendingJob, group_for
from tests.support.waiting import wait_for

# These tests send messages themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("in_default_tenant")

SECRET = "Jane Roe, jane.roe@example.com, SSN 536-80-4398"


@pytest.fixture()
def capture_queue():
    """A queue of its own, and every message published to it (kombu keeps one list per priority step)."""
    name = f"capture-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(get_settings().redis_url)

    def messages() -> list[dict[str, Any]]:
        found = []
        for key in client.scan_iter(match=f"{name}*"):
            found += [json.loads(raw) for raw in client.lrange(key, 0, -1)]
        return found

    yield name, messages
    for key in client.scan_iter(match=f"{name}*"):
        client.delete(key)


def only_message(messages) -> dict[str, Any]:
    found = wait_for(lambda: messages() or None, 10, "the published message")
    assert len(found) == 1
    return found[0]


def assert_no_text(message: dict[str, Any], *texts: str) -> None:
    headers = message["headers"]
    shown = headers["argsrepr"] + headers["kwargsrepr"]
    for text in texts:
        assert text not in shown
    # The body itself does carry the arguments: this test would see them if the headers did.
    body = base64.b64decode(message["body"]).decode()
    assert all(text in body for text in texts)


def _send_prediction(app, queue: str, sensitive: bool) -> str:
    job_id = str(uuid.uuid4())
    pending = PendingJob(job_id, [SECRET, "second input"],
                         NewJob(owner="k", kind="predict", task="ner", model="spacy-en-core-web-sm", total=2))
    group = group_for("ner", "spacy-en-core-web-sm", {"labels": ["PERSON"]}, 4, queue, task_names.RUN_NLP_JOBS,
                      tenant="default", sensitive=sensitive)
    app.extensions["cortex_coalescer"]._send(group, [pending], uuid.uuid4().hex)
    return job_id


def test_a_prediction_message_shows_job_ids_and_input_counts(app, capture_queue):
    queue, messages = capture_queue
    job_id = _send_prediction(app, queue, sensitive=False)
    message = only_message(messages)
    assert_no_text(message, SECRET, "PERSON")
    kwargsrepr = message["headers"]["kwargsrepr"]
    assert job_id in kwargsrepr and "'inputs': 2" in kwargsrepr and "'model': 'spacy-en-core-web-sm'" in kwargsrepr


def test_a_sensitive_prediction_s_inputs_wait_in_the_queue_sealed(app, capture_queue):
    queue, messages = capture_queue
    job_id = _send_prediction(app, queue, sensitive=True)
    message = only_message(messages)
    body = base64.b64decode(message["body"]).decode()
    assert SECRET not in body and '"sealed_inputs"' in body
    kwargsrepr = message["headers"]["kwargsrepr"]
    assert f"{{'job_id': '{job_id}', 'inputs': 2, 'sealed': True}}" in kwargsrepr
    # The worker opens them with the same key (core/contracts/messages.py).
    kwargs = json.loads(body)[1]
    opened = read_prediction_message(kwargs)
    assert opened.jobs[0].inputs == [SECRET, "second input"] and opened.jobs[0].sealed_inputs is None


def test_a_chat_message_shows_its_session_not_what_was_said(app, capture_queue):
    from cortex_web.dispatch import submit_and_wait

    queue, messages = capture_queue
    with app.test_request_context():
        submitted = submit_and_wait(
            NewJob(owner="k", kind="chat", task="chat", model="SmolLM2-135M-Instruct", total=1),
            task_names.CHAT_REPLY, queue,
            lambda job_id, reply_to: ChatReplyMessage(job_id=job_id, reply_to=reply_to, session_id="session-7",
                                                      owner="k", message=SECRET, system="be terse"),
            0)
    message = only_message(messages)
    assert_no_text(message, SECRET, "be terse")
    kwargsrepr = message["headers"]["kwargsrepr"]
    assert submitted.job_id in kwargsrepr and "'session_id': 'session-7'" in kwargsrepr
    assert f"'message': '<str {len(SECRET)} chars>'" in kwargsrepr


def test_batch_chunk_and_training_messages_show_their_ids(capture_queue, monkeypatch):
    queue, messages = capture_queue
    job_id = str(uuid.uuid4())
    send_chunks(job_id, [3], queue, 4, "default")
    chunk = only_message(messages)
    assert chunk["headers"]["task"] == task_names.BATCH_RUN_CHUNK
    assert job_id in chunk["headers"]["kwargsrepr"] and "'chunk_index': 3" in chunk["headers"]["kwargsrepr"]

    monkeypatch.setattr(training, "TRAINING", queue)
    training.send_training(job_id, 4, "default")
    sent = wait_for(lambda: (found := messages()) and len(found) == 2 and found, 10, "the training message")
    headers = next(m["headers"] for m in sent if m["headers"]["task"] == task_names.TRAIN_MODEL)
    assert headers["kwargsrepr"] == repr({"version": 1, "job_id": job_id, "tenant": "default"})
    assert headers["argsrepr"] == "()"
