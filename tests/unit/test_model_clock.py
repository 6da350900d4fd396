"""The model clock of jobs that measure their own model calls (vector upserts, document indexing): calls
are charged to the clock of the job in progress, per model, and to nothing outside a job that has one."""
from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from cortex_tasks.core.settings import Settings
from cortex_tasks.core.usage import worker_time as worker_time_module
from cortex_tasks.core.usage.worker_time import ModelClock, WorkerTime, charge_model_call


@pytest.fixture(autouse=True)
def priced(monkeypatch):
    settings = Settings(CORTEX_WORKER_SECOND_PRICES='{"gpu": 0.002}')
    monkeypatch.setattr(worker_time_module, "get_settings", lambda: settings)


def test_calls_are_charged_per_model_to_the_running_clock_and_priced():
    clock = ModelClock("vectors.upsert", "gpu")
    charge_model_call("all-MiniLM-L6-v2", 4, 1.0)  # before the job runs: nobody's
    with clock:
        charge_model_call("all-MiniLM-L6-v2", 3, 0.5)
        charge_model_call("efficientnet-lite0", 2, 0.25)
        charge_model_call("all-MiniLM-L6-v2", 1, 0.25)
    charge_model_call("all-MiniLM-L6-v2", 4, 1.0)  # after it: nobody's
    assert clock.usage() == [
        WorkerTime("vectors.upsert", "gpu", 4, 0.75, pytest.approx(0.0015), "all-MiniLM-L6-v2"),
        WorkerTime("vectors.upsert", "gpu", 2, 0.25, pytest.approx(0.0005), "efficientnet-lite0"),
    ]


def test_a_clock_that_computed_nothing_has_no_usage():
    clock = ModelClock("documents.index", "gpu")
    with clock:
        charge_model_call("all-MiniLM-L6-v2", 0, 0.0)  # an empty call: nothing computed
    assert clock.usage() == []


def test_an_inner_clock_takes_the_calls_while_it_runs():
    outer, inner = ModelClock("documents.index", "gpu"), ModelClock("vectors.upsert", "gpu")
    with outer:
        charge_model_call("m", 1, 0.5)
        with inner:
            charge_model_call("m", 2, 1.0)
        charge_model_call("m", 1, 0.5)
    assert [(usage.items, usage.seconds) for usage in outer.usage()] == [(2, 1.0)]
    assert [(usage.items, usage.seconds) for usage in inner.usage()] == [(2, 1.0)]


def test_a_thread_that_copies_the_context_charges_the_same_clock_and_another_thread_does_not():
    clock = ModelClock("documents.index", "gpu")
    with clock:
        # Haystack runs a sync component of an async pipeline through asyncio.to_thread, which copies it.
        asyncio.run(asyncio.to_thread(charge_model_call, "m", 2, 0.5))
        context = contextvars.copy_context()
        copied = threading.Thread(target=context.run, args=(charge_model_call, "m", 1, 0.25))
        unrelated = threading.Thread(target=charge_model_call, args=("m", 5, 9.0))  # another job's thread
        for thread in (copied, unrelated):
            thread.start()
            thread.join()
    assert [(usage.items, usage.seconds) for usage in clock.usage()] == [(3, 0.75)]


def test_concurrent_jobs_in_threads_keep_their_own_clocks():
    clocks = {name: ModelClock("vectors.upsert", "gpu") for name in ("a", "b")}
    ready = threading.Barrier(2)

    def job(name: str, items: int) -> None:
        with clocks[name]:
            ready.wait()  # both clocks are running at once
            for _ in range(items):
                charge_model_call("m", 1, 0.125)

    threads = [threading.Thread(target=job, args=(name, items)) for name, items in (("a", 3), ("b", 5))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [usage.items for usage in clocks["a"].usage()] == [3]
    assert [usage.items for usage in clocks["b"].usage()] == [5]
