"""The object store (S3, moto's test server) down during a batch, whose results it holds, and during a model
promotion, whose artifact it holds.

- A short outage: the batch's chunk writes are retried and it finishes once the store is back, every item
  once.
- A long one: the batch fails with `dependency_unavailable` naming the object store, and no merged result
  is written (nothing half-written is offered); a promotion fails with `object_store_unavailable`, the
  serving version is unchanged, and the model can be promoted again once the store is back.

Before, a chunk or an activation whose retries ran out left its job "running" (the batch until the stale
sweep, 15 minutes on; the promotion until its deadline, an hour), and the pending deployment blocked every
later promotion of the model. A stack of its own (tests/support/fault_stack.py); the S3 server is stopped
and started again on its address (tests/support/s3_outage.py)."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support.fault_stack import FaultStack
from tests.support.s3_outage import StoppableS3

pytestmark = pytest.mark.slow

BATCH_ITEMS, CHUNK_SIZE = 20, 5
MODEL = "faults-artifact-model"


@pytest.fixture(scope="module")
def s3() -> Iterator[StoppableS3]:
    server = StoppableS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(s3: StoppableS3) -> Iterator[FaultStack]:
    stack = FaultStack(env={**s3.env(f"faults-{uuid.uuid4().hex[:8]}"), "CORTEX_READY_QUEUES": "nlp,batch",
                            "CORTEX_BATCH_CHUNK_SIZE": str(CHUNK_SIZE)})
    try:
        stack.start_services()
        stack.start_gateway(workers=1)
        stack.start_worker("work", "batch,nlp", pool="prefork", concurrency=2)
        yield stack
    finally:
        stack.close()


def submit_batch(stack: FaultStack, label: str) -> str:
    answer = stack.call("POST", "/api/v1/batch/submit",
                        {"task": "sentiment", "inputs": [f"{label} item {i}, rather good." for i in range(BATCH_ITEMS)]})
    assert answer.status == 202, answer
    return answer.body["job_id"]


def test_a_short_outage_during_a_batch_is_ridden_out(stack: FaultStack, s3: StoppableS3) -> None:
    s3.stop()
    try:
        job_id = submit_batch(stack, "short")
        time.sleep(4)  # the chunks run and their writes are refused
    finally:
        s3.start()
    finished = stack.wait_job(job_id, timeout=180)
    assert finished["status"] == "succeeded", finished
    page = stack.call("GET", f"/api/v1/batch/results/{job_id}?size={BATCH_ITEMS}")
    assert sorted(item["index"] for item in page.body["items"]) == list(range(BATCH_ITEMS)), page
    assert stack.call("GET", f"/api/v1/batch/results/{job_id}?format=parquet").status == 200


def test_a_long_outage_fails_the_batch_with_its_reason(stack: FaultStack, s3: StoppableS3) -> None:
    s3.stop()
    try:
        job_id = submit_batch(stack, "long")
        failed = stack.wait_job(job_id, timeout=240)
    finally:
        s3.start()
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "dependency_unavailable", failed
    assert "object store" in failed["error"]["message"], failed
    assert "result_ref" not in failed
    download = stack.call("GET", f"/api/v1/batch/results/{job_id}?format=parquet")
    assert download.status == 409 and download.body["error"]["code"] == "batch_not_finished", download


def register(stack: FaultStack, content: bytes) -> int:
    code = f"""
from cortex_tasks.core.registry import service
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'):
    print(service.register_version({MODEL!r}, task='sentiment', framework='faults-blob', artifact={content!r}).version)
"""
    return int(stack.run(code).strip().splitlines()[-1])


def production_version(stack: FaultStack) -> int | None:
    code = f"""
import json
from cortex_tasks.core.registry import service
from cortex_tasks.core.tenancy import tenant_scope
with tenant_scope('default'):
    print(json.dumps([v.version for v in service.list_versions({MODEL!r}) if v.stage == 'production']))
"""
    versions = json.loads(stack.run(code).strip().splitlines()[-1])
    return versions[0] if versions else None


def promote(stack: FaultStack, version: int) -> object:
    return stack.call("POST", f"/api/v1/models/{MODEL}/versions/{version}/promote",
                      {"stage": "production", "wait": 60}, timeout=90)


def test_a_promotion_while_the_store_is_down_fails_cleanly(stack: FaultStack, s3: StoppableS3) -> None:
    first = register(stack, b"first artifact")
    answer = promote(stack, first)
    assert answer.status == 200, answer
    second = register(stack, b"second artifact")

    s3.stop()
    try:
        refused = promote(stack, second)
    finally:
        s3.start()
    assert refused.status == 409, refused
    assert refused.body["error"]["code"] == "object_store_unavailable", refused
    assert production_version(stack) == first
    # Not left pending: the model can be promoted again at once, and now it works.
    again = promote(stack, second)
    assert again.status == 200, again
    assert production_version(stack) == second
