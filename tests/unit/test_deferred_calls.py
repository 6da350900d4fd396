import os
import threading
import time

import pytest

from cortex_tasks.core.jobs.deferred import DelayedCalls


def test_a_call_skipped_before_it_is_due_never_runs():
    ran = threading.Event()
    calls = DelayedCalls(0.2, "test-skip")
    call = calls.schedule(ran.set)
    assert call.skip_or_wait() == (False, None)
    time.sleep(0.4)
    assert not ran.is_set()


def test_a_due_call_runs_after_its_delay_and_its_result_is_handed_over():
    calls = DelayedCalls(0.1, "test-due")
    scheduled = time.monotonic()
    ran_at: list[float] = []
    call = calls.schedule(lambda: ran_at.append(time.monotonic()) or 42)
    time.sleep(0.3)
    assert call.skip_or_wait() == (True, 42)
    assert ran_at[0] - scheduled >= 0.1


def test_skip_or_wait_waits_for_a_call_that_has_started():
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "done"

    call = DelayedCalls(0.0, "test-wait").schedule(slow)
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    assert call.skip_or_wait() == (True, "done")


def test_a_failed_call_reraises_in_the_waiter():
    def broken() -> None:
        raise RuntimeError("database down")

    call = DelayedCalls(0.0, "test-fail").schedule(broken)
    time.sleep(0.2)
    with pytest.raises(RuntimeError, match="database down"):
        call.skip_or_wait()


def test_calls_run_in_order_and_skipped_ones_do_not_hold_up_the_rest():
    calls = DelayedCalls(0.05, "test-order")
    order: list[int] = []
    scheduled = [calls.schedule(lambda n=n: order.append(n)) for n in range(5)]
    scheduled[2].skip_or_wait()
    time.sleep(0.4)
    assert order == [0, 1, 3, 4]


def test_a_forked_child_runs_its_calls_on_a_thread_of_its_own():
    calls = DelayedCalls(0.0, "test-fork")
    assert calls.schedule(lambda: 1).skip_or_wait() is not None  # the parent's thread exists
    time.sleep(0.1)
    child = os.fork()
    if child == 0:
        ok = False
        try:
            call = calls.schedule(lambda: 7)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not call._done.is_set():
                time.sleep(0.01)
            ok = call.skip_or_wait() == (True, 7)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 0
