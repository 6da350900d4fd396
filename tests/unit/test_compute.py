"""How model calls share a worker's cores (inference/compute.py), and the batcher's lanes on top of it."""
from __future__ import annotations

import threading
import time

import pytest

from cortex_tasks.core.catalogue import MODELS
from cortex_tasks.runtime.inference import compute
from cortex_tasks.runtime.inference.batcher import DynamicBatcher
from cortex_tasks.runtime.inference.compute import CoreBudget


class WidthRecorder:
    """Runs calls through a budget and records the cores in use whenever a call starts."""

    def __init__(self, budget: CoreBudget) -> None:
        self.budget = budget
        self.in_use = 0
        self.peaks: list[int] = []
        self.widths: list[int] = []
        self._lock = threading.Lock()

    def call(self, seconds: float, wide_if=compute.always) -> None:
        with self.budget.cores_for_call(wide_if) as grant:
            width = grant.width
            with self._lock:
                self.in_use += width
                self.peaks.append(self.in_use)
                self.widths.append(width)
            time.sleep(seconds)
            with self._lock:
                self.in_use -= width


def test_a_lone_call_gets_every_core_and_runs_with_that_many_torch_threads():
    torch = pytest.importorskip("torch")
    budget = CoreBudget(2)
    seen: list[tuple[int, int]] = []

    def call() -> None:
        with budget.cores_for_call() as grant:
            seen.append((grant.width, grant.run(torch.get_num_threads)))

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert seen == [(2, 2)]


def test_wide_calls_from_any_thread_run_on_one_thread_and_narrow_calls_where_they_are_made():
    torch = pytest.importorskip("torch")
    budget = CoreBudget(2)
    wide_threads: set[int] = set()
    narrow: list[tuple[bool, int]] = []
    errors: list[BaseException] = []

    def wide_call() -> None:
        with budget.cores_for_call() as grant:
            assert grant.width == 2
            wide_threads.add(grant.run(threading.get_ident))

    def narrow_call() -> None:
        with budget.cores_for_call(wide_if=lambda: False) as grant:
            ran_here = grant.run(threading.get_ident) == threading.get_ident()
            narrow.append((ran_here, grant.run(torch.get_num_threads)))
        with budget.cores_for_call() as grant:
            try:
                grant.run(lambda: 1 / 0)  # the caller sees the call's own exception
            except ZeroDivisionError as exc:
                errors.append(exc)

    for target in (wide_call, wide_call, narrow_call, wide_call):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    # One OpenMP team for every wide call: alternating threads each woke a team of their own (compute.py).
    assert len(wide_threads) == 1 and threading.get_ident() not in wide_threads
    assert narrow == [(True, 1)]
    assert len(errors) == 1


def test_a_call_with_work_queued_behind_it_stays_narrow():
    recorder = WidthRecorder(CoreBudget(2))
    recorder.call(0, wide_if=lambda: False)
    assert recorder.widths == [1]


def test_calls_beside_others_get_one_core_and_never_more_than_the_budget():
    recorder = WidthRecorder(CoreBudget(2))
    first = threading.Thread(target=recorder.call, args=(0.3,), kwargs={"wide_if": lambda: False})
    first.start()
    time.sleep(0.05)
    others = [threading.Thread(target=recorder.call, args=(0.05,)) for _ in range(6)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join()
    assert max(recorder.peaks) <= 2
    assert recorder.widths[:2] == [1, 1]  # the second ran beside the first, on the core left free


def test_a_wide_call_runs_alone():
    recorder = WidthRecorder(CoreBudget(2))
    wide = threading.Thread(target=recorder.call, args=(0.2,))
    wide.start()
    time.sleep(0.05)
    narrow = threading.Thread(target=recorder.call, args=(0,))
    narrow.start()
    for thread in (wide, narrow):
        thread.join()
    assert recorder.widths == [2, 2]  # the second waited, then was alone in turn
    assert max(recorder.peaks) == 2


@pytest.mark.parametrize(("mode", "expected"), [(compute.LANES, 2), (compute.EXCLUSIVE, 1), (compute.REMOTE, 1)])
def test_how_many_calls_of_one_model_run_at_once(monkeypatch, mode, expected):
    monkeypatch.setattr(compute, "_budget", CoreBudget(2))
    monkeypatch.setattr(compute, "_model_slots", {})
    running, peak, lock = 0, [], threading.Lock()

    def call() -> None:
        nonlocal running
        with compute.model_call("m", mode, wide_if=lambda: False):
            with lock:
                running += 1
                peak.append(running)
            time.sleep(0.05)
            with lock:
                running -= 1

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(peak) == expected


def test_remote_calls_take_no_core(monkeypatch):
    budget = CoreBudget(1)
    monkeypatch.setattr(compute, "_budget", budget)
    monkeypatch.setattr(compute, "_model_slots", {})
    with budget.cores_for_call():  # the only core is busy with a local model
        with compute.model_call("api", compute.REMOTE):
            pass  # would block forever if it waited for a core


def test_every_catalogue_model_has_a_known_compute_mode():
    assert {entry.compute for entry in MODELS.values()} <= set(compute.COMPUTE_MODES)
    assert MODELS["all-MiniLM-L6-v2"].compute == compute.LANES


def test_batcher_lanes_answer_every_item_in_order_and_share_the_budget():
    budget = CoreBudget(2)
    calls: list[list[int]] = []
    running, peak, lock = 0, [], threading.Lock()

    def model(values: list[int]) -> list[int]:
        nonlocal running
        with lock:
            calls.append(list(values))
            running += 1
            peak.append(running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return [value * 10 for value in values]

    batcher = DynamicBatcher(model, max_batch_size=4, max_wait=0, lanes=2,
                             call_slot=lambda wide_if: budget.cores_for_call(wide_if))
    results: dict[int, list[int]] = {}

    def submit(start: int) -> None:
        results[start] = batcher.submit(list(range(start, start + 10)))

    threads = [threading.Thread(target=submit, args=(start,)) for start in range(0, 100, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {start: [value * 10 for value in range(start, start + 10)] for start in range(0, 100, 10)}
    assert all(len(call) <= 4 for call in calls)
    assert batcher.items_run == 100
    assert max(peak) == 2  # with work queued, the two lanes ran side by side, one core each
