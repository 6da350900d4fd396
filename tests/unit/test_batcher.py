"""The worker's dynamic batcher, on a stand-in model (plain function): coalescing, priority order,
no waiting when alone, and failure isolation."""
from __future__ import annotations

import threading
import time

from cortex_tasks.core.errors import ItemError
from cortex_tasks.runtime.inference.batcher import DynamicBatcher, ItemFailure


class RecordingModel:
    def __init__(self, delay: float = 0.0, bad: set[str] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.delay, self.bad = delay, bad or set()

    def __call__(self, values: list[str]) -> list[str]:
        self.calls.append(list(values))
        time.sleep(self.delay)
        if any(value in self.bad for value in values):
            raise ItemError("bad_item", "this item cannot be processed")
        return [value.upper() for value in values]


def test_concurrent_submissions_share_model_calls():
    model = RecordingModel(delay=0.05)
    batcher = DynamicBatcher(model, max_batch_size=32, max_wait=0)
    results: dict[int, list] = {}

    def submit(i: int) -> None:
        results[i] = batcher.submit([f"item{i}"])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: [f"ITEM{i}"] for i in range(20)}
    assert len(model.calls) < 20  # while one call ran, the others gathered into batches
    assert max(len(call) for call in model.calls) > 1


def test_batch_size_is_capped():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait=0)
    assert batcher.submit([str(i) for i in range(10)]) == [str(i) for i in range(10)]
    assert all(len(call) <= 4 for call in model.calls)


def test_higher_priority_items_are_taken_first():
    model = RecordingModel(delay=0.1)
    batcher = DynamicBatcher(model, max_batch_size=2, max_wait=0)
    blocker = threading.Thread(target=batcher.submit, args=(["first"],))
    blocker.start()
    time.sleep(0.03)  # the model is now busy with "first"; the rest queue up
    done: list[str] = []
    threads = [threading.Thread(target=lambda v=v, p=p: done.extend(batcher.submit([v], priority=p)))
               for v, p in (("low-a", 8), ("low-b", 8), ("high-a", 0), ("high-b", 0))]
    for thread in threads:
        thread.start()
        time.sleep(0.005)
    for thread in [blocker, *threads]:
        thread.join()
    assert model.calls[1] == ["high-a", "high-b"]
    assert model.calls[2] == ["low-a", "low-b"]


def test_alone_it_does_not_wait():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=32, max_wait=0.5)
    started = time.perf_counter()
    batcher.submit(["solo"])
    assert time.perf_counter() - started < 0.25  # far below max_wait: nothing was announced


def test_a_lone_submission_is_run_by_the_submitting_thread():
    callers: list[threading.Thread] = []

    def model(values: list[str]) -> list[str]:
        callers.append(threading.current_thread())
        return values

    batcher = DynamicBatcher(model, max_batch_size=8, max_wait=0)
    assert batcher.submit(["solo"]) == ["solo"]
    assert callers == [threading.current_thread()]  # no hand-off to a batching thread and back


def test_announced_items_are_waited_for_briefly():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=32, max_wait=0.2)
    announcement = batcher.announce(1)
    first = threading.Thread(target=batcher.submit, args=(["a"],))
    first.start()
    time.sleep(0.05)
    batcher.submit(["b"], announcement=announcement)
    first.join()
    assert model.calls == [["a", "b"]]


def test_a_bad_item_fails_alone():
    model = RecordingModel(bad={"poison"})
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait=0)
    results = batcher.submit(["good", "poison", "fine"])
    assert results[0] == "GOOD" and results[2] == "FINE"
    assert isinstance(results[1], ItemFailure) and results[1].code == "bad_item"


def test_model_crash_is_reported_per_item_and_the_batcher_survives():
    def broken(values):
        raise RuntimeError("CUDA out of memory")

    batcher = DynamicBatcher(broken, max_batch_size=8, max_wait=0)
    results = batcher.submit(["a", "b"])
    assert all(isinstance(r, ItemFailure) and r.code == "model_error" for r in results)
    assert isinstance(batcher.submit(["c"])[0], ItemFailure)  # still answering


def _behind_a_busy_model(batcher: DynamicBatcher, model: RecordingModel,
                         submissions: list[tuple[list[str], dict]]) -> None:
    """Make the submissions while the model is busy with an earlier call, each queued before the next."""
    gate, busy = threading.Event(), threading.Event()
    run = batcher.run_batch

    def held_while_busy(values: list[str]) -> list[str]:
        if values == ["busy"]:
            busy.set()
            gate.wait(5)
        return run(values)

    batcher.run_batch = held_while_busy
    threads = [threading.Thread(target=batcher.submit, args=(["busy"],))]
    threads[0].start()
    # The model must be busy before the others queue (on a loaded machine they could otherwise be first).
    assert busy.wait(5)
    waiting = 0
    for values, options in submissions:
        threads.append(threading.Thread(target=batcher.submit, args=(values,), kwargs=options))
        threads[-1].start()
        waiting += len(values)
        deadline = time.monotonic() + 5
        while len(batcher._heap) < waiting and time.monotonic() < deadline:
            time.sleep(0.002)
    gate.set()
    for thread in threads:
        thread.join()
    batcher.run_batch = run
    assert model.calls[0] == ["busy"]


def test_a_submission_may_share_larger_calls_but_never_makes_a_call_larger_than_its_smallest_call_size():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait=0)
    _behind_a_busy_model(batcher, model, [([f"bulk{i}" for i in range(10)], {"call_size": 10}),
                                          ([f"small{i}" for i in range(3)], {})])
    assert model.calls[1] == [f"bulk{i}" for i in range(10)]  # above max_batch_size: its own call size
    assert model.calls[2] == [f"small{i}" for i in range(3)]

    model.calls.clear()
    _behind_a_busy_model(batcher, model, [([f"bulk{i}" for i in range(6)], {"call_size": 10}),
                                          ([f"small{i}" for i in range(3)], {"priority": 0})])
    # The higher-priority items lead, and the call joining them keeps their max_batch_size of 4.
    assert model.calls[1] == ["small0", "small1", "small2", "bulk0"]
    assert model.calls[2] == [f"bulk{i}" for i in range(1, 6)]
