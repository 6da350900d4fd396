"""At-least-once delivery: a worker killed mid-job loses nothing, and a job is recorded once.

The kill tests use a test worker on a private queue running a slow job (tests/support/slow_tasks.py)
through the real job lifecycle, so that the kill surely lands while the job runs; each runs with Redis and
with RabbitMQ as the broker (the `broker` fixture). The duplicate-message test uses the session's gpu worker.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from cortex_tasks.core.jobs import store
from cortex_tasks.core.tenancy import tenant_scope
from tests.support.brokers import Broker
from tests.support.prediction_messages import gateway_job, send_gpu_message
from tests.support.processes import WorkerProcess
from tests.support.waiting import wait_for

# These tests also read and write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_default_tenant")]


def submit_hold_job(broker: Broker, queue: str, seconds: float, trace_dir: Path) -> str:
    job, _ = store.create_job(store.NewJob(owner="delivery-test", kind="predict", task="hold"))
    broker.send_task("cortex.testing.hold_job", kwargs={
        "job_id": job.id, "seconds": seconds, "trace_dir": str(trace_dir)}, task_id=job.id, queue=queue)
    return job.id


def started_pids(trace_dir: Path) -> list[int]:
    return [int(path.name.split("-")[1]) for path in trace_dir.glob("started-*")]


@pytest.fixture()
def trace_dir(tmp_path) -> Path:
    return tmp_path


def test_sigkilled_pool_process_job_is_redelivered_and_recorded_once(trace_dir, broker):
    queue = f"delivery-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(queue, pool="prefork", concurrency=1, name="delivery", env=broker.env,
                           extra_args=["-I", "tests.support.slow_tasks"]).start()
    try:
        job_id = submit_hold_job(broker, queue, seconds=3, trace_dir=trace_dir)
        first_pid = wait_for(lambda: started_pids(trace_dir), 60, "the job to start")[0]
        assert store.get_job(job_id).status == "running"
        os.kill(first_pid, signal.SIGKILL)  # the pool process running the job dies mid-job
        job = wait_for(lambda: (j := store.get_job(job_id)) and j.status in store.FINISHED_STATES and j,
                       90, "the job to finish after redelivery")
    finally:
        worker.stop()
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert job.result == {"outputs": ["held"], "timings": job.result["timings"]}
    # A new pool process ran it; the work completed (and was recorded) exactly once.
    assert len(set(started_pids(trace_dir))) == 2
    assert len((trace_dir / "completions").read_text().splitlines()) == 1


def test_sigkilled_worker_job_completes_on_a_new_worker(trace_dir, broker):
    """The whole worker dies (no chance to requeue): the message stays unacknowledged in Redis, and a new
    worker takes it over once the visibility timeout has passed (shortened here from hours to seconds).
    RabbitMQ gives it back when the dead worker's connection closes."""
    queue = f"delivery-{uuid.uuid4().hex[:6]}"
    env = {"CORTEX_VISIBILITY_TIMEOUT": "8", "CORTEX_UNACKED_RESTORE_INTERVAL": "1", **broker.env}
    first = WorkerProcess(queue, pool="prefork", concurrency=1, name="doomed", env=env,
                          extra_args=["-I", "tests.support.slow_tasks"]).start()
    try:
        job_id = submit_hold_job(broker, queue, seconds=3, trace_dir=trace_dir)
        wait_for(lambda: started_pids(trace_dir), 60, "the job to start")
    finally:
        first.kill(signal.SIGKILL)  # master and pool process together
    assert store.get_job(job_id).status == "running"
    second = WorkerProcess(queue, pool="prefork", concurrency=1, name="heir", env=env,
                           extra_args=["-I", "tests.support.slow_tasks"]).start()
    try:
        job = wait_for(lambda: (j := store.get_job(job_id)) and j.status in store.FINISHED_STATES and j,
                       120, "the new worker to finish the job")
    finally:
        second.stop()
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert len((trace_dir / "completions").read_text().splitlines()) == 1


def test_job_that_keeps_killing_its_worker_is_failed_after_the_delivery_cap(trace_dir, broker):
    queue = f"delivery-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(queue, pool="prefork", concurrency=1, name="cap",
                           env={"CORTEX_MAX_DELIVERIES": "2", **broker.env},
                           extra_args=["-I", "tests.support.slow_tasks"]).start()
    try:
        job_id = submit_hold_job(broker, queue, seconds=30, trace_dir=trace_dir)
        killed: set[int] = set()
        for _ in range(2):
            pid = wait_for(lambda: set(started_pids(trace_dir)) - killed, 60, "a delivery to start").pop()
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        job = wait_for(lambda: (j := store.get_job(job_id)) and j.status in store.FINISHED_STATES and j,
                       60, "the job to be failed")
    finally:
        worker.stop()
    assert job.status == "failed"
    assert job.error["code"] == "redelivery_limit"
    assert not (trace_dir / "completions").exists()


def test_worker_killed_mid_batch_loses_no_item(broker):
    """Several coalesced prediction jobs in one message: the pool process dies while the model runs the
    batch; the message is redelivered and every item of every job is answered."""
    queue = f"delivery-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(queue, pool="prefork", concurrency=1, name="midbatch", env=broker.env).start()
    long_text = " ".join(["the quarterly report describes revenue, costs and the outlook"] * 25)
    jobs = []
    for j in range(4):
        job, _ = store.create_job(store.NewJob(owner="delivery-test", kind="predict", task="embed",
                                               model="all-MiniLM-L6-v2", total=32))
        jobs.append({"job_id": job.id, "inputs": [f"{long_text} {j}-{i} {uuid.uuid4()}" for i in range(32)]})
    try:
        broker.send_task("cortex.inference.run_gpu_jobs", queue=queue, kwargs={
            "task": "embed", "model": "all-MiniLM-L6-v2", "params": {}, "jobs": jobs})
        wait_for(lambda: store.get_job(jobs[0]["job_id"]).status == "running", 120, "the batch to start")
        children = worker.children()
        assert children, "no pool process"
        # The jobs turn running together, just before the model call for 128 long texts (seconds).
        os.kill(children[0], signal.SIGKILL)
        finished = wait_for(lambda: all(store.get_job(job["job_id"]).status in store.FINISHED_STATES
                                        for job in jobs) and [store.get_job(job["job_id"]) for job in jobs],
                            180, "every job to finish after redelivery")
    finally:
        worker.stop()
    for record in finished:
        assert record.status == "succeeded", record.error
        assert record.attempts == 2
        assert len(record.result["outputs"]) == 32
        assert all(len(vector) == 384 for vector in record.result["outputs"])


def test_duplicate_message_of_finished_jobs_is_answered_from_their_records(workers):
    """A job found finished when the message's deliveries are counted keeps its record, and the caller is
    answered with it, not with a new computation."""
    recorded = {"task": "embed", "outputs": ["recorded earlier"]}
    done, _ = store.create_job(store.NewJob(owner="delivery-test", kind="predict", task="embed", total=1))
    store.finish_jobs({done.id: (store.SUCCEEDED, recorded)})
    fresh = gateway_job(["a sentence nobody asked about before"])
    fresh_id = fresh["job_id"]
    outcomes = send_gpu_message([{"job_id": done.id, "inputs": ["an already answered sentence"]}, fresh],
                                "duplicate")
    assert outcomes[done.id] == {"status": "succeeded", "result": recorded, "error": None}
    assert outcomes[fresh_id]["status"] == "succeeded"
    assert len(outcomes[fresh_id]["result"]["outputs"][0]) == 384
    unchanged, fresh_row = store.get_job(done.id), store.get_job(fresh_id)
    assert (unchanged.result, unchanged.attempts) == (recorded, 0)
    assert (fresh_row.status, fresh_row.attempts, fresh_row.owner) == ("succeeded", 1, "delivery-test")


def test_a_quick_first_delivery_writes_each_job_once_finished_and_keeps_a_cancellation(workers):
    """A first delivery that finishes quickly creates its rows finished (right after its answers,
    core/jobs/write_behind.py), this delivery counted; a job cancelled before the worker recorded it stays
    cancelled. (Its answer is published all the same, to nobody: a job can only be cancelled by a caller
    who was answered 202 and so stopped waiting for it.)"""
    fresh = gateway_job([f"a sentence to embed once {uuid.uuid4()}", "and another one"])
    cancelled = gateway_job([f"a job cancelled while queued {uuid.uuid4()}"])
    store.create_jobs([(cancelled["job_id"], store.NewJob(**cancelled["record"]))])  # as before a 202
    assert store.cancel_job(cancelled["job_id"], "changed my mind")
    outcomes = send_gpu_message([fresh, cancelled], "quick-first")
    assert outcomes[fresh["job_id"]]["status"] == "succeeded"
    row = wait_for(lambda: store.get_job(fresh["job_id"]), 30, "the row written behind the answer")
    assert (row.status, row.attempts, row.owner, row.progress_done) == ("succeeded", 1, "delivery-test", 2)
    assert row.created_at <= row.started_at < row.finished_at  # the model ran in between
    assert [len(vector) for vector in row.result["outputs"]] == [384, 384]
    kept = store.get_job(cancelled["job_id"])
    assert (kept.status, kept.attempts, kept.result) == ("cancelled", 0, None)


def test_a_long_first_delivery_shows_running_and_is_counted_once(workers):
    """Jobs still running after a moment are marked running (their delivery counted), and then finished
    by the same delivery without counting it again."""
    long_text = " ".join(["the quarterly report describes revenue, costs and the outlook"] * 25)
    slow = gateway_job([f"{long_text} {i} {uuid.uuid4()}" for i in range(160)])
    seen_running = threading.Event()

    def watch() -> None:
        with tenant_scope("default"):  # a thread of its own: the test's tenant scope does not reach it
            watch_in_scope()

    def watch_in_scope() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not seen_running.is_set():
            row = store.get_job(slow["job_id"])
            if row is not None and row.status == "running":
                seen_running.set()
            elif row is not None and row.status in store.FINISHED_STATES:
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    outcomes = send_gpu_message([slow], "long-first")
    watcher.join(10)
    assert seen_running.is_set(), "the job never showed running while the model worked on it"
    assert outcomes[slow["job_id"]]["status"] == "succeeded"
    row = store.get_job(slow["job_id"])
    assert (row.status, row.attempts, row.progress_done) == ("succeeded", 1, 160)
