"""Dynamic batching inside a worker: concurrent requests for the same model and params share one call.

Task threads submit their items and block; one batching thread per (model, params) takes the waiting
items in priority order (0 first, then arrival), up to `max_batch_size`, and runs the model once.
It does not wait when the model is idle: batches form by themselves while the previous call runs.
`max_wait` only lets a batch fill up while more items are known to be on their way (a message's items
arrive together, but several messages may be decoded at once by other threads).
If a batch call fails, its items are retried one by one so that a bad item fails alone.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cortex_tasks.models.base import ItemError

log = logging.getLogger(__name__)

RunBatch = Callable[[list[Any]], list[Any]]


@dataclass(order=True)
class _Item:
    priority: int
    sequence: int
    value: Any = field(compare=False)
    slot: _Slot = field(compare=False)
    index: int = field(compare=False)


class _Slot:
    """The results of one submit() call, filled in as its items are processed."""

    def __init__(self, size: int) -> None:
        self.results: list[Any] = [None] * size
        self.remaining = size
        self.done = threading.Event()

    def fill(self, index: int, result: Any) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


@dataclass
class ItemFailure:
    code: str
    message: str


class DynamicBatcher:
    def __init__(self, run_batch: RunBatch, max_batch_size: int = 32, max_wait: float = 0.002,
                 name: str = "batcher") -> None:
        self.run_batch = run_batch
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max_wait
        self._heap: list[_Item] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._announced = 0  # items promised by submitters that are still being prepared
        self.batches_run = 0
        self.items_run = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, values: list[Any], priority: int = 4, timeout: float | None = None,
               announcement: Announcement | None = None) -> list[Any]:
        """Run `values` through the model (possibly alongside others'); returns results in order.
        A failed item's result is an ItemFailure."""
        if announcement is not None:
            announcement.cancel()
        if not values:
            return []
        slot = _Slot(len(values))
        with self._condition:
            for index, value in enumerate(values):
                heapq.heappush(self._heap, _Item(priority, next(self._sequence), value, slot, index))
            self._condition.notify()
        if not slot.done.wait(timeout):
            raise TimeoutError("batch did not complete in time")
        return slot.results

    def _take_batch(self) -> list[_Item]:
        with self._condition:
            while not self._heap:
                self._condition.wait()
            if len(self._heap) < self.max_batch_size and self.max_wait > 0 and self._announced:
                deadline = time.monotonic() + self.max_wait
                while len(self._heap) < self.max_batch_size and self._announced:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
            count = min(self.max_batch_size, len(self._heap))
            return [heapq.heappop(self._heap) for _ in range(count)]

    def announce(self, count: int) -> Announcement:
        """Tell the batcher `count` items are about to be submitted (lets a partial batch wait briefly).
        Cancel the announcement (or pass it to submit) once they are submitted or will not come."""
        with self._condition:
            self._announced += count
        return Announcement(self, count)

    def _withdraw(self, count: int) -> None:
        with self._condition:
            self._announced = max(0, self._announced - count)
            self._condition.notify()

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            try:
                results = self._run(batch)
            except BaseException as exc:  # never let the batching thread die
                log.exception("batch failed")
                results = [ItemFailure("model_error", f"{type(exc).__name__}: {exc}")] * len(batch)
            self.batches_run += 1
            self.items_run += len(batch)
            for item, result in zip(batch, results):
                item.slot.fill(item.index, result)

    def _run(self, batch: list[_Item]) -> list[Any]:
        values = [item.value for item in batch]
        try:
            results = self.run_batch(values)
            if len(results) != len(values):
                raise RuntimeError(f"model returned {len(results)} results for {len(values)} inputs")
            return results
        except ItemError as exc:
            if len(values) == 1:
                return [ItemFailure(exc.code, str(exc))]
        except Exception as exc:
            if len(values) == 1:
                return [ItemFailure("model_error", f"{type(exc).__name__}: {exc}")]
            log.warning("batch of %d failed (%s); retrying items one by one", len(values), exc)
        # Isolate the bad item(s): everyone else still gets an answer.
        return [self._run([item])[0] for item in batch]


class Announcement:
    """Items promised to a batcher; cancelling (or submitting them) withdraws the promise once."""

    def __init__(self, batcher: DynamicBatcher, count: int) -> None:
        self._batcher, self._count = batcher, count

    def cancel(self) -> None:
        count, self._count = self._count, 0
        if count:
            self._batcher._withdraw(count)


class BatcherRegistry:
    """One batcher per (model, params) in this process, created on first use."""

    def __init__(self) -> None:
        self._batchers: dict[tuple[str, str], DynamicBatcher] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], factory: Callable[[], DynamicBatcher]) -> DynamicBatcher:
        batcher = self._batchers.get(key)
        if batcher is None:
            with self._lock:
                batcher = self._batchers.get(key)
                if batcher is None:
                    batcher = self._batchers[key] = factory()
        return batcher
