"""Dynamic batching inside a worker: concurrent requests for the same model and params share one call.

Task threads submit their items and block; batching threads ("lanes", one per model call that may run at
once: see compute.py) take the waiting items in priority order (0 first, then arrival), up to
`max_batch_size`, and run the model once. A lane takes its items only once it holds the cores for the
call, so items that arrive while it waits still join its batch.
A submission may let its items share larger calls (`call_size`: batch chunks, which gain from a few
hundred texts sorted by length in one call); a call is never larger than the smallest call size among its
items, so a prediction's call keeps its model's `max_batch_size` however many chunk items wait.
It does not wait when the model is idle: batches form by themselves while the previous call runs, and
a submission that finds nothing to batch with is run by the submitting thread itself.
`max_wait` only lets a batch fill up while more items are known to be on their way (a message's items
arrive together, but several messages may be decoded at once by other threads).
If a batch call fails, its items are retried one by one so that a bad item fails alone.
Each item is charged its share of its call's wall time (the call's seconds over the items it held), so the
usage ledger counts a batched call once, not once per item (`submit_measured`).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.observability import tracing
from cortex_tasks.runtime.inference.compute import NO_CORES, CoreGrant

log = logging.getLogger(__name__)

RunBatch = Callable[[list[Any]], list[Any]]
# Given "is this call all the work there is?", holds what one model call needs and yields the grant to
# run it with (cores: compute.py).
CallSlot = Callable[[Callable[[], bool]], AbstractContextManager[CoreGrant]]


def _calls_at_once(count: int) -> CallSlot:
    """A call slot that lets `count` calls run at once (for a batcher given no core budget)."""
    calls = threading.BoundedSemaphore(count)

    @contextmanager
    def slot(_alone: Callable[[], bool]) -> Iterator[CoreGrant]:
        with calls:
            yield NO_CORES

    return slot


@dataclass(order=True)
class _Item:
    priority: int
    sequence: int
    value: Any = field(compare=False)
    slot: _Slot = field(compare=False)
    index: int = field(compare=False)
    call_size: int = field(compare=False)  # the most items a call holding this item may have
    trace: Any = field(default=None, compare=False)  # its submission's trace (tracing.submission)


class _Slot:
    """The results of one submit() call, filled in as its items are processed."""

    def __init__(self, size: int) -> None:
        self.results: list[Any] = [None] * size
        self.seconds: list[float] = [0.0] * size  # each item's share of its model call's wall time
        self.remaining = size
        self.done = threading.Event()
        self._lock = threading.Lock()  # lanes may fill parts of one submission at the same time

    def fill(self, index: int, result: Any, seconds: float = 0.0) -> None:
        self.results[index] = result
        self.seconds[index] = seconds
        with self._lock:
            self.remaining -= 1
            finished = self.remaining == 0
        if finished:
            self.done.set()


@dataclass
class ItemFailure:
    code: str
    message: str
    # What the model call raised, for callers whose retry policy depends on it (batch chunks retry the
    # whole task on a lost database or broker connection).
    cause: BaseException | None = field(default=None, repr=False, compare=False)


class DynamicBatcher:
    def __init__(self, run_batch: RunBatch, max_batch_size: int = 32, max_wait: float = 0.002,
                 name: str = "batcher", lanes: int = 1, call_slot: CallSlot | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.run_batch = run_batch
        self._on_batch = on_batch  # told each model call's size (the worker's batch-size histogram)
        self.name = name
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max_wait
        self.lanes = max(1, lanes)
        # At most `lanes` calls at once, whether a lane or a lone submitter makes them.
        self._call_slot = call_slot or _calls_at_once(self.lanes)
        # Up to this many waiting items go to one call on every core; more are shared out between lanes.
        # A single lane shares with no one. Several lanes split from two items per lane: one text on one
        # core takes about 1.7 times as long as on two, so splitting smaller batches only adds latency.
        self._wide_limit = self.max_batch_size if self.lanes == 1 else 2 * self.lanes
        self._heap: list[_Item] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._announced = 0  # items promised by submitters that are still being prepared
        self._running = 0  # model calls running (lanes' and lone submitters')
        self.batches_run = 0
        self.items_run = 0
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{lane}", daemon=True)
                         for lane in range(self.lanes)]
        for thread in self._threads:
            thread.start()

    def submit(self, values: list[Any], priority: int = 4, timeout: float | None = None,
               announcement: Announcement | None = None, call_size: int | None = None) -> list[Any]:
        """Run `values` through the model (possibly alongside others'); returns results in order.
        A failed item's result is an ItemFailure. `call_size`: the most items a model call holding these
        values may have (default `max_batch_size`)."""
        return self.submit_measured(values, priority, timeout, announcement, call_size)[0]

    def submit_measured(self, values: list[Any], priority: int = 4, timeout: float | None = None,
                        announcement: Announcement | None = None,
                        call_size: int | None = None) -> tuple[list[Any], list[float]]:
        """submit(), and each value's share of the wall seconds of the model call that answered it."""
        if announcement is not None:
            announcement.cancel()
        if not values:
            return [], []
        size = self.max_batch_size if call_size is None else max(1, call_size)
        slot = _Slot(len(values))
        trace = tracing.submission()
        items = [_Item(priority, next(self._sequence), value, slot, index, size, trace)
                 for index, value in enumerate(values)]
        with self._condition:
            # Nothing else to batch with, now or announced, and one call takes it all: this thread makes
            # the call itself. Handing the items to a lane and the results back costs two thread wake-ups
            # (about 0.7 ms on an idle two-core VM), on every request that arrives alone.
            alone = (not self._heap and not self._running and not self._announced
                     and len(values) <= min(self._wide_limit, size))
            if alone:
                self._running += 1
            else:
                for item in items:
                    heapq.heappush(self._heap, item)
                self._condition.notify()
        if alone:
            self._call(lambda: items, reraise=True)
        if not slot.done.wait(timeout):
            raise TimeoutError("batch did not complete in time")
        return slot.results, slot.seconds

    def _wait_for_items(self) -> None:
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

    def _take_batch(self) -> list[_Item]:
        """The next batch for this lane: everything, if it is too little to share; otherwise an even share
        across the idle lanes, so that they finish together instead of one idling while another runs long.
        Either way no more than the smallest call size among the items taken."""
        with self._condition:
            waiting = len(self._heap)
            idle_lanes = self.lanes - self._running
            limit = waiting if waiting <= self._wide_limit else -(-waiting // idle_lanes)
            batch: list[_Item] = []
            while self._heap and len(batch) < min(limit, self._heap[0].call_size):
                item = heapq.heappop(self._heap)
                limit = min(limit, item.call_size)
                batch.append(item)
            if batch:
                self._running += 1
            if self._heap:
                self._condition.notify()  # another lane may take the rest now
            return batch

    def _one_call_takes_all(self) -> bool:
        with self._condition:
            return len(self._heap) <= self._wide_limit

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
            self._wait_for_items()
            self._call(self._take_batch)

    def _call(self, take_batch: Callable[[], list[_Item]], reraise: bool = False) -> None:
        """One model call: hold the cores, take the batch, run it, hand every item its result.

        `take_batch` is called once the cores are held; taking a batch counts the call as running (a
        lane's: _take_batch; a lone submission counted itself). A lane survives any error (its items
        fail); a submitter's own call re-raises it (a task's time limit, say) once the books are kept."""
        batch: list[_Item] = []
        error: BaseException | None = None
        started = time.perf_counter()
        try:
            with self._call_slot(self._one_call_takes_all) as grant:
                batch = take_batch()  # a lane's is empty if another lane took the items first
                # The call's span links every job its items came from (batch membership).
                with tracing.model_call([item.trace for item in batch], batcher=self.name):
                    started = time.perf_counter()  # the call's own time, not the wait for the cores
                    results = grant.run(partial(self._run, batch)) if batch else []
        except BaseException as exc:
            log.exception("batch failed")
            error = exc
            results = [ItemFailure("model_error", f"{type(exc).__name__}: {exc}", exc)] * len(batch)
        share = (time.perf_counter() - started) / len(batch) if batch else 0.0
        with self._condition:
            if batch:
                self._running -= 1
                self.batches_run += 1
                self.items_run += len(batch)
        if batch and self._on_batch is not None:
            self._on_batch(len(batch))
        for item, result in zip(batch, results):
            item.slot.fill(item.index, result, share)
        if error is not None and reraise:
            raise error

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
        except Exception as exc:  # noqa: BLE001 (whatever a call raises, its items are tried alone)
            if len(values) == 1:
                return [ItemFailure("model_error", f"{type(exc).__name__}: {exc}", exc)]
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
        self._batchers: dict[tuple[str, ...], DynamicBatcher] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...], factory: Callable[[], DynamicBatcher]) -> DynamicBatcher:
        batcher = self._batchers.get(key)
        if batcher is None:
            with self._lock:
                batcher = self._batchers.get(key)
                if batcher is None:
                    batcher = self._batchers[key] = factory()
        return batcher
