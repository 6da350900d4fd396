"""Batching configured per model (CORTEX_BATCHING_PER_MODEL), and where it is applied: the worker's
batchers (inference/runner.py) and the gateway's messages (cortex_web/coalescer.py)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from cortex_tasks.core.catalogue import find_model
from cortex_tasks.core.jobs.store import NewJob
from cortex_tasks.core.settings import Batching, batching_from, get_settings, reset_settings_cache
from cortex_tasks.runtime.inference.runner import batching_of
from cortex_web.coalescer import Coalescer, PendingJob, group_for


@pytest.fixture()
def environment(monkeypatch):
    """Set variables, then read the settings afresh (they are cached per process)."""

    def settings_with(**variables: str):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        reset_settings_cache()
        return get_settings()

    yield settings_with
    reset_settings_cache()  # the patched variables are undone after this; the next read sees the originals


def test_a_model_gets_its_own_batching_else_the_global_one(environment):
    per_model = {"minilm-zero-shot": {"max_batch_size": 3}, "my-model": {"max_wait_ms": 0}}
    settings = environment(MAX_BATCH_SIZE="16", CORTEX_BATCH_MAX_WAIT_MS="4",
                           CORTEX_BATCHING_PER_MODEL=json.dumps(per_model))
    assert settings.batching_for("minilm-zero-shot") == Batching(3, 0.004)
    assert settings.batching_for("my-model@7") == Batching(16, 0.0)  # a registered version: its name's
    assert settings.batching_for("all-MiniLM-L6-v2") == Batching(16, 0.004)
    # What the worker's batchers use.
    assert batching_of("minilm-zero-shot", find_model("minilm-zero-shot"), {}) == Batching(3, 0.004)
    assert batching_of("vector-reducer", find_model("vector-reducer"), {}).max_batch_size == 1  # per job


def test_batching_off_runs_one_value_per_call_whatever_a_model_is_given(environment):
    environment(CORTEX_BATCHING="0", CORTEX_BATCHING_PER_MODEL='{"minilm-zero-shot": {"max_batch_size": 8}}')
    assert batching_of("minilm-zero-shot", find_model("minilm-zero-shot"), {}).max_batch_size == 1


@pytest.mark.parametrize("raw", [
    "not json",
    "[1]",
    '{"m": 8}',
    '{"m": {}}',
    '{"m": {"max_batch": 8}}',
    '{"m": {"max_batch_size": 0}}',
    '{"m": {"max_batch_size": 2.5}}',
    '{"m": {"max_batch_size": true}}',
    '{"m": {"max_wait_ms": -1}}',
    '{"m": {"max_wait_ms": "5ms"}}',
])
def test_bad_per_model_batching_stops_start_up(raw):
    with pytest.raises(ValueError, match="CORTEX_BATCHING_PER_MODEL"):
        batching_from(raw, Batching(32, 0.002))


def test_the_gateway_sends_a_models_gathered_items_once_they_fill_its_batch():
    """With every message slot taken, a group's requests gather until one comes back, unless they already
    fill a message: two items for a model batched by two, 32 for the others."""
    coalescer = Coalescer(SimpleNamespace(channel="replies"), max_inflight=1,
                          max_items_for=lambda model: 2 if model == "small" else 32)
    small = group_for("embed", "small", {}, 4, "gpu", "predict", tenant="default")
    other = group_for("embed", "other", {}, 4, "gpu", "predict", tenant="default")

    def gathered(group, count):
        coalescer._track(group)  # its one message slot is taken
        record = NewJob("key", "predict", "embed")
        coalescer._pending[group] = [PendingJob(f"{group.model}-{i}", ["text"], record) for i in range(count)]

    gathered(small, 5)
    gathered(other, 5)
    with coalescer._condition:
        ready, _ = coalescer._ready_batches()
    sent = [(group.model, [job.job_id for job in jobs]) for group, jobs, _ in ready]
    assert sent == [("small", ["small-0", "small-1"])]


@pytest.mark.parametrize(("total", "processes", "each"), [("4", "1", 4), ("4", "2", 2), ("4", "3", 2),
                                                          ("4", "8", 1), ("1", "2", 1)])
def test_the_gateway_processes_share_the_messages_in_flight(environment, total, processes, each):
    # gunicorn_conf.py tells each process how many there are (CORTEX_GATEWAY_PROCESSES).
    settings = environment(CORTEX_COALESCE_MAX_INFLIGHT=total, CORTEX_GATEWAY_PROCESSES=processes)
    assert settings.coalesce_max_inflight_per_process == each
