"""Limits and duplicates across gateway processes, and a gateway process killed mid-request: a stack of its
own with a two-process gateway (tests/support/fault_stack.py), no worker needed (jobs are only accepted)."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.fault_stack import FaultStack

PER_MINUTE, BURST = 30, 5


@pytest.fixture(scope="module")
def stack() -> Iterator[FaultStack]:
    stack = FaultStack(env={"CORTEX_RATE_LIMITS": json.dumps(
        {"limited": {"requests_per_minute": PER_MINUTE, "burst_size": BURST}})})
    try:
        stack.start_services()
        stack.start_gateway(workers=2, threads=16)
        yield stack
    finally:
        stack.close()


def test_duplicates_of_one_idempotency_key_make_one_job(stack: FaultStack) -> None:
    key = f"faults-{uuid.uuid4().hex}"
    body = {"task": "sentiment", "inputs": ["one job only"]}
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: stack.call("POST", "/api/v1/batch/submit", body, timeout=60,
                                                     headers={"Idempotency-Key": key}), range(100)))
    assert {a.status for a in answers} <= {200, 201, 202}, Counter(a.status for a in answers)
    assert len({a.body["job_id"] for a in answers}) == 1


def test_a_rate_limit_holds_across_processes(stack: FaultStack) -> None:
    limited = stack.run("from cortex_tasks.core.auth.keys import create_key; "
                        "print(create_key('inference_user', name='limited', tier='limited').key)").strip()
    body = {"task": "sentiment", "inputs": ["rate"], "wait": 0}
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: stack.call("POST", "/api/v1/predict", body, key=limited, timeout=60),
                                range(3 * (PER_MINUTE + BURST))))
    seconds = time.monotonic() - started
    passed = sum(1 for a in answers if a.status == 202)
    # The burst, plus what the bucket refilled while the requests went out (one per process would double it).
    assert passed <= BURST + PER_MINUTE * seconds / 60 + 1, (passed, seconds)
    refused = [a for a in answers if a.status == 429]
    assert refused and all(int(a.headers["Retry-After"]) >= 1 for a in refused)


def test_a_gateway_process_killed_mid_request_loses_no_accepted_job(stack: FaultStack) -> None:
    """Clients keep submitting while one gateway process is SIGKILLed: requests it held fail (no answer),
    every job that was answered 202 exists, and gunicorn starts a new process."""
    before = set(stack.gateway_children())
    accepted: list[str] = []
    failures = Counter()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                answer = stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": [uuid.uuid4().hex],
                                                                  "wait": 0}, timeout=20)
            except OSError:
                failures["no answer"] += 1
                continue
            if answer.status == 202:
                accepted.append(answer.body["job_id"])
            else:
                failures[str(answer.status)] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    os.kill(sorted(before)[0], signal.SIGKILL)
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert accepted
    assert set(failures) <= {"no answer"}, failures
    deadline = time.monotonic() + 60
    while len(set(stack.gateway_children()) - before) < 1:
        assert time.monotonic() < deadline, "gunicorn did not replace the killed process"
        time.sleep(0.5)
    for job_id in accepted:
        answer = stack.call("GET", f"/api/v1/jobs/{job_id}")
        assert answer.status == 200 and answer.body["status"] in ("queued", "running", "succeeded"), answer
