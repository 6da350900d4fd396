"""Traces and logs across real processes: a gateway (gunicorn, `cortex web`'s command line) and workers,
each exporting its spans over OTLP/HTTP to a receiver this test runs, and writing JSON log lines to files.

The receiver is a small OTLP/HTTP endpoint decoding each export with opentelemetry-proto (the messages
every collector reads): an in-memory exporter inside the gateway or the worker would not be visible from
here. The in-process parts are checked against the SDK's in-memory exporter in tests/unit/test_tracing.py.

Checked: a predict is one trace from the HTTP request through the coalescer, the publish, the worker's
run and job spans to the model call; predicts gathered into one message keep their own traces and the
model call links each of them; a batch job's and a training job's traces reach their worker spans; every
log line of the gateway and the worker is JSON with the common fields, a task's lines carry its job id and
trace id, and no predict's input text appears in any line.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from cortex_tasks.stack.embedded import free_port
from gunicorn_conf import command as gateway_command
from tests.integration.test_training_jobs import topic_rows
from tests.support.processes import REPO_ROOT, WorkerProcess
from tests.support.waiting import wait_for

RUN_GPU = "cortex.inference.run_gpu_jobs"
LOG_FIELDS = ("time", "level", "component", "logger", "message")


class Receiver:
    """An OTLP/HTTP trace endpoint (POST /v1/traces, protobuf) that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces" or self.headers.get("Content-Encoding") not in (None, "identity"):
                    self.send_error(415)
                    return
                export = ExportTraceServiceRequest()
                export.ParseFromString(body)
                receiver.keep(export)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keep(self, export: ExportTraceServiceRequest) -> None:
        decoded = []
        for resource_spans in export.resource_spans:
            resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    decoded.append({
                        "service": resource.get("service.name"), "name": span.name, "kind": span.kind,
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent_id": span.parent_span_id.hex() or None,
                        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        "attributes": {item.key: _value(item.value) for item in span.attributes}})
        with self._lock:
            self.spans.extend(decoded)

    def named(self, name: str, **attributes: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [span for span in self.spans if span["name"] == name
                    and all(span["attributes"].get(key) == value for key, value in attributes.items())]

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]

    def stop(self) -> None:
        self.server.shutdown()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A receiver, a traced gpu worker (threads), a traced prefork worker for training, and a traced gateway
    of one process whose coalescer keeps one message in flight, so concurrent predicts share messages."""
    folder = tmp_path_factory.mktemp("traced")
    receiver = Receiver()
    # A Redis database of their own: the session's workers, consuming the same queues untraced, would
    # otherwise take some of these jobs.
    redis_url = urlunparse(urlparse(os.environ["REDIS_URL"])._replace(path="/6"))
    environment = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
                   "CORTEX_LOG_FORMAT": "json", "CORTEX_LOG_LEVEL": "INFO", "REDIS_URL": redis_url}
    gpu = WorkerProcess("gpu,batch", pool="threads", concurrency=8, name="gpu", env=environment, log_dir=folder)
    training = WorkerProcess("training", pool="prefork", concurrency=1, name="training", env=environment,
                             log_dir=folder)
    port = free_port()
    gateway_log = folder / "gateway.log"
    with open(gateway_log, "wb") as log:
        gateway = subprocess.Popen(
            gateway_command(f"127.0.0.1:{port}", 1, 16, "--access-logfile", "-"), cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **environment, "CORTEX_COALESCE_MAX_INFLIGHT": "1"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        gpu.start(wait_ready=False)
        training.start(wait_ready=False)
        gpu.wait_ready()
        training.wait_ready()
        wait_for(lambda: _answers(url) or gateway.poll() is not None, 120, "the gateway")
        assert gateway.poll() is None, gateway_log.read_text()
        yield {"url": url, "receiver": receiver, "gateway_log": gateway_log, "gpu": gpu, "training": training,
               "headers": {"Authorization": f"Bearer {keys['model_admin']}"}}
    finally:
        if gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGTERM)
            gateway.wait(60)
        gpu.stop()
        training.stop()
        receiver.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False


def _predict(traced: dict[str, Any], text: str) -> str:
    """A predict's job id, once it has succeeded."""
    response = requests.post(f"{traced['url']}/api/v1/predict", headers=traced["headers"], timeout=120,
                             json={"task": "embed", "inputs": [text], "wait": 30})
    assert response.status_code in (200, 202), response.text
    if response.status_code == 202:
        status_url = f"{traced['url']}{response.json()['status_url']}"
        wait_for(lambda: requests.get(status_url, headers=traced["headers"], timeout=30).json()["status"]
                 == "succeeded", 120, "the predict job")
    return response.json()["job_id"]


def _job_span(receiver: Receiver, job_id: str) -> dict[str, Any]:
    return wait_for(lambda: (receiver.named("cortex.job", **{"cortex.job_id": job_id}) or [None])[0], 30,
                    f"the worker's span of job {job_id}")


def _component(worker: WorkerProcess) -> str:
    """A worker's component: its node name before @ (`-n gpu@%h` in production; a unique one here)."""
    return "worker-" + worker.hostname.split("@")[0]


def _one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [span for span in spans if span["name"] == name]
    assert len(found) == 1, (name, [span["name"] for span in spans])
    return found[0]


def test_a_predict_is_one_trace_from_the_request_to_the_model_call(traced: dict[str, Any]):
    receiver: Receiver = traced["receiver"]
    job_id = _predict(traced, f"the first traced sentence {uuid.uuid4().hex}")
    job = _job_span(receiver, job_id)
    trace_id = job["trace_id"]
    wanted = {"POST /api/v1/predict", "cortex.coalescer.send", f"apply_async/{RUN_GPU}", f"run/{RUN_GPU}",
              "cortex.job", "cortex.model.call"}
    spans = wait_for(lambda: (found := receiver.trace(trace_id)) and wanted <= {s["name"] for s in found}
                     and found, 30, f"every span of trace {trace_id}")
    request, send = _one(spans, "POST /api/v1/predict"), _one(spans, "cortex.coalescer.send")
    publish, run = _one(spans, f"apply_async/{RUN_GPU}"), _one(spans, f"run/{RUN_GPU}")
    call = _one(spans, "cortex.model.call")
    assert request["parent_id"] is None and request["service"] == "cortex-gateway"
    assert send["parent_id"] == request["span_id"] and publish["parent_id"] == send["span_id"]
    assert publish["service"] == "cortex-gateway" and run["service"] == f"cortex-{_component(traced['gpu'])}"
    assert run["parent_id"] == publish["span_id"]  # across the broker, through the message headers
    assert run["attributes"]["cortex.job_id"] == job_id
    assert job["parent_id"] == run["span_id"] and call["parent_id"] == run["span_id"]
    assert (trace_id, job["span_id"]) in call["links"]


def test_predicts_sharing_a_message_keep_their_traces_and_the_model_call_links_each(traced: dict[str, Any]):
    receiver: Receiver = traced["receiver"]
    texts = [f"sentence {index} of a crowd {uuid.uuid4().hex}" for index in range(12)]
    with ThreadPoolExecutor(len(texts)) as pool:
        job_ids = list(pool.map(lambda text: _predict(traced, text), texts))
    jobs = {job_id: _job_span(receiver, job_id) for job_id in job_ids}
    assert len({job["trace_id"] for job in jobs.values()}) == len(job_ids)  # one trace per job
    for trace_id in {job["trace_id"] for job in jobs.values()}:  # each job's trace starts at its own request
        wait_for(lambda trace_id=trace_id: any(span["name"] == "POST /api/v1/predict" and span["parent_id"] is None
                                               for span in receiver.trace(trace_id)), 30, "the request span")
    served = {(job["trace_id"], job["span_id"]) for job in jobs.values()}
    shared = [call for call in receiver.named("cortex.model.call") if len(set(call["links"]) & served) >= 2]
    # The gateway keeps one message in flight: the requests that come meanwhile leave together.
    assert shared, "no model call served two of the concurrent predicts"
    for call in shared:
        linked = [link for link in call["links"] if link in served]
        assert len({trace_id for trace_id, _ in linked}) == len(linked)  # each link is another job's trace


def _whole(spans: list[dict[str, Any]]) -> bool:
    ids = {span["span_id"] for span in spans}
    return all(not span.get("parent_id") or span["parent_id"] in ids for span in spans)


def test_a_batch_job_is_traced_from_the_request_to_its_chunks_model_calls(traced: dict[str, Any]):
    receiver: Receiver = traced["receiver"]
    texts = [f"batch line {index} {uuid.uuid4().hex}" for index in range(150)]
    response = requests.post(f"{traced['url']}/api/v1/batch/submit", headers=traced["headers"], timeout=60,
                             json={"task": "embed", "inputs": texts})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    wait_for(lambda: requests.get(f"{traced['url']}/api/v1/batch/progress/{job_id}", headers=traced["headers"],
                                  timeout=30).json()["status"] == "succeeded", 240, "the batch job")
    request = wait_for(lambda: [span for span in receiver.named("POST /api/v1/batch/submit")
                                if any(child["name"].startswith("run/") and child["attributes"].get("cortex.job_id")
                                       == job_id for child in receiver.trace(span["trace_id"]))], 60,
                       "the batch job's trace")[0]
    # A span is exported when it ends, so a chunk's run span arrives after its model calls: wait until every
    # span's parent has arrived too.
    spans = wait_for(lambda: (found := receiver.trace(request["trace_id"]))
                     and any(span["name"] == "cortex.model.call" for span in found) and _whole(found) and found,
                     60, "the chunks' model calls and their parents")
    by_id = {span["span_id"]: span for span in spans}
    runs = [span for span in spans if span["name"].startswith("run/cortex.batch.")]
    assert runs and all(by_id[run["parent_id"]]["name"].startswith("apply_async/") for run in runs)
    for call in (span for span in spans if span["name"] == "cortex.model.call"):
        assert by_id[call["parent_id"]]["name"].startswith("run/cortex.batch.")


def test_a_training_job_is_traced_from_the_request_to_its_fit(traced: dict[str, Any]):
    receiver: Receiver = traced["receiver"]
    response = requests.post(f"{traced['url']}/api/v1/training/submit", headers=traced["headers"], timeout=60,
                             json={"kind": "classifier", "model": f"traced-{uuid.uuid4().hex[:6]}",
                                   "dataset": {"rows": topic_rows(per_label=12)}, "params": {"epochs": 3}})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    fit = wait_for(lambda: (receiver.named("cortex.trainer.fit", **{"cortex.job_id": job_id}) or [None])[0],
                   300, "the training run's fit span")
    # The run span ends (and is exported) after the fit's.
    spans = wait_for(lambda: (found := receiver.trace(fit["trace_id"]))
                     and {"POST /api/v1/training/submit", "apply_async/cortex.training.train_model"}
                     <= {span["name"] for span in found}
                     and any(span["span_id"] == fit["parent_id"] for span in found) and found, 60,
                     "the training job's spans")
    by_id = {span["span_id"]: span for span in spans}
    run = by_id[fit["parent_id"]]
    assert run["name"].startswith("run/cortex.training.")
    assert run["service"] == f"cortex-{_component(traced['training'])}"
    publish = by_id[run["parent_id"]]
    assert publish["name"].startswith("apply_async/") and by_id[publish["parent_id"]]["name"] == \
        "POST /api/v1/training/submit"


def _log_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            records.append(json.loads(line))  # every line is JSON: a line that is not fails here
    return records


def test_every_log_line_is_json_with_job_and_trace_ids_and_no_input(traced: dict[str, Any]):
    secret = f"my private sentence {uuid.uuid4().hex}"
    job_id = _predict(traced, secret)
    _job_span(traced["receiver"], job_id)  # the worker has finished with it
    time.sleep(0.5)  # its last lines are written after the span's export
    gateway = _log_records(traced["gateway_log"])
    worker = _log_records(traced["gpu"].log_path)
    for record in gateway + worker:
        assert all(field in record for field in LOG_FIELDS), record
    assert {record["component"] for record in gateway} == {"gateway"}
    assert {record["component"] for record in worker} == {_component(traced["gpu"])}
    # gunicorn's access line for the predict, and the worker's lines of the task that ran the job.
    assert any("POST /api/v1/predict" in record["message"] for record in gateway)
    task_lines = [record for record in worker if record.get("job_id") == job_id]
    assert task_lines and all(record["task"] == RUN_GPU and len(record["trace_id"]) == 32 for record in task_lines)
    assert any("succeeded" in record["message"] for record in task_lines)
    for path in (traced["gateway_log"], traced["gpu"].log_path, traced["training"].log_path):
        assert secret not in path.read_text()
    assert secret.split()[-1] not in json.dumps(traced["receiver"].spans, default=str)  # nor in any span


def test_beat_logs_json_lines_as_beat(tmp_path: Path):
    """Beat in JSON (as `cortex up` starts it: --quiet, since its banner is printed before logging starts)."""
    log_path = tmp_path / "beat.log"
    with open(log_path, "wb") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "cortex_tasks", "--quiet", "beat", "-s",
             str(tmp_path / "schedule")], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "CORTEX_LOG_FORMAT": "json"})
    try:
        # Up once its scheduler leads or stands by (a SIGTERM while Celery still imports the result backend
        # ends Beat with a traceback Celery prints itself, before any logging).
        wait_for(lambda: any(word in log_path.read_text() for word in ("beat: leading", "beat: standby"))
                 or beat.poll() is not None, 120, "Beat to start")
        assert beat.poll() is None, log_path.read_text()
    finally:
        if beat.poll() is None:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(30)
    records = _log_records(log_path)
    assert records and {record["component"] for record in records} == {"beat"}
    assert all(field in record for record in records for field in LOG_FIELDS)
