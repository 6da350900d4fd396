"""Work that waits a fixed delay and is skipped if it is no longer needed by then.

A prediction's first delivery does not write its jobs' "running" state (and delivery count) before the
model call: most jobs finish within milliseconds, and one statement then records each job whole. Only a
job still running after MARK_RUNNING_AFTER_SECONDS gets the separate write, so that a slow job shows `running`
and a message that keeps killing its worker is still counted (runner.py).

Every call waits the same delay, so calls fall due in the order they were scheduled: one thread takes
them from a FIFO queue and sleeps until each is due, without a heap.
"""
from __future__ import annotations

import contextvars
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_PENDING, _STARTED, _SKIPPED = "pending", "started", "skipped"


class DeferredCall(Generic[T]):
    """`fn` run by a DelayedCalls thread once due, unless `skip_or_wait` was called first."""

    def __init__(self, fn: Callable[[], T], due: float) -> None:
        self.fn, self.due = fn, due
        self._state = _PENDING
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def skip_or_wait(self) -> tuple[bool, T | None]:
        """Skip the call if it has not started; otherwise wait for it. Returns (ran, its result); a
        call that failed re-raises its error here."""
        with self._lock:
            if self._state == _PENDING:
                self._state = _SKIPPED
                return False, None
        self._done.wait()
        if self._error is not None:
            raise self._error
        return True, self._result

    def _run_if_pending(self) -> None:
        with self._lock:
            if self._state != _PENDING:
                return
            self._state = _STARTED
        try:
            self._result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
            self._error = exc
        finally:
            self._done.set()


class DelayedCalls:
    """Runs calls `delay` seconds after they were scheduled, on one thread of this process."""

    def __init__(self, delay: float, name: str) -> None:
        self.delay, self.name = delay, name
        self._queue: queue.SimpleQueue[DeferredCall] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._guard = threading.Lock()

    def schedule(self, fn: Callable[[], T]) -> DeferredCall[T]:
        # Run in the scheduling code's context: the call then acts for the same tenant (core/tenancy.py),
        # which a context variable holds and this process's one thread would not otherwise see.
        context = contextvars.copy_context()
        call = DeferredCall(lambda: context.run(fn), time.monotonic() + self.delay)
        self._ensure_thread()
        self._queue.put(call)
        return call

    def _ensure_thread(self) -> None:
        # A forked pool process inherits the object but not the thread (nor anything queued for it).
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._guard:
            if self._pid != os.getpid() or self._thread is None:
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run_forever, name=self.name, daemon=True)
                self._pid = os.getpid()
                self._thread.start()

    def _run_forever(self) -> None:
        calls = self._queue
        while True:
            call = calls.get()
            wait = call.due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            call._run_if_pending()
