"""A prediction's row is written after its answer (core/jobs/write_behind.py): the answer does not wait for
PostgreSQL, GET /jobs/{id} finds the job meanwhile, and a worker that dies before the write loses nothing.

Holding an EXCLUSIVE lock on `jobs` stalls every write to it (reads go on): an answer that arrives while the
lock is held was published before its row was written.
"""
from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from sqlalchemy import Connection, text

from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.outcomes import copy_key
from cortex_tasks.core.jobs.write_behind import job_from_copy
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import get_engine
from cortex_tasks.core.tenancy import tenant_scope
from tests.support.prediction_messages import gateway_job, send_gpu_message
from tests.support.processes import WorkerProcess
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_default_tenant")]


@contextmanager
def jobs_table_locked() -> Iterator[Connection]:
    """Writes to `jobs` wait until the block ends; reads go on. Yields the connection holding the lock."""
    with get_engine().connect() as connection:
        transaction = connection.begin()
        connection.execute(text("LOCK TABLE jobs IN EXCLUSIVE MODE"))
        try:
            yield connection
        finally:
            transaction.rollback()


def end_writes_waiting_on(locker: Connection) -> None:
    """End the sessions whose statements wait for `locker`'s lock. PostgreSQL does not see a client that
    died while its statement waited for a lock: the statement runs (and, autocommitted, commits) once the
    lock goes, so a worker killed then may still have its write land. Ending its session is what the server
    does once it notices the client is gone, and leaves the write to the message's next delivery."""
    locker.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"))


def test_the_answer_leaves_before_the_row_and_the_job_is_found_meanwhile(api, keys, workers):
    sentence = f"an answer that does not wait for its row {uuid.uuid4()}"
    with jobs_table_locked():
        answered = api.post("/api/v1/predict", {"task": "embed", "inputs": [sentence], "wait": 30})
        assert answered.status_code == 200, answered.get_json()
        body = answered.get_json()
        job_id = body["job_id"]
        assert store.get_job(job_id) is None  # not written yet: the lock holds the write
        shown = api.get(f"/api/v1/jobs/{job_id}")
        assert shown.status_code == 200, shown.get_json()
        job = shown.get_json()
        assert (job["status"], job["kind"], job["task"], job["attempts"]) == ("succeeded", "predict", "embed", 1)
        assert job["progress"] == {"done": 1, "total": 1}
        assert job["result"]["outputs"] == body["outputs"]
        # Visible to its owner (and admins) only, as a written job is.
        assert api.as_key(keys["reader"]).get(f"/api/v1/jobs/{job_id}").status_code == 404
        assert api.as_key(keys["platform_admin"]).get(f"/api/v1/jobs/{job_id}").status_code == 200
        with tenant_scope("another-tenant"):  # nor to another tenant, whoever asks
            assert job_from_copy(job_id) is None
    row = wait_for(lambda: store.get_job(job_id), 30, "the row, once the lock is released")
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert row.result["outputs"] == body["outputs"]
    # Its copy goes once the row is written; the job reads the same from the row.
    wait_for(lambda: not redis.Redis.from_url(get_settings().redis_url).exists(copy_key(job_id)), 10,
             "the copy to be deleted")
    from_row = api.get(f"/api/v1/jobs/{job_id}").get_json()
    assert {k: from_row[k] for k in ("status", "kind", "task", "attempts", "progress", "result", "model")} == \
           {k: job[k] for k in ("status", "kind", "task", "attempts", "progress", "result", "model")}


def test_a_worker_killed_before_the_row_is_written_has_it_written_by_the_next_delivery():
    """The task waits for its rows' write before it ends, so its message is acknowledged only after it: a
    worker SIGKILLed between the answer and the write has the message given back (the shipped consumer
    lease and restore interval), and the next delivery writes the row, counted once."""
    queue = f"write-behind-{uuid.uuid4().hex[:6]}"
    doomed = WorkerProcess(queue, pool="threads", concurrency=2, name="write-behind-doomed").start()
    successor = None
    try:
        # A worker of a private queue loads its model on first use (minutes on a busy machine): not under the lock.
        send_gpu_message([gateway_job([f"a first sentence {uuid.uuid4()}"])], "warm-up", queue, timeout=300)
        job = gateway_job([f"killed before its row {uuid.uuid4()}"])
        with jobs_table_locked() as locker:
            outcomes = send_gpu_message([job], "killed-before-its-row", queue)
            assert outcomes[job["job_id"]]["status"] == "succeeded"
            assert job_from_copy(job["job_id"]).status == "succeeded"  # GET /jobs/{id} would show it
            os.killpg(doomed.process.pid, signal.SIGKILL)  # its write is still waiting for the lock
            doomed.process.wait(30)
            end_writes_waiting_on(locker)
        assert store.get_job(job["job_id"]) is None  # the killed worker never wrote it
        successor = WorkerProcess(queue, pool="threads", concurrency=2, name="write-behind-successor").start()
        row = wait_for(lambda: (found := store.get_job(job["job_id"])) and found.status in store.FINISHED_STATES
                       and found, 300, "the next delivery to write the row")
    finally:
        for worker in (doomed, successor):
            if worker is not None:
                worker.stop()
    assert (row.status, row.attempts, row.owner) == ("succeeded", 1, "delivery-test")
    assert len(row.result["outputs"][0]) == 384


def test_rows_handed_over_together_are_written_in_one_statement(workers):
    """Messages answered while a write is held gather for the next write: the writer's rule of never
    waiting when idle, and writing in bulk when busy."""
    sentences = [f"one of several messages answered together {i} {uuid.uuid4()}" for i in range(6)]
    results: dict[str, dict] = {}

    def send(sentence: str) -> None:
        with tenant_scope("default"):  # a thread of its own: the test's tenant scope does not reach it
            job = gateway_job([sentence])
            results[job["job_id"]] = send_gpu_message([job], f"together-{uuid.uuid4().hex[:6]}")[job["job_id"]]

    with jobs_table_locked():
        threads = [threading.Thread(target=send, args=(sentence,)) for sentence in sentences]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(results) == len(sentences)  # every answer arrived with the table locked
        assert all(outcome["status"] == "succeeded" for outcome in results.values())
    rows = wait_for(lambda: (found := store.get_jobs(list(results))) and len(found) == len(results) and found,
                    30, "every row")
    assert all((row.status, row.attempts) == ("succeeded", 1) for row in rows)
    # At most two writes: the first message's (held by the lock) and everything handed over meanwhile.
    assert len({row.finished_at for row in rows}) <= 2


def test_a_row_written_between_the_routes_reads_is_still_found(api, workers, monkeypatch):
    """GET /jobs/{id} reads the row, then the copy: the writer may write the row and delete the copy between
    the two (both miss), so the route reads the row once more rather than answer 404."""
    from cortex_web.blueprints import jobs as jobs_route

    answered = api.post("/api/v1/predict", {"task": "embed", "inputs": [f"between two reads {uuid.uuid4()}"],
                                            "wait": 30}).get_json()
    wait_for(lambda: store.get_job(answered["job_id"]), 30, "the row")
    reads = []

    def row_written_after_the_first_read(job_id: str):
        reads.append(job_id)
        return None if len(reads) == 1 else store.get_job(job_id)

    monkeypatch.setattr(jobs_route, "get_job", row_written_after_the_first_read)
    monkeypatch.setattr(jobs_route, "job_from_copy", lambda job_id: None)  # and the copy is gone by then
    shown = api.get(f"/api/v1/jobs/{answered['job_id']}")
    assert shown.status_code == 200 and shown.get_json()["status"] == "succeeded"
