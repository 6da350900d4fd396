"""The worker's cores, shared by every model call in the process.

One torch call with a thread per core is the fastest way to run a single small batch, but not to run
many: a multi-threaded kernel waits at every barrier for its slowest thread, so whenever another process
(the gateway, PostgreSQL, Redis) takes a core for a moment, the whole call stalls. Independent calls with
one thread each ("lanes") lose only what is taken from them. Measured on two cores with
all-MiniLM-L6-v2 at 32 texts per call: two one-thread lanes embedded 15-30% more texts per second than
one two-thread call, and kept that lead with a competing process busy 25% of the time.

So every model call asks the budget for cores. It runs wide (all cores, alone) when nothing else wants
them, which keeps a lone request's latency low, and narrow (one core, beside other narrow calls) when
more work is waiting. How many calls of one model may run at once is the model's `compute` mode in the
catalogue:
- "lanes": one call per core (backends that are safe to call from several threads at once);
- "exclusive": one call at a time;
- "remote": the work happens elsewhere (OpenAI), so calls take no core and one runs at a time, as before.

A call runs through the grant it gets (`grant.run(fn)`): a narrow call in the calling thread, a wide one
on the process's single wide-call thread. torch's OpenMP pool belongs to the thread that calls into it, so
wide calls made from changing threads (the batcher's lanes take turns, batch chunks run in task threads)
each woke a team of their own: single-sentence MiniLM calls 5 ms apart took 20-24 ms when two threads
alternated and 13-16 ms from one thread, on two cores. One thread keeps one team.

Every other thread of a worker starts with torch at one thread (OMP_NUM_THREADS=1, worker_signals.py):
a second all-core team in the process, even an idle one, makes libgomp manage more threads than there
are cores, and then its threads stop spinning between operations and sleep, so every operation of a wide
call waits for a wake-up. Measured on two cores, single-sentence MiniLM calls 12 ms apart on the
wide-call thread: 9-10 ms with the main thread at one torch thread, 12.5-13 ms once the main thread had
run torch with two.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from cortex_tasks.core.process_threads import helper_threads
from cortex_tasks.core.settings import get_settings

LANES, EXCLUSIVE, REMOTE = "lanes", "exclusive", "remote"
COMPUTE_MODES = (LANES, EXCLUSIVE, REMOTE)

WideIf = Callable[[], bool]
T = TypeVar("T")


@dataclass(frozen=True)
class CoreGrant:
    """The cores held for one model call (0: a call that uses none, such as a remote API's)."""

    width: int

    def run(self, call: Callable[[], T]) -> T:
        """Run the model call on these cores: wide on the wide-call thread, narrow right here."""
        if self.width > 1:
            width = self.width

            def on_wide_thread() -> T:
                _use_torch_threads(width)
                return call()

            return helper_threads("cortex-wide-calls", 1).submit(on_wide_thread).result()
        if self.width == 1:
            _use_torch_threads(1)
        return call()


NO_CORES = CoreGrant(0)


def always() -> bool:
    return True


class CoreBudget:
    """Cores handed out to model calls: all of them to a call that is alone, one each otherwise."""

    def __init__(self, cores: int) -> None:
        self.cores = max(1, cores)
        self._free = self.cores
        self._waiting = 0
        self._condition = threading.Condition()

    @contextmanager
    def cores_for_call(self, wide_if: WideIf = always) -> Iterator[CoreGrant]:
        """Hold cores for one model call; yields the grant to run the call with.

        `wide_if` tells whether this call is all the work there is for now (nothing else is queued behind
        it); only then, and only when no other call runs or waits, does it get every core."""
        with self._condition:
            self._waiting += 1
            try:
                while self._free == 0:
                    self._condition.wait()
            finally:
                self._waiting -= 1
            alone = self._free == self.cores and self._waiting == 0
            width = self.cores if alone and wide_if() else 1
            self._free -= width
        try:
            yield CoreGrant(width)
        finally:
            with self._condition:
                self._free += width
                self._condition.notify_all()


def _use_torch_threads(count: int) -> None:
    # torch's thread count is per calling thread once that thread has run a torch op (OpenMP's ICV and
    # MKL's local setting), so narrow calls in lanes and the wide-call thread never change each other's.
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)


_budget: CoreBudget | None = None
_budget_guard = threading.Lock()
_model_slots: dict[str, threading.BoundedSemaphore] = {}


def configure(cores: int) -> None:
    """Set this process's budget (worker start-up: every core in a threads worker, one in a prefork child)."""
    global _budget
    with _budget_guard:
        _budget = CoreBudget(cores)


def torch_threads() -> int:
    """Cores a solo/threads worker gives its model calls (below): every core by default.
    A call that is alone uses them all; under load, calls run side by side with one thread each.
    CORTEX_TORCH_THREADS=1 keeps a worker to one core, next to other heavy processes."""
    configured = get_settings().torch_threads
    return max(1, configured) if configured is not None else (os.cpu_count() or 1)


def core_budget() -> CoreBudget:
    global _budget
    if _budget is None:
        with _budget_guard:
            if _budget is None:
                _budget = CoreBudget(torch_threads())
    return _budget


def lanes(mode: str) -> int:
    """How many calls of a model in this compute mode may run at once in this process."""
    return core_budget().cores if mode == LANES else 1


def _slots_of(model: str, mode: str) -> threading.BoundedSemaphore:
    count = lanes(mode)
    with _budget_guard:
        slots = _model_slots.get(model)
        if slots is None:
            slots = _model_slots[model] = threading.BoundedSemaphore(count)
        return slots


@contextmanager
def model_call(model: str, mode: str, wide_if: WideIf = always) -> Iterator[CoreGrant]:
    """Wait for a free lane of `model` and for cores; yields the grant to run one call with."""
    with _slots_of(model, mode):
        if mode == REMOTE:
            yield NO_CORES
            return
        with core_budget().cores_for_call(wide_if) as grant:
            yield grant
