"""Redis lost with its data (SIGKILLed, its files deleted, started empty) while jobs wait in its queues and
run on a worker: the stale-job sweep finds every open job whose message is gone, sends again what it can
(a batch, from its chunks in PostgreSQL) and fails the rest with `message_lost` (a prediction's inputs
travelled only in its message), and reports the count. No job stays open, none is worked twice, and a
Redis restarted with its data is not taken for a lost one. A promotion whose activation message was lost
has its pending deployment settled by the same sweep pass, so the model can be promoted again at once.

Before, such jobs stayed "queued" or "running" until their deadline (an hour), then failed as `stale_job`.
A stack of its own (tests/support/fault_stack.py); the sweep is the real task, called in a process of the
stack as Beat would have it run."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cortex_tasks.runtime.maintenance.lost_messages import (
    MARKER_KEY,
    ORPHAN_AGE_SECONDS,
    SETTLE_AFTER_START_SECONDS,
    _message_job_ids,
    broker_job_ids,
)
from tests.integration.test_faults_workers import submit_hold_jobs
from tests.support.fault_stack import FaultStack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

HOLD = ["-I", "tests.support.slow_tasks"]
BATCH_ITEMS, CHUNK_SIZE = 30, 5
LOST_PROMOTION_MODEL = "faults-lost-promotion"


@pytest.fixture(scope="module")
def stack() -> Iterator[FaultStack]:
    stack = FaultStack(env={"CORTEX_READY_QUEUES": "nlp,batch", "CORTEX_BATCH_CHUNK_SIZE": str(CHUNK_SIZE)})
    try:
        stack.start_services()
        stack.start_gateway(workers=1)
        yield stack
    finally:
        stack.close()


def sweep(stack: FaultStack) -> dict:
    code = ("import json; from beat_schedule import MESSAGE; from cortex_tasks.runtime.maintenance.tasks "
            "import sweep_stale_jobs; print(json.dumps(sweep_stale_jobs(**MESSAGE)))")
    return json.loads(stack.run(code).strip().splitlines()[-1])


def register_version(stack: FaultStack, model: str, content: bytes) -> None:
    stack.run(f"""
from cortex_tasks.core.registry import service
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'):
    service.register_version({model!r}, task='sentiment', framework='faults-blob', artifact={content!r})
""")


def job(stack: FaultStack, job_id: str) -> dict:
    answer = stack.call("GET", f"/api/v1/jobs/{job_id}")
    assert answer.status == 200, answer
    return answer.body


def redis_uptime(stack: FaultStack) -> int:
    return int(redis.Redis.from_url(stack.env["REDIS_URL"]).info("server")["uptime_in_seconds"])


def test_redis_lost_with_its_data(stack: FaultStack, tmp_path: Path) -> None:
    # A worker running two jobs when Redis goes, and jobs waiting for workers not started yet.
    stack.start_worker("holder", "hold-lost", pool="prefork", concurrency=2, extra_args=HOLD)
    held = submit_hold_jobs(stack, "hold-lost", 2, seconds=15, trace=tmp_path)
    wait_for(lambda: all(job(stack, j)["status"] == "running" for j in held), 60, "the held jobs to start",
             interval=0.3)
    waiting = []
    for number in range(6):
        answer = stack.call("POST", "/api/v1/predict",
                            {"task": "sentiment", "inputs": [f"Waiting when Redis went {number}."], "wait": 0})
        assert answer.status == 202, answer
        waiting.append(answer.body["job_id"])
    batch = stack.call("POST", "/api/v1/batch/submit",
                       {"task": "sentiment", "inputs": [f"Item {i} of a batch Redis forgot." for i in range(BATCH_ITEMS)]})
    assert batch.status == 202, batch
    batch_id = batch.body["job_id"]
    # A promotion whose activation message waits for the nlp worker (not started yet) when Redis goes.
    register_version(stack, LOST_PROMOTION_MODEL, b"weights lost with Redis")
    promoting = stack.call("POST", f"/api/v1/models/{LOST_PROMOTION_MODEL}/versions/1/promote",
                           {"stage": "production", "wait": 0})
    assert promoting.status == 202, promoting

    stack.kill_redis()
    stack.restart_redis(keep_data=False)
    stack.start_worker("nlp", "nlp", pool="threads", concurrency=2)
    stack.start_worker("batch", "batch", pool="prefork", concurrency=2)
    # Work submitted after the loss is served as usual, and the sweep leaves it alone.
    after = stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": ["After the loss."], "wait": 20})
    assert after.status == 200, after
    later = stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": ["Queued after."], "wait": 0})
    assert later.status in (200, 202), later

    stack.wait_job(later.body["job_id"])
    assert job(stack, batch_id)["status"] == "queued"

    time.sleep(max(0, SETTLE_AFTER_START_SECONDS + 1 - redis_uptime(stack)))
    found = sweep(stack)
    # A held job either finished before the sweep (its worker was not cut off in time) or was taken up by it.
    lost_held = [j for j in held if (job(stack, j).get("error") or {}).get("code") == "message_lost"]
    # A prediction answered 202 either had its message in the lost Redis (the first of them surely did) or
    # was still held by the gateway, which sent it to the new Redis: that one simply ran.
    lost_waiting = [j for j in waiting if (job(stack, j).get("error") or {}).get("code") == "message_lost"]
    assert waiting[0] in lost_waiting
    # Every job that had its message in the lost Redis and had not finished is counted, none is missed.
    # (The batch is resent; the promotion's activation job is failed.)
    assert found["lost_messages"] == len(lost_waiting) + 2 + len(lost_held), found
    assert found["lost_resent"] == 1 and found["lost_failed"] == len(lost_waiting) + 1 + len(lost_held), found
    # The same pass settles the promotion's pending deployment: the model can be promoted again at once,
    # not only once the pending deployment expires (15 minutes).
    assert found["deployments_settled"] == 1, found
    settled = stack.call("GET", f"/api/v1/models/{LOST_PROMOTION_MODEL}").body["deployments"][0]
    assert (settled["status"], settled["error"]["code"]) == ("failed", "message_lost"), settled
    again = stack.call("POST", f"/api/v1/models/{LOST_PROMOTION_MODEL}/versions/1/promote",
                       {"stage": "production", "wait": 60}, timeout=90)
    assert again.status == 200, again

    for job_id in waiting:
        body = stack.wait_job(job_id, timeout=30)
        assert body["status"] == "succeeded" or body["error"]["code"] == "message_lost", body
    for job_id in held:
        body = stack.wait_job(job_id, timeout=30)
        assert body["status"] == "succeeded" or body["error"]["code"] == "message_lost", body
    finished = stack.wait_job(batch_id, timeout=180)
    assert finished["status"] == "succeeded", finished
    page = stack.call("GET", f"/api/v1/batch/results/{batch_id}?size={BATCH_ITEMS}")
    assert page.status == 200 and page.body["total"] == BATCH_ITEMS, page
    indexes = [item["index"] for item in page.body["items"]]
    assert sorted(indexes) == list(range(BATCH_ITEMS)), indexes  # each item once: no duplicate, none lost
    assert stack.wait_job(after.body["job_id"])["status"] == "succeeded"
    # A held job is worked at most once (it was cancelled, not run again).
    completions = tmp_path / "completions"
    assert (len(completions.read_text().splitlines()) if completions.exists() else 0) <= len(held)

    # Checked once per Redis: the next pass finds the marker and changes nothing.
    again = sweep(stack)
    assert "lost_messages" not in again, again


def test_redis_restarted_with_its_data_is_not_a_loss(stack: FaultStack) -> None:
    """The marker is written at each check and kept in the append-only file: a Redis that comes back with its
    data is not compared with the jobs again, and nothing is failed."""
    if "nlp" not in stack.workers:
        stack.start_worker("nlp", "nlp", pool="threads", concurrency=2)
    time.sleep(max(0, SETTLE_AFTER_START_SECONDS + 1 - redis_uptime(stack)))
    first = sweep(stack)  # writes the marker (if the test before has not)
    assert not isinstance(first.get("lost_messages", 0), str), first
    queued = stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": ["Kept with the data."], "wait": 0})
    time.sleep(1.5)  # the append-only file is written each second (appendfsync everysec)
    stack.kill_redis()
    stack.restart_redis(keep_data=True)
    found = sweep(stack)
    assert "lost_messages" not in found, (first, found)
    if queued.status == 202:
        assert stack.wait_job(queued.body["job_id"])["status"] == "succeeded"


def drop_messages_of(stack: FaultStack, job_ids: set[str]) -> int:
    """Take the messages naming these jobs out of Redis's queues: what a worker SIGKILLed between kombu's
    BRPOP and its write to `unacked` leaves behind (the message gone, the job's row open)."""
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    dropped = 0
    for key in client.scan_iter(_type="list"):
        for item in client.lrange(key, 0, -1):
            if job_ids & set(_message_job_ids(item)):
                dropped += client.lrem(key, 1, item)
    return dropped


def age_rows(stack: FaultStack, job_ids: list[str], seconds: int) -> None:
    stack.run(f"""
from sqlalchemy import text
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.tenancy import all_tenants
with all_tenants(), session_scope() as session:
    session.execute(text("UPDATE jobs SET created_at = created_at - make_interval(secs => :s) WHERE id = ANY(:ids)"),
                    {{"s": {seconds}, "ids": {job_ids!r}}})
""")


def test_a_message_lost_alone_is_found_by_the_next_sweep(stack: FaultStack) -> None:
    """Redis keeps its data, but single messages went (a worker killed between taking a message and recording
    it as delivered, or Redis's last second of writes): the sweep's orphan pass takes up the open jobs older
    than ORPHAN_AGE_SECONDS (the shipped five minutes; the rows are aged, not the setting shortened) that no
    message names, and leaves alone a younger one and one whose message still waits."""
    for name in list(stack.workers):  # nothing consumes: the messages wait in their queues
        stack.kill_worker(name)
        stack.workers.pop(name)
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    client.set(MARKER_KEY, "{}")  # the same Redis as at the last pass
    submitted = {}
    for name in ("lost", "young", "waiting"):
        answer = stack.call("POST", "/api/v1/predict",
                            {"task": "sentiment", "inputs": [f"Orphan test: {name}."], "wait": 0})
        assert answer.status == 202, answer
        submitted[name] = answer.body["job_id"]
    batch = stack.call("POST", "/api/v1/batch/submit",
                       {"task": "sentiment", "inputs": [f"Orphaned batch item {i}." for i in range(BATCH_ITEMS)]})
    assert batch.status == 202, batch
    submitted["batch"] = batch.body["job_id"]
    wait_for(lambda: drop_messages_of(stack, {submitted["lost"]}) == 1, 30, "the prediction's message")
    wait_for(lambda: drop_messages_of(stack, {submitted["young"]}) == 1, 30, "the young prediction's message")
    wait_for(lambda: drop_messages_of(stack, {submitted["batch"]}) >= 1, 30, "the batch's chunk messages")
    drop_messages_of(stack, {submitted["batch"]})
    age_rows(stack, [submitted[name] for name in ("lost", "waiting", "batch")], ORPHAN_AGE_SECONDS + 60)

    found = sweep(stack)
    assert (found["orphaned_messages"], found["orphans_resent"], found["orphans_failed"]) == (2, 1, 1), found
    lost = job(stack, submitted["lost"])
    assert (lost["status"], lost["error"]["code"]) == ("failed", "message_lost"), lost
    assert job(stack, submitted["young"])["status"] == "queued"  # younger than the orphan age: not yet
    assert job(stack, submitted["waiting"])["status"] == "queued"  # its message waits for a worker
    assert submitted["batch"] in broker_job_ids(client)  # sent again

    stack.start_worker("nlp", "nlp", pool="threads", concurrency=2)
    stack.start_worker("batch", "batch", pool="prefork", concurrency=2)
    assert stack.wait_job(submitted["waiting"])["status"] == "succeeded"
    assert stack.wait_job(submitted["batch"], timeout=180)["status"] == "succeeded"
    page = stack.call("GET", f"/api/v1/batch/results/{submitted['batch']}?size={BATCH_ITEMS}")
    assert sorted(item["index"] for item in page.body["items"]) == list(range(BATCH_ITEMS)), page
    # Nothing else is open and old without a message: the next pass finds nothing to take up.
    assert "orphaned_messages" not in sweep(stack)
