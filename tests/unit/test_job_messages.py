"""The typed contract of every message but prediction's (core.contracts.job_messages): each round-trips
through JSON, reads a message of the previous release (the task's old keyword arguments, no `version`)
as version 1, refuses unknown versions; each receiver hands the fields to the work it runs, and fails the
job of a message it cannot read instead of raising."""
from __future__ import annotations

import importlib
import json
from typing import Any

import pytest

from cortex_tasks.core.contracts import job_messages as jm
from cortex_tasks.core.contracts.messages import UNSUPPORTED_MESSAGE, MessageRefused, read_message
from cortex_tasks.core.jobs import running

# For each message: one with every field set, and the kwargs the previous release's sender passed (the
# gateway's submit_and_wait sent reply_to None when nobody waited; chat and search sent None fields).
FULL: list[jm.JobMessage] = [
    jm.VectorUpsertMessage(job_id="j", reply_to="cortex:replies:g", collection="c",
                           items=[{"id": "a", "text": "hi", "metadata": {"n": 1}}], created_by="k"),
    jm.VectorSearchMessage(job_id="j", reply_to="cortex:replies:g", collection="c", text="hi", k=3,
                           filter={"lang": "en"}),
    jm.VectorIndexMessage(job_id="j", reply_to="cortex:replies:g", collection="c"),
    jm.DocumentIndexMessage(job_id="j", reply_to="cortex:replies:g", collection="c",
                            documents=[{"id": "d", "text": "t", "meta": {"a": [1, 2]}}], indexed_by="k"),
    jm.QuestionMessage(job_id="j", reply_to="cortex:replies:g", question="why?", top_k=2, collection="c",
                       filters={"a": ["x", "y"]}, generate=False, max_tokens=12),
    jm.ChatReplyMessage(job_id="j", reply_to="cortex:replies:g", session_id="s", owner="k", message="hello",
                        model="smollm2", system="be brief", params={"temperature": 0.2}),
    jm.ActivationMessage(job_id="j", reply_to="cortex:replies:g", deployment_id=7),
    jm.BatchChunkMessage(job_id="j", chunk_index=3),
    jm.BatchFinishMessage(job_id="j"),
    jm.TrainingMessage(job_id="j"),
    jm.StreamGenerationMessage(job_id="j", model="smollm2", inputs=["once upon"], params={"max_tokens": 8}),
]
PREVIOUS_RELEASE: list[tuple[type[jm.JobMessage], dict[str, Any]]] = [
    (jm.VectorUpsertMessage, {"job_id": "j", "collection": "c", "items": [{"id": "a", "text": "hi"}],
                              "created_by": "k", "reply_to": None}),
    (jm.VectorSearchMessage, {"job_id": "j", "collection": "c", "text": "hi", "k": 10, "filter": None,
                              "reply_to": "cortex:replies:g"}),
    (jm.VectorIndexMessage, {"job_id": "j", "collection": "c", "reply_to": None}),
    (jm.DocumentIndexMessage, {"job_id": "j", "collection": "c", "documents": [{"id": "d", "text": "t"}],
                               "indexed_by": "k", "reply_to": None}),
    (jm.QuestionMessage, {"job_id": "j", "question": "why?", "top_k": 5, "collection": "default", "filters": None,
                          "generate": True, "max_tokens": 96, "reply_to": None}),
    (jm.ChatReplyMessage, {"job_id": "j", "session_id": "s", "owner": "k", "message": "hello", "model": "m",
                           "system": None, "params": {}, "reply_to": "cortex:replies:g"}),
    (jm.ActivationMessage, {"job_id": "j", "deployment_id": 7, "reply_to": None}),
    (jm.BatchChunkMessage, {"job_id": "j", "chunk_index": 0}),
    (jm.BatchFinishMessage, {"job_id": "j"}),
    (jm.TrainingMessage, {"job_id": "j"}),
    (jm.StreamGenerationMessage, {"job_id": "j", "model": "m", "inputs": ["x"], "params": {}}),
]
# Agent runs, and chat turns that name the prompt version their system text came from.
FULL += [
    jm.AgentRunMessage(job_id="j", reply_to="cortex:replies:g", agent={"name": "a", "model": "gpt-4o-mini"},
                       system="You help.", prompt={"name": "p", "version": 2, "reference": "p@2"}, input="hi",
                       caller={"key_id": "k", "role": "inference_user", "tenant": "default"}, stream=True),
    jm.ChatReplyMessage(job_id="j", session_id="s", owner="k", message="hello", system="be brief",
                        prompt={"name": "p", "version": 1, "reference": "p@1"}),
]
PREVIOUS_RELEASE += [
    (jm.AgentRunMessage, {"job_id": "j", "agent": {}, "system": "s", "prompt": {}, "input": "x", "caller": {}}),
]


def test_every_message_type_is_covered():
    types = {type(message) for message in FULL}
    assert types == {message_type for message_type, _ in PREVIOUS_RELEASE}
    assert types == {value for value in vars(jm).values()
                     if isinstance(value, type) and issubclass(value, jm.JobMessage)
                     and value not in (jm.JobMessage, jm.RepliedJobMessage)}


@pytest.mark.parametrize("message", FULL, ids=lambda message: type(message).__name__)
def test_round_trip_through_json_keeps_every_field(message: jm.JobMessage):
    kwargs = json.loads(json.dumps(message.to_kwargs()))  # what the JSON serializer hands the worker
    assert kwargs["version"] == 1
    assert read_message(type(message), kwargs) == message


@pytest.mark.parametrize(("message_type", "kwargs"), PREVIOUS_RELEASE, ids=lambda value: getattr(value, "__name__", ""))
def test_message_of_the_previous_release_is_version_1(message_type: type[jm.JobMessage], kwargs: dict[str, Any]):
    read = read_message(message_type, kwargs)
    assert read.version == 1
    assert read.model_dump(exclude={"version"}) | kwargs == read.model_dump(exclude={"version"})


@pytest.mark.parametrize("message", FULL, ids=lambda message: type(message).__name__)
@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_unknown_version_is_refused_clearly(message: jm.JobMessage, version: Any):
    with pytest.raises(MessageRefused, match=rf"{message.describes} version .* is not supported") as refused:
        read_message(type(message), {**message.to_kwargs(), "version": version})
    assert refused.value.code == UNSUPPORTED_MESSAGE


@pytest.mark.parametrize(("message_type", "kwargs", "where"), [
    (jm.BatchChunkMessage, {"job_id": "j"}, "chunk_index"),
    (jm.BatchChunkMessage, {"job_id": "j", "chunk_index": "3"}, "chunk_index"),  # strict: no coercion
    (jm.ActivationMessage, {"job_id": "j", "deployment_id": True}, "deployment_id"),
    (jm.TrainingMessage, {"job": "j"}, "job_id"),
    (jm.QuestionMessage, {"job_id": "j", "question": "q", "top_k": 2.0}, "top_k"),
])
def test_malformed_message_is_refused_with_the_field(message_type: type[jm.JobMessage], kwargs: dict[str, Any],
                                                     where: str):
    with pytest.raises(MessageRefused, match=rf"does not match version 1: {where}"):
        read_message(message_type, kwargs)


def test_fields_a_newer_sender_adds_without_a_new_version_are_ignored():
    message = FULL[0]
    assert read_message(type(message), {**message.to_kwargs(), "trace": "abc"}) == message


# The receivers: (task module, task, message, the service function it runs, the arguments it must get).
RECEIVERS = [
    ("vectors", "upsert_items", FULL[0], "upsert_items", ("c", FULL[0].items, "k")),
    ("vectors", "search_text", FULL[1], "search_text", ("c", "hi", 3, {"lang": "en"}, None)),
    ("documents", "index_documents", FULL[3], "index_documents", ("c", FULL[3].documents, "k")),
    ("documents", "answer_question", FULL[4], "answer_question", ("why?", 2, "c", {"a": ["x", "y"]}, False, 12)),
]


def _fake_job_runner(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    monkeypatch.setattr(module, "run_job", lambda job_id, work, clock=None: {"status": "succeeded", "result": work()})
    monkeypatch.setattr(module, "publish_outcome", lambda reply_to, job_id, outcome: None)


@pytest.mark.parametrize(("domain", "task", "message", "function", "arguments"), RECEIVERS,
                         ids=[receiver[1] for receiver in RECEIVERS])
def test_receiver_runs_the_work_with_the_message_fields(monkeypatch: pytest.MonkeyPatch, domain: str, task: str,
                                                        message: jm.JobMessage, function: str, arguments: tuple):
    module = importlib.import_module(f"cortex_tasks.runtime.{domain}.tasks")
    _fake_job_runner(monkeypatch, module)
    called: list[tuple] = []
    monkeypatch.setattr(module.service, function, lambda *args: called.append(args) or {"ok": True})
    assert getattr(module, task)(**json.loads(json.dumps(message.to_kwargs())))["status"] == "succeeded"
    assert called == [arguments]


def test_chat_receiver_reads_a_message_of_the_previous_release(monkeypatch: pytest.MonkeyPatch):
    from cortex_tasks.runtime.chat import tasks

    _fake_job_runner(monkeypatch, tasks)
    called: list[dict] = []
    monkeypatch.setattr(tasks.service, "reply", lambda **kwargs: called.append(kwargs) or {"ok": True})
    tasks.reply(**dict(PREVIOUS_RELEASE[5][1]))
    assert called == [{"job_id": "j", "session_id": "s", "owner": "k", "message": "hello", "model": "m",
                       "system": None, "params": {}, "prompt": None}]


class Refusals:
    """What refuse_message did: the rows it failed and the outcomes it published."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.failed: dict[str, dict] = {}
        self.published: list[tuple] = []
        monkeypatch.setattr(running.store, "fail_job",
                            lambda job_id, error: self.failed.setdefault(job_id, error) is error)
        monkeypatch.setattr(running, "publish_outcome",
                            lambda reply_to, job_id, outcome: self.published.append((reply_to, job_id, outcome)))


def _must_not_run(*args: Any, **kwargs: Any) -> None:
    pytest.fail("an unreadable message must not run")


@pytest.mark.parametrize(("domain", "task", "message"), [
    ("vectors", "upsert_items", FULL[0]), ("vectors", "search_text", FULL[1]), ("vectors", "build_index", FULL[2]),
    ("documents", "index_documents", FULL[3]), ("documents", "answer_question", FULL[4]),
    ("chat", "reply", FULL[5]), ("batch", "run_chunk", FULL[7]), ("batch", "finish_batch", FULL[8]),
])
def test_receiver_fails_the_job_of_a_message_it_cannot_read(monkeypatch: pytest.MonkeyPatch, domain: str,
                                                            task: str, message: jm.JobMessage):
    module = importlib.import_module(f"cortex_tasks.runtime.{domain}.tasks")
    refusals = Refusals(monkeypatch)
    for name in ("run_job", "chunks"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, _must_not_run)
    outcome = getattr(module, task)(**{**message.to_kwargs(), "version": 2})
    assert outcome["status"] == "failed" and outcome["error"]["code"] == UNSUPPORTED_MESSAGE
    assert "version 2 is not supported" in outcome["error"]["message"]
    assert set(refusals.failed) == {"j"}
    reply_to = getattr(message, "reply_to", None)
    assert [(to, job_id, answer["error"]["code"]) for to, job_id, answer in refusals.published] == [
        (reply_to, "j", UNSUPPORTED_MESSAGE)]


def test_refused_activation_fails_its_deployment(monkeypatch: pytest.MonkeyPatch):
    """A pending deployment would block every later promotion of the model."""
    from cortex_tasks.runtime.registry import tasks

    Refusals(monkeypatch)
    monkeypatch.setattr(tasks, "run_job", _must_not_run)
    failed: list[tuple] = []
    monkeypatch.setattr(tasks.service, "fail_deployment",
                        lambda deployment_id, error, job_id: failed.append((deployment_id, error["code"], job_id)))
    tasks.activate_version(job_id="j", deployment_id=7, reply_to=None, version=2)
    assert failed == [(7, UNSUPPORTED_MESSAGE, "j")]


def test_refused_training_fails_its_run(monkeypatch: pytest.MonkeyPatch):
    """A queued run would count against its owner's quota until its deadline."""
    from cortex_tasks.runtime.training import tasks

    Refusals(monkeypatch)
    monkeypatch.setattr(tasks.service, "run_training", _must_not_run)
    updated: list[tuple] = []
    monkeypatch.setattr(tasks.runs, "update_run", lambda run_id, **values: updated.append((run_id, values["phase"])))
    tasks.train_model(job_id="j", version=2)
    assert updated == [("j", tasks.runs.FAILED)]


def test_refused_stream_ends_the_stream_with_the_error(monkeypatch: pytest.MonkeyPatch):
    from cortex_tasks.runtime.inference import streaming, tasks

    Refusals(monkeypatch)
    monkeypatch.setattr(streaming, "stream_generation", _must_not_run)
    events: list[tuple] = []
    monkeypatch.setattr(streaming, "publish_event", lambda job_id, event: events.append((job_id, event)))
    summary = tasks.stream_generation(job_id="j", model="m", inputs="not a list")
    assert summary["status"] == "failed" and "inputs" in summary["refused"]
    assert [(job_id, event["type"], event["error"]["code"]) for job_id, event in events] == [
        ("j", "error", UNSUPPORTED_MESSAGE)]


def test_message_without_a_job_id_is_refused_without_touching_a_row(monkeypatch: pytest.MonkeyPatch):
    refusals = Refusals(monkeypatch)
    outcome = running.refuse_message({"chunk_index": 1}, MessageRefused("no job id"))
    assert outcome["status"] == "failed" and outcome["recorded"] is False
    assert refusals.failed == {} and refusals.published == []


def test_batch_and_training_senders_build_readable_messages(monkeypatch: pytest.MonkeyPatch):
    from cortex_tasks import app as celery_app
    from cortex_tasks.core.batch import submission as batch
    from cortex_tasks.core.training import submission as training

    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(celery_app, "send_task", lambda name, kwargs, **options: sent.append((name, kwargs)))
    batch.send_chunks("j", [0, 1], "batch", 4, "default")
    batch.send_finish("j", "batch", 4, "default")
    training.send_training("j", 4, "default")
    assert [(name, read_message(message_type, kwargs)) for (name, kwargs), message_type in zip(
        sent, [jm.BatchChunkMessage, jm.BatchChunkMessage, jm.BatchFinishMessage, jm.TrainingMessage],
        strict=True)] == [
        (batch.CHUNK_TASK, jm.BatchChunkMessage(job_id="j", chunk_index=0)),
        (batch.CHUNK_TASK, jm.BatchChunkMessage(job_id="j", chunk_index=1)),
        (batch.FINISH_TASK, jm.BatchFinishMessage(job_id="j")),
        (training.TRAIN_TASK, jm.TrainingMessage(job_id="j")),
    ]


def test_maintenance_message_of_beat_is_versioned_and_the_previous_release_sent_none():
    from beat_schedule import BEAT_SCHEDULE

    assert all(read_message(jm.MaintenanceMessage, json.loads(json.dumps(entry["kwargs"])))
               == jm.MaintenanceMessage() for entry in BEAT_SCHEDULE.values())
    assert read_message(jm.MaintenanceMessage, {}).version == 1  # Beat of the previous release sent no kwargs
    with pytest.raises(MessageRefused, match="maintenance message version 2 is not supported"):
        read_message(jm.MaintenanceMessage, {"version": 2})


def test_maintenance_task_refuses_an_unknown_version_without_running(monkeypatch: pytest.MonkeyPatch):
    from cortex_tasks.runtime.maintenance import tasks

    monkeypatch.setattr(tasks.housekeeping, "roll_up_metrics", _must_not_run)
    assert "version 2 is not supported" in tasks.roll_up_metrics(version=2)["refused"]
    monkeypatch.setattr(tasks.housekeeping, "roll_up_metrics", lambda: {"rolled": 1})
    assert tasks.roll_up_metrics() == tasks.roll_up_metrics(**jm.MaintenanceMessage().to_kwargs()) == {"rolled": 1}
