"""Workers killed, and Redis killed under them, with the SHIPPED visibility timeout (hours): every accepted
job still finishes within a bounded time, and none is worked twice.

Before, a SIGKILLed worker's messages sat in Redis's `unacked` hash until the visibility timeout (5 h),
their jobs "running"; a worker that lost Redis could not give back the messages it held, and a threads
worker crashed acknowledging a message of its closed channel (AttributeError in conn_or_acquire). Now
each consumer holds a lease and the others give back the messages of a consumer whose lease lapsed
(cortex_tasks/core/broker_transport.py). A stack of its own (tests/support/fault_stack.py)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fault_stack import FaultStack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

HOLD = ["-I", "tests.support.slow_tasks"]
# The shipped lease (15 s) plus two restore passes (10 s each) and the job itself, with room for a
# loaded machine: minutes, not the visibility timeout's hours.
RECOVERY_SECONDS = 120


@pytest.fixture(scope="module")
def stack() -> Iterator[FaultStack]:
    stack = FaultStack()
    try:
        stack.start_services()
        yield stack
    finally:
        stack.close()


def submit_hold_jobs(stack: FaultStack, queue: str, count: int, seconds: float, trace: Path) -> list[str]:
    code = f"""
from cortex_tasks import app
from cortex_tasks.core.jobs import store
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'):
    for _ in range({count}):
        job, _ = store.create_job(store.NewJob(owner='faults', kind='predict', task='hold'))
        app.send_task('cortex.testing.hold_job', task_id=job.id, queue={queue!r},
                      kwargs={{'job_id': job.id, 'seconds': {seconds}, 'trace_dir': {str(trace)!r}}})
        print(job.id)
"""
    return stack.run(code).split()


def job_states(stack: FaultStack, job_ids: list[str]) -> dict[str, tuple[str, int]]:
    code = f"""
from cortex_tasks.core.jobs import store
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'):
    for job in store.get_jobs({job_ids!r}):
        print(job.id, job.status, job.attempts)
"""
    return {line.split()[0]: (line.split()[1], int(line.split()[2])) for line in stack.run(code).splitlines()}


def running(stack: FaultStack, job_ids: list[str]) -> int:
    return sum(status == "running" for status, _ in job_states(stack, job_ids).values())


def completions(trace: Path) -> int:
    path = trace / "completions"
    return len(path.read_text().splitlines()) if path.exists() else 0


def all_finished(stack: FaultStack, job_ids: list[str]) -> dict[str, tuple[str, int]]:
    def finished() -> dict[str, tuple[str, int]] | None:
        states = job_states(stack, job_ids)
        return states if all(status in ("succeeded", "failed") for status, _ in states.values()) else None

    return wait_for(finished, RECOVERY_SECONDS, "every accepted job to finish", interval=1)


def test_shipped_visibility_timeout_is_hours() -> None:
    """The recovery below does not come from a short visibility timeout: the shipped one is kept."""
    from celeryconfig import LONGEST_HARD_TIME_LIMIT, VISIBILITY_TIMEOUT

    assert VISIBILITY_TIMEOUT > LONGEST_HARD_TIME_LIMIT >= 3600


def test_sigkilled_worker_jobs_are_taken_over_by_a_new_worker(stack: FaultStack, tmp_path: Path) -> None:
    queue = "hold-kill"
    stack.start_worker("doomed", queue, pool="prefork", concurrency=2, extra_args=HOLD)
    job_ids = submit_hold_jobs(stack, queue, 4, seconds=4, trace=tmp_path)
    wait_for(lambda: running(stack, job_ids) >= 2, 60, "two jobs to start", interval=0.3)
    stack.kill_worker("doomed")  # master and pool processes at once: nothing is given back by them
    assert {status for status, _ in job_states(stack, job_ids).values()} >= {"running"}
    killed_at = time.monotonic()
    stack.start_worker("heir", queue, pool="prefork", concurrency=2, extra_args=HOLD)
    states = all_finished(stack, job_ids)
    recovered_in = time.monotonic() - killed_at
    try:
        assert {status for status, _ in states.values()} == {"succeeded"}, states
        # Each job's work was completed (and recorded) once, though two were started twice.
        assert completions(tmp_path) == len(job_ids)
        assert recovered_in < RECOVERY_SECONDS
    finally:
        stack.kill_worker("heir")


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_redis_killed_and_restarted_with_its_data(stack: FaultStack, tmp_path: Path, pool: str) -> None:
    queue = f"hold-redis-{pool}"
    name = f"survivor-{pool}"
    stack.start_worker(name, queue, pool=pool, concurrency=2, extra_args=HOLD)
    try:
        job_ids = submit_hold_jobs(stack, queue, 4, seconds=4, trace=tmp_path)
        wait_for(lambda: running(stack, job_ids) >= 2, 60, "two jobs to start", interval=0.3)
        stack.kill_redis()
        time.sleep(1.5)
        stack.restart_redis(keep_data=True)
        states = all_finished(stack, job_ids)
        assert {status for status, _ in states.values()} == {"succeeded"}, states
        assert completions(tmp_path) == len(job_ids)
        # The worker lived through it (a threads worker used to crash acknowledging after the reconnect).
        assert stack.workers[name].poll() is None, stack.log_tail(f"worker-{name}")
        assert "AttributeError" not in stack.log_tail(f"worker-{name}", 2000)
    finally:
        stack.kill_worker(name)


def test_acknowledging_on_a_closed_connection_is_a_connection_error(stack: FaultStack) -> None:
    """What crashed the threads worker after a Redis restart: an acknowledgement on a channel whose
    connection Celery had closed made kombu build a pool from a connection that is gone (AttributeError:
    'NoneType' object has no attribute 'hostname'), which Celery does not catch. A connection error is
    what Celery logs and lives with; the message is given back once the channel's lease lapses."""
    import kombu
    import redis

    from cortex_tasks.core.broker_transport import Channel, use_for_redis_urls

    use_for_redis_urls()
    connection = kombu.Connection(stack.env["REDIS_URL"])
    channel = connection.channel()
    assert isinstance(channel, Channel)
    connection.close()
    with pytest.raises(redis.ConnectionError):
        channel.qos.ack("no-such-tag")
