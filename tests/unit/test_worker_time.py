"""Worker time for the usage ledger: a batched model call's wall seconds are shared out over its items
(so a call is counted once, not once per item), and priced per worker kind."""
from __future__ import annotations

import threading
import time

import pytest

from cortex_tasks.core.settings import Settings
from cortex_tasks.core.usage import worker_time as worker_time_module
from cortex_tasks.runtime.inference.batcher import DynamicBatcher


def sleeping_model(seconds: float):
    calls: list[int] = []

    def run(values: list[str]) -> list[str]:
        calls.append(len(values))
        time.sleep(seconds)
        return values

    return run, calls


def test_one_calls_seconds_are_shared_over_its_items():
    run, calls = sleeping_model(0.2)
    batcher = DynamicBatcher(run, max_batch_size=8, max_wait=0)
    results, seconds = batcher.submit_measured(["a", "b", "c", "d"])
    assert results == ["a", "b", "c", "d"] and calls == [4]
    assert seconds == [seconds[0]] * 4 and 0.2 <= sum(seconds) < 0.4  # one call's time, not four


def test_concurrent_jobs_batched_together_share_one_call():
    run, calls = sleeping_model(0.15)
    batcher = DynamicBatcher(run, max_batch_size=32, max_wait=0)
    spent: dict[int, list[float]] = {}
    blocker = threading.Thread(target=lambda: spent.__setitem__(-1, batcher.submit_measured(["first"])[1]))
    blocker.start()
    time.sleep(0.05)  # the first call runs; the next submissions gather into one batch meanwhile
    threads = [threading.Thread(target=lambda i=i: spent.__setitem__(i, batcher.submit_measured([f"x{i}", f"y{i}"])[1]))
               for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in [blocker, *threads]:
        thread.join()
    assert calls == [1, 6]
    later = [share for i in range(3) for share in spent[i]]
    assert 0.15 <= sum(later) < 0.3  # six items of three jobs: the one call's time once


def test_a_failed_batch_costs_its_retries_too():
    def run(values: list[str]) -> list[str]:
        time.sleep(0.05)
        if len(values) > 1:
            raise RuntimeError("the batch failed")
        return values

    batcher = DynamicBatcher(run, max_batch_size=8, max_wait=0)
    results, seconds = batcher.submit_measured(["a", "b"])
    assert results == ["a", "b"] and sum(seconds) >= 0.15  # the failed call and both retries


def test_worker_time_is_priced_per_worker_kind(monkeypatch):
    settings = Settings(CORTEX_WORKER_SECOND_PRICES='{"gpu": 0.002, "nlp": 0.0005}')
    monkeypatch.setattr(worker_time_module, "get_settings", lambda: settings)
    assert worker_time_module.worker_time("embed", "gpu", 3, 1.5).cost_usd == pytest.approx(0.003)
    assert worker_time_module.worker_time("ner", "nlp", 1, 2.0).cost_usd == pytest.approx(0.001)
    assert worker_time_module.worker_time("x", "training", 1, 9.0).cost_usd == 0.0  # not priced


def test_worker_second_prices_are_checked_at_start_up():
    assert Settings().worker_second_prices == {}
    for bad in ('{"gpu": -1}', '{"gpu": "cheap"}', '[1, 2]', "not json"):
        with pytest.raises(ValueError, match="CORTEX_WORKER_SECOND_PRICES"):
            Settings(CORTEX_WORKER_SECOND_PRICES=bad)


def test_the_ledger_rows_are_written_by_the_recording_statement():
    statement = worker_time_module.with_ledger_rows("UPDATE jobs SET x = 1 RETURNING id, tenant, owner, model")
    assert statement.startswith("WITH recorded AS (UPDATE jobs") and "INSERT INTO worker_usage" in statement
    assert statement.endswith("SELECT id FROM recorded")
    timed = worker_time_module.WorkerTime("embed", "gpu", 2, 0.5, 0.0)
    columns = worker_time_module.usage_columns(["a", "b"], {"b": timed})
    assert columns["u_ids"] == ["b"] and columns["u_models"] == [None] and columns["u_items"] == [2] and columns["u_seconds"] == [0.5]
