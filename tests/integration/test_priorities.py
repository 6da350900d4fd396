"""Priorities, with Redis and with RabbitMQ as the broker (the `broker` fixture): with a backlog of
low-priority jobs queued and no worker running, high-priority jobs added later still run first once a
worker starts."""
from __future__ import annotations

import time
import uuid

import pytest

from cortex_tasks.core.jobs import store
from cortex_tasks.core.queues import priority_of
from tests.support.brokers import Broker
from tests.support.processes import WorkerProcess

# These tests also read and write rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_default_tenant")]


def enqueue_embed(broker: Broker, queue: str, priority_class: str, text: str) -> str:
    priority = priority_of(priority_class)
    job, _ = store.create_job(store.NewJob(owner="priority-test", kind="predict", task="embed",
                                           model="all-MiniLM-L6-v2", priority=priority, total=1))
    broker.send_task("cortex.inference.run_gpu_jobs", kwargs={
        "task": "embed", "model": "all-MiniLM-L6-v2", "params": {}, "priority": priority,
        "jobs": [{"job_id": job.id, "inputs": [text]}]}, task_id=job.id, queue=queue, priority=priority)
    return job.id


def test_high_priority_jobs_overtake_a_queued_low_priority_backlog(broker):
    queue = f"prio-{uuid.uuid4().hex[:6]}"
    low = [enqueue_embed(broker, queue, "low", f"bulk sentence number {i}") for i in range(12)]
    normal = [enqueue_embed(broker, queue, "normal", f"normal sentence {i}") for i in range(3)]
    high = [enqueue_embed(broker, queue, "high", f"urgent sentence {i}") for i in range(3)]
    # One job at a time (solo pool, prefetch 1), so start order is the order the broker hands them out.
    worker = WorkerProcess(queue, pool="solo", concurrency=1, name="prio", env=broker.env).start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            jobs = {job_id: store.get_job(job_id) for job_id in low + normal + high}
            if all(job.status == "succeeded" for job in jobs.values()):
                break
            time.sleep(0.3)
    finally:
        worker.stop()
    assert all(job.status == "succeeded" for job in jobs.values())
    started = {job_id: jobs[job_id].started_at for job_id in jobs}
    assert max(started[j] for j in high) < min(started[j] for j in normal)
    assert max(started[j] for j in normal) < min(started[j] for j in low)
