"""A client generated from the OpenAPI document (openapi-python-client) against the real gateway and workers:
predict answered 200 and 202, a job polled, a batch submitted and its progress and results read, every
answer parsed into the client's typed models (a body the document describes wrongly fails here)."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.support.openapi_client import generated_client

# A fresh worker loads its model on first use, slowly on a busy machine.
POLL_SECONDS = 300


@pytest.fixture(scope="module")
def client_package(app, tmp_path_factory) -> Iterator[ModuleType]:
    spec = app.test_client().get("/api/v1/openapi.json").get_json()
    with generated_client(spec, tmp_path_factory.mktemp("generated")) as package:
        yield package


@pytest.fixture()
def client(app, keys, client_package):
    # Undocumented statuses raise; documented ones are parsed into the models the document names.
    return client_package.AuthenticatedClient(base_url="http://gateway", token=keys["inference_user"],
                                              raise_on_unexpected_status=True, timeout=httpx.Timeout(120),
                                              httpx_args={"transport": httpx.WSGITransport(app=app)})


def poll(read: Callable[[], Any], finished: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + POLL_SECONDS
    while time.monotonic() < deadline:
        answer = read()
        if finished(answer):
            return answer
        time.sleep(0.5)
    pytest.fail(f"not finished after {POLL_SECONDS}s: {answer}")


def test_predict_waited_and_accepted_then_polled(client, workers):
    from cortex_client.api.default import jobs_show_job, predict_predict
    from cortex_client.models import Accepted, JobResponse, PredictRequest, PredictResponse

    # Waited on: a 200 with the outputs (polled to warm the model first when the first answer is a 202).
    warm = predict_predict.sync_detailed(client=client, body=PredictRequest(
        task="embed", inputs=[f"warm {uuid.uuid4()}"], wait=30))
    if warm.status_code == 202:
        poll(lambda: jobs_show_job.sync(warm.parsed.job_id, client=client),
             lambda job: job.status in ("succeeded", "failed"))
    answer = predict_predict.sync_detailed(client=client, body=PredictRequest(
        task="embed", inputs=[f"typed {uuid.uuid4()}", "a second text"], wait=30))
    assert answer.status_code == 200, answer.content
    assert isinstance(answer.parsed, PredictResponse)
    assert answer.parsed.task == "embed" and answer.parsed.cached is False
    assert len(answer.parsed.outputs) == 2 and len(answer.parsed.outputs[0]) == 384
    assert answer.parsed.model["name"] and answer.parsed.timings["total_ms"] > 0

    # Not waited on: a 202 with the job id and the URL to poll.
    queued = predict_predict.sync_detailed(client=client, body=PredictRequest(
        task="embed", inputs=[f"queued {uuid.uuid4()}"], wait=0))
    assert queued.status_code == 202, queued.content
    assert isinstance(queued.parsed, Accepted)
    assert queued.parsed.status_url == f"/api/v1/jobs/{queued.parsed.job_id}"
    job = poll(lambda: jobs_show_job.sync(queued.parsed.job_id, client=client),
               lambda job: job.status in ("succeeded", "failed"))
    assert isinstance(job, JobResponse)
    assert (job.status, job.kind, job.task) == ("succeeded", "predict", "embed"), job
    assert job.progress.done == job.progress.total == 1 and job.finished_at
    assert len(job.result["outputs"][0]) == 384


def test_batch_submitted_then_progress_and_results(client, workers):
    from cortex_client.api.default import batch_progress, batch_results_page, batch_submit
    from cortex_client.models import BatchProgress, BatchResultsPage, BatchSubmitRequest, BatchSubmitted

    texts = [f"batch item {i} {uuid.uuid4()}" for i in range(5)]
    submitted = batch_submit.sync_detailed(client=client, body=BatchSubmitRequest(task="embed", inputs=texts))
    assert submitted.status_code == 202, submitted.content
    assert isinstance(submitted.parsed, BatchSubmitted)
    assert (submitted.parsed.total, submitted.parsed.created) == (5, True)
    job_id = submitted.parsed.job_id

    progress = poll(lambda: batch_progress.sync(job_id, client=client),
                    lambda body: body.status in ("succeeded", "failed", "cancelled"))
    assert isinstance(progress, BatchProgress)
    assert (progress.status, progress.done, progress.failed, progress.total) == ("succeeded", 5, 0, 5)
    assert progress.chunks.finished == progress.chunks.total == submitted.parsed.chunks

    page = batch_results_page.sync(job_id, client=client)
    assert isinstance(page, BatchResultsPage)
    assert (page.status, page.page, page.pages, page.total) == ("succeeded", 1, 1, 5)
    assert [item["index"] for item in page.items] == list(range(5))
    assert all(item["status"] == "succeeded" and len(item["output"]) == 384 for item in page.items)
