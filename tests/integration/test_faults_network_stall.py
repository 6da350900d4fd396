"""A network stall between the workers and Redis: every connection of a worker to Redis goes through a relay
(tests/support/tcp_relay.py) that stops forwarding for 20 s while the worker holds jobs, then forwards
again. Afterwards every job finishes, each one's work is completed once (no duplicate), and none is left
stuck; with the SHIPPED lease, restore interval and visibility timeout.

A stack of its own (tests/support/fault_stack.py); the test's own submissions reach Redis directly."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.test_faults_workers import (
    HOLD,
    RECOVERY_SECONDS,
    all_finished,
    completions,
    running,
    stack,  # noqa: F401 - the module's own stack of Redis and PostgreSQL, a fixture
    submit_hold_jobs,
)
from tests.support.fault_stack import FaultStack
from tests.support.tcp_relay import TcpRelay
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

STALL_SECONDS = 20


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_stalled_link_to_redis_loses_nothing_and_doubles_nothing(stack: FaultStack, tmp_path: Path,
                                                                    pool: str) -> None:
    relay = TcpRelay("127.0.0.1", stack.redis_server.port).start()
    queue, name = f"hold-stall-{pool}", f"behind-relay-{pool}"
    try:
        stack.start_worker(name, queue, pool=pool, concurrency=2, extra_args=HOLD,
                           env={"REDIS_URL": relay.url_for(stack.env["REDIS_URL"])})
        job_ids = submit_hold_jobs(stack, queue, 6, seconds=3, trace=tmp_path)
        wait_for(lambda: running(stack, job_ids) >= 2, 60, "two jobs to start", interval=0.3)
        relay.pause()
        time.sleep(STALL_SECONDS)
        relay.resume()
        resumed_at = time.monotonic()
        states = all_finished(stack, job_ids)
        assert {status for status, _ in states.values()} == {"succeeded"}, states
        assert completions(tmp_path) == len(job_ids)  # each job's work done once
        assert time.monotonic() - resumed_at < RECOVERY_SECONDS
        assert stack.workers[name].poll() is None, stack.log_tail(f"worker-{name}")
    finally:
        stack.kill_worker(name)
        relay.close()
