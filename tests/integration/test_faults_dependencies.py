"""Redis or PostgreSQL stalled (SIGSTOP) or down, with the shipped timeouts: the gateway answers within
2 s, a 503 `dependency_unavailable` with Retry-After where it needs the missing service, the cached
prediction it can answer without it, and it serves again by itself once the service is back.

A stack of its own (tests/support/fault_stack.py): the session's services are never stopped."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.support.fault_stack import Answer, FaultStack
from tests.support.waiting import wait_for

BUDGET_SECONDS = 2.0
# Measured from the request's start; the extra covers a loaded test machine's scheduling, not a wait.
SLACK_SECONDS = 0.5


@pytest.fixture(scope="module")
def stack() -> Iterator[FaultStack]:
    stack = FaultStack(env={"CORTEX_READY_QUEUES": "nlp"})
    try:
        stack.start_services()
        stack.start_gateway(workers=1)
        stack.start_worker("nlp", "nlp", pool="threads", concurrency=2)
        yield stack
    finally:
        stack.close()


def predict(stack: FaultStack, text: str, wait: float = 20) -> Answer:
    return stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": [text], "wait": wait}, timeout=30)


def unavailable(answer: Answer, dependency: str) -> None:
    assert answer.status == 503, answer
    assert answer.body["error"]["code"] == "dependency_unavailable", answer
    assert answer.body["error"]["details"]["dependency"] == dependency, answer
    assert int(answer.headers["Retry-After"]) >= 1, answer.headers
    assert answer.seconds < BUDGET_SECONDS + SLACK_SECONDS, answer


def quick(answer: Answer) -> Answer:
    assert answer.seconds < BUDGET_SECONDS + SLACK_SECONDS, answer
    return answer


def served_again(stack: FaultStack, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        answer = stack.call("GET", f"/api/v1/jobs/{job_id}", timeout=10)
        if answer.status == 200:
            return
        assert answer.status == 503, answer
        assert time.monotonic() < deadline, f"the gateway did not serve again after the outage: {answer}"
        time.sleep(0.5)


def test_shipped_timeouts_hold_the_budget() -> None:
    """The promise rests on the defaults: one Redis wait, or one database wait, fits in 2 s."""
    from cortex_tasks.core.settings import Settings

    settings = Settings()
    assert settings.redis_socket_timeout_seconds + settings.redis_connect_timeout_seconds <= BUDGET_SECONDS
    assert settings.database_timeout_seconds < BUDGET_SECONDS
    assert settings.dependency_retry_seconds <= BUDGET_SECONDS


def test_postgres_stalled(stack: FaultStack) -> None:
    cached_text = "What a wonderful, reliable day."
    first = predict(stack, cached_text)
    assert first.status == 200, first
    queued = stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": ["A queued one."], "wait": 0})
    job_id = queued.body["job_id"]
    stack.wait_job(job_id)
    assert stack.call("GET", "/ready").status == 200

    stack.stall_postgres()
    try:
        time.sleep(2.5)  # past the gateway's memory of the key: the next lookup would need the database
        # The same request again is answered from the gateway's cache (no database needed).
        again = quick(predict(stack, cached_text))
        assert again.status == 200 and again.body["cached"] is True, again
        for _ in range(3):
            unavailable(stack.call("GET", f"/api/v1/jobs/{job_id}"), "database")
        unavailable(predict(stack, "Never seen before, so it needs a job."), "database")
        ready = quick(stack.call("GET", "/ready"))
        assert ready.status == 503 and ready.body["status"] == "not_ready", ready
        assert ready.body["checks"]["database"]["ok"] is False, ready
        assert quick(stack.call("GET", "/ready", key=None)).body == {"status": "not_ready"}
    finally:
        stack.resume_postgres()
    served_again(stack, job_id)
    assert stack.call("GET", "/ready").status == 200
    assert predict(stack, "After the stall, a new text.").status == 200


def test_postgres_down_and_back(stack: FaultStack) -> None:
    queued = stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": ["Down and up."], "wait": 0})
    job_id = queued.body["job_id"]
    stack.wait_job(job_id)
    stack.stop_postgres()
    try:
        for _ in range(3):
            unavailable(stack.call("GET", f"/api/v1/jobs/{job_id}"), "database")
        assert quick(stack.call("GET", "/ready")).status == 503
    finally:
        stack.start_postgres()
    served_again(stack, job_id)


def test_redis_stalled(stack: FaultStack) -> None:
    cached_text = "Cached before Redis stalls."
    assert predict(stack, cached_text).status == 200
    queued = stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": ["Read during a stall."], "wait": 0})
    job_id = queued.body["job_id"]
    stack.wait_job(job_id)

    stack.stall_redis()
    try:
        again = quick(predict(stack, cached_text))
        assert again.status == 200 and again.body["cached"] is True, again
        unavailable(predict(stack, "Not cached: it must be queued, and cannot be."), "redis")
        # A job's record lives in PostgreSQL: it is still read.
        job = quick(stack.call("GET", f"/api/v1/jobs/{job_id}"))
        assert job.status == 200 and job.body["status"] == "succeeded", job
        ready = quick(stack.call("GET", "/ready"))
        assert ready.status == 503, ready
    finally:
        stack.resume_redis()
    deadline = time.monotonic() + 30
    while (answer := predict(stack, f"After the Redis stall {time.monotonic()}")).status != 200:
        assert answer.status == 503 and time.monotonic() < deadline, answer
        time.sleep(0.5)
    assert stack.call("GET", "/ready").status == 200


def test_a_job_taken_while_postgres_is_down_runs_once_it_is_back(stack: FaultStack) -> None:
    """A prediction accepted (202) and taken by a worker while PostgreSQL is down for longer than the task's
    own retries (1 + 2 + 4 s of back-off): its message is kept, retried every
    DATABASE_AWAY_RETRY_SECONDS (the shipped 30 s), and the job runs once PostgreSQL is back. Before, the
    failed task's message was acknowledged and the job stayed queued until the stale-job sweeps."""
    from cortex_tasks.core.retry_policy import DATABASE_AWAY_RETRY_SECONDS

    worker = stack.workers["nlp"]
    os.killpg(worker.pid, signal.SIGSTOP)  # the message waits until PostgreSQL is down
    try:
        queued = stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": ["Taken while down."], "wait": 0})
        assert queued.status == 202, queued
        stack.stop_postgres()
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    try:
        wait_for(lambda: "kept and tried again" in stack.log_tail("worker-nlp", 400), 60,
                 "the worker to keep the message past its retries", interval=0.5)
    finally:
        stack.start_postgres()
    done = stack.wait_job(queued.body["job_id"], timeout=DATABASE_AWAY_RETRY_SECONDS + 60)
    assert done["status"] == "succeeded", done


def test_a_single_job_taken_while_postgres_is_down_runs_once_it_is_back(stack: FaultStack) -> None:
    """The same for a job of its own message (core/jobs/running.run_job: vectors, documents, chat, agents,
    promotions), here an index build on the maintenance queue: taken while PostgreSQL is down for longer than
    the task's own retries, its message is kept and the job runs once PostgreSQL is back, once (one
    recorded attempt, one succeeded task). Before, the failed task's message was acknowledged, the job stayed
    queued, and the stale-job sweep's orphan pass failed it `message_lost` five minutes later."""
    from cortex_tasks.core.retry_policy import DATABASE_AWAY_RETRY_SECONDS

    stack.start_worker("maintenance", "maintenance", pool="threads", concurrency=1)
    name = f"kept-{int(time.time() * 1000)}"
    created = stack.call("PUT", f"/api/v1/vectors/{name}", {"dimension": 4, "model": None, "metric": "l2",
                                                            "defer_index": True})
    assert created.status == 201, created
    items = [{"id": str(i), "vector": [float(i), 1.0, 0.0, 0.5]} for i in range(20)]
    assert stack.call("POST", f"/api/v1/vectors/{name}", {"items": items}).status == 200

    worker = stack.workers["maintenance"]
    os.killpg(worker.pid, signal.SIGSTOP)  # the message waits until PostgreSQL is down
    try:
        queued = stack.call("POST", f"/api/v1/vectors/{name}/index", {"wait": 0})
        assert queued.status == 202, queued
        stack.stop_postgres()
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    try:
        # Its retries used up: the message is kept (or, as before, the task failed and its message was gone).
        wait_for(lambda: any(said in stack.log_tail("worker-maintenance", 400)
                             for said in ("kept and tried again", "raised unexpected")), 60,
                 "the index build's task to use up its retries", interval=0.5)
    finally:
        stack.start_postgres()
    done = stack.wait_job(queued.body["job_id"], timeout=DATABASE_AWAY_RETRY_SECONDS + 60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1, done  # the deliveries while PostgreSQL was down ran nothing
    assert done["result"]["count"] == 20 and done["result"]["index"]["state"] == "ready", done
    ran = [line for line in stack.log_tail("worker-maintenance", 1000).splitlines()
           if "cortex.vectors.build_index[" in line and "] succeeded in" in line]
    assert len(ran) == 1, ran
