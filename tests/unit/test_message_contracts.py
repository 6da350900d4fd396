"""The typed gateway -> worker contract: prediction messages round-trip through JSON, messages of the
previous release (no `version`) are read as version 1, unknown versions and malformed messages are
refused with a clear reason, and every task name is spelled once."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.messages import (
    UNSUPPORTED_MESSAGE,
    JobRecord,
    MessageRefused,
    PredictionJob,
    PredictionMessage,
    read_prediction_message,
)
from cortex_tasks.core.jobs import store

ROOT = Path(__file__).resolve().parents[2]


def gateway_message() -> PredictionMessage:
    record = store.job_record(store.NewJob(owner="alice", kind="predict", task="embed", model="all-MiniLM-L6-v2",
                                           priority=0, total=2, params={"normalize": True}, tenant="acme"))
    return PredictionMessage(task="embed", model="all-MiniLM-L6-v2", params={"normalize": True}, priority=0,
                             reply_to="cortex:replies:abc", message_id="m1", tenant="acme",
                             jobs=[PredictionJob(job_id="j1", inputs=["a", "b"], record=JobRecord(**record),
                                                 looked_up=True),
                                   PredictionJob(job_id="j2", inputs=[{"text": "c"}], inline_errors=True)])


def test_round_trip_through_json_keeps_every_field():
    message = gateway_message()
    kwargs = json.loads(json.dumps(message.to_kwargs()))  # what the JSON serializer hands the worker
    assert kwargs["version"] == 1
    read = read_prediction_message(kwargs)
    assert read == message
    assert read.jobs[0].record is not None
    assert read.tenant == "acme"
    assert store.NewJob(**dict(read.jobs[0].record)) == store.NewJob(
        owner="alice", kind="predict", task="embed", model="all-MiniLM-L6-v2", priority=0, total=2,
        params={"normalize": True}, tenant="acme")


def test_message_of_the_previous_release_is_version_1():
    # Exactly what cortex_web/coalescer.py and cache warming sent before the contract (no version).
    old = {"task": "embed", "model": "m", "params": {}, "priority": 4, "reply_to": "r", "message_id": "m1",
           "jobs": [{"job_id": "j1", "inputs": ["x"], "inline_errors": False, "looked_up": False,
                     "record": {"owner": "o", "kind": "predict", "task": "embed", "model": "m", "priority": 4,
                                "total": 1, "params": None, "deadline_seconds": 3600}}]}
    warm = {"task": "embed", "model": "m", "params": {}, "priority": 8,
            "jobs": [{"job_id": "j2", "inputs": ["y"], "inline_errors": True, "warm": True}]}
    assert read_prediction_message(old).version == 1
    # Queued before tenants existed: the jobs, like all data of that time, are the default tenant's.
    assert read_prediction_message(old).tenant == "default"
    assert read_prediction_message(old).jobs[0].record.tenant is None  # the message's tenant
    read = read_prediction_message(warm)
    assert read.jobs[0].warm and read.jobs[0].record is None and read.reply_to is None


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_unknown_version_is_refused_clearly(version: Any):
    kwargs = {**gateway_message().to_kwargs(), "version": version}
    with pytest.raises(MessageRefused, match=r"version .* is not supported") as refused:
        read_prediction_message(kwargs)
    assert refused.value.code == UNSUPPORTED_MESSAGE


@pytest.mark.parametrize(("change", "where"), [
    ({"jobs": [{"inputs": ["x"]}]}, "jobs.0.job_id"),
    ({"jobs": []}, "jobs"),
    ({"priority": "4"}, "priority"),  # strict: JSON gave a string where a number belongs
    ({"model": None}, "model"),
])
def test_malformed_message_is_refused_with_the_field(change: dict, where: str):
    kwargs = {**gateway_message().to_kwargs(), **change}
    with pytest.raises(MessageRefused, match=re.escape(where)):
        read_prediction_message(kwargs)


def test_fields_a_newer_sender_adds_without_a_new_version_are_ignored():
    kwargs = {**gateway_message().to_kwargs(), "trace": "abc"}
    assert read_prediction_message(kwargs) == gateway_message()


def test_task_names_are_unique_and_spelled_only_in_the_contract():
    assert len(set(task_names.ALL_TASK_NAMES)) == len(task_names.ALL_TASK_NAMES)
    assert all(re.fullmatch(r"cortex\.[a-z]+\.[a-z_]+", name) for name in task_names.ALL_TASK_NAMES)
    with pytest.raises(ValueError, match="no task in domain"):
        task_names.every_task_of("inferense")
    domains = "|".join(sorted({name.split(".")[1] for name in task_names.ALL_TASK_NAMES}))
    spelled = re.compile(rf"""["']cortex\.(?:{domains})\.""")
    contract = ROOT / "cortex_tasks/core/contracts/task_names.py"
    sources = [*ROOT.glob("cortex_tasks/**/*.py"), *ROOT.glob("cortex_web/**/*.py"), *ROOT.glob("workers/**/*.py"),
               ROOT / "beat_schedule.py", ROOT / "celeryconfig.py"]
    offenders = [str(path.relative_to(ROOT)) for path in sources
                 if path != contract and spelled.search(path.read_text())]
    assert offenders == []


def test_every_registered_task_is_in_the_contract():
    from tests.unit.test_celery_config import registered_tasks

    assert sorted(registered_tasks()) == sorted(task_names.ALL_TASK_NAMES)


def test_worker_fails_the_jobs_of_a_message_it_cannot_read(monkeypatch: pytest.MonkeyPatch):
    """A version-2 message is not run: its jobs are failed with the reason (rows written from the records
    it carries, or updated where the sender created them) and the caller is answered on its channel."""
    from cortex_tasks.runtime.inference import tasks

    calls: dict[str, Any] = {}
    monkeypatch.setattr(tasks.store, "record_finished",
                        lambda outcomes, rows, started: calls.setdefault("created", (outcomes, rows)) and set(rows))
    monkeypatch.setattr(tasks.store, "finish_jobs", lambda outcomes: calls.setdefault("updated", outcomes) and set())
    monkeypatch.setattr(tasks, "publish_outcomes",
                        lambda reply_to, message_id, outcomes: calls.update(published=(reply_to, message_id, outcomes)))
    monkeypatch.setattr(tasks, "run_jobs", lambda *args: pytest.fail("an unreadable message must not run"))
    kwargs = {**gateway_message().to_kwargs(), "version": 2}

    class Request:
        retries, delivery_info = 0, {}

    summary = tasks._run(Request(), kwargs)
    assert summary["succeeded"] == 0 and "version 2" in summary["refused"]
    outcomes, rows = calls["created"]
    assert set(outcomes) == {"j1"} and rows["j1"].owner == "alice"
    assert set(calls["updated"]) == {"j2"}  # no record: its row is the sender's
    reply_to, message_id, answered = calls["published"]
    assert (reply_to, message_id) == ("cortex:replies:abc", "m1")
    assert {job_id: outcome["error"]["code"] for job_id, outcome in answered.items()} == {
        "j1": UNSUPPORTED_MESSAGE, "j2": UNSUPPORTED_MESSAGE}
