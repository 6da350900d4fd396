"""More prediction requests than a gateway process can hold: the excess is shed at once with 503
`overloaded` and Retry-After, never left to time out, and /health still answers meanwhile.

Before, the in-flight bound (CORTEX_MAX_CONCURRENT_REQUESTS, 100) was larger than the process's threads
(64): it never refused anything, the excess waited in gunicorn's queue until the clients gave up, and a
request that did reach the bound waited 30 s for a slot. A stack of its own (tests/support/fault_stack.py)
with a gateway of 8 threads and no worker, so every accepted prediction holds its slot for its whole wait."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.fault_stack import Answer, FaultStack

THREADS, CLIENTS, WAIT = 8, 20, 15


@pytest.fixture(scope="module")
def stack() -> Iterator[FaultStack]:
    stack = FaultStack()
    try:
        stack.start_services()
        stack.start_gateway(workers=1, threads=THREADS)
        yield stack
    finally:
        stack.close()


def test_shipped_bound_leaves_threads_free_and_sheds_quickly() -> None:
    """The shipped defaults: fewer in-flight slots than threads, and a short wait for one."""
    from cortex_tasks.core.settings import Settings
    from cortex_web.limits import inflight_bound

    settings = Settings()
    assert inflight_bound(settings) < settings.web_threads
    assert settings.queue_timeout_seconds <= 2


def test_excess_predictions_are_shed_with_503_not_timeouts(stack: FaultStack) -> None:
    def predict(number: int) -> Answer | str:
        try:
            return stack.call("POST", "/api/v1/predict",
                              {"task": "sentiment", "inputs": [f"Overload {number}."], "wait": WAIT},
                              timeout=WAIT + 20)
        except OSError as exc:  # a timeout or a refused connection: what must not happen
            return f"{type(exc).__name__}"

    with ThreadPoolExecutor(CLIENTS) as pool:
        pending = [pool.submit(predict, number) for number in range(CLIENTS)]
        time.sleep(3)  # every slot taken by now, the excess shed
        # While every slot is held, the threads left free still answer.
        health = stack.call("GET", "/health", key=None, timeout=10)
        answers = [future.result() for future in pending]
    assert health.status == 200, health
    failures = [a for a in answers if not isinstance(a, Answer)]
    assert failures == [], failures
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {202, 503} and statuses[202] >= 1 and statuses[503] >= 1, statuses
    for answer in answers:
        if answer.status == 503:
            assert answer.body["error"]["code"] == "overloaded", answer
            assert int(answer.headers["Retry-After"]) >= 1, answer.headers
