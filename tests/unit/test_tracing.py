"""Traces (core/observability/tracing.py) with the SDK's in-memory exporter: a job's trace context travels
from the request through the coalescer's message and the message headers to the worker's job spans, and
a batched model call links every job it served. Off (no OTEL_EXPORTER_OTLP_ENDPOINT), nothing of
OpenTelemetry is even imported.

The in-process parts only: the same path across real gateway and worker processes, exported over
OTLP/HTTP, is tests/integration/test_traces_and_logs.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cortex_tasks.core.contracts.messages import PredictionMessage, read_prediction_message
from cortex_tasks.core.jobs.store import NewJob
from cortex_tasks.core.observability import tracing
from cortex_tasks.runtime.inference.batcher import DynamicBatcher
from cortex_web.coalescer import Coalescer, PendingJob

ROOT = Path(__file__).resolve().parents[2]
RUN_TASK = "cortex.inference.run_gpu_jobs"
_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))


@pytest.fixture()
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory (the global provider can be set once per process: this module's)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(_provider)
    monkeypatch.setattr(tracing, "_enabled", True)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def _request(name: str) -> PendingJob:
    """A prediction request's job as the gateway makes it, inside the request's server span."""
    with tracing._tracer().start_as_current_span(f"POST /api/v1/predict {name}", kind=trace.SpanKind.SERVER):
        return PendingJob(f"job-{name}", [f"text of {name}"], NewJob(owner="k", kind="predict", task="embed",
                                                                     tenant="default"))


def _published(jobs: list[PendingJob]) -> tuple[dict, dict]:
    """The message's kwargs and headers as the coalescer publishes them (Celery's publish signals emulated:
    the gateway's own hooks, tracing.publish_spans)."""
    message = PredictionMessage(tenant="default", task="embed", model="m", jobs=[Coalescer._job(job, False)
                                                                               for job in jobs])
    headers = {"id": "message-1"}
    with tracing.sending([job.trace for job in jobs], message_id="message-1"):
        tracing._before_publish(sender=RUN_TASK, headers=headers)
        tracing._after_publish(headers=headers)
    return message.to_kwargs(), headers


def _run_in_worker(kwargs: dict, headers: dict, batcher: DynamicBatcher) -> None:
    """What the worker does with the message: the Celery instrumentation's run span (a child of the
    context in the headers), then the jobs' spans around the model call (runtime/inference/tasks.py)."""
    message = read_prediction_message(kwargs)
    jobs = [(job.job_id, job.trace) for job in message.jobs]
    with tracing._tracer().start_as_current_span(f"run/{RUN_TASK}", context=extract(headers),
                                                 kind=trace.SpanKind.CONSUMER), \
            tracing.running_jobs(jobs, task="embed", model="m"):
        batcher.submit([value for job in message.jobs for value in job.inputs])


def _by_name(finished: list) -> dict[str, list]:
    named: dict[str, list] = {}
    for span in finished:
        named.setdefault("POST" if span.name.startswith("POST") else span.name, []).append(span)
    return named


def test_one_predict_is_one_trace_from_the_request_to_the_model_call(spans: InMemorySpanExporter):
    job = _request("a")
    assert job.trace and "traceparent" in job.trace
    kwargs, headers = _published([job])
    assert kwargs["jobs"][0]["trace"] == job.trace  # the job's context travels in the typed message
    assert "traceparent" in headers  # and the publish span's in the message headers
    batcher = DynamicBatcher(lambda values: [len(value) for value in values], name="batcher-m")
    _run_in_worker(kwargs, headers, batcher)

    finished = spans.get_finished_spans()
    named = _by_name(finished)
    request, = named["POST"]
    send, = named["cortex.coalescer.send"]
    publish, = named[f"apply_async/{RUN_TASK}"]
    run, = named[f"run/{RUN_TASK}"]
    job_span, = named["cortex.job"]
    call, = named["cortex.model.call"]
    assert {span.context.trace_id for span in finished} == {request.context.trace_id}
    assert send.parent.span_id == request.context.span_id
    assert publish.parent.span_id == send.context.span_id
    assert run.parent.span_id == publish.context.span_id
    assert job_span.parent.span_id == run.context.span_id
    assert job_span.attributes["cortex.job_id"] == "job-a"
    assert call.parent.span_id == run.context.span_id
    assert [link.context.span_id for link in call.links] == [job_span.context.span_id]
    assert call.attributes["cortex.items"] == 1


def test_two_predicts_in_one_message_keep_their_traces_and_the_call_links_both(spans: InMemorySpanExporter):
    first, second = _request("a"), _request("b")
    kwargs, headers = _published([first, second])
    batcher = DynamicBatcher(lambda values: [len(value) for value in values], name="batcher-m")
    _run_in_worker(kwargs, headers, batcher)

    named = _by_name(spans.get_finished_spans())
    requests = {span.name.rsplit(" ", 1)[1]: span for span in named["POST"]}
    assert requests["a"].context.trace_id != requests["b"].context.trace_id
    send, = named["cortex.coalescer.send"]
    assert send.context.trace_id == requests["a"].context.trace_id  # the message travels in the first's trace
    assert [link.context.span_id for link in send.links] == [requests["b"].context.span_id]
    jobs = {span.attributes["cortex.job_id"]: span for span in named["cortex.job"]}
    run, = named[f"run/{RUN_TASK}"]
    assert jobs["job-a"].parent.span_id == run.context.span_id
    # The second job's worker span is in its own request's trace, linked to the run that carried it.
    assert jobs["job-b"].context.trace_id == requests["b"].context.trace_id
    assert jobs["job-b"].parent.span_id == requests["b"].context.span_id
    assert [link.context.span_id for link in jobs["job-b"].links] == [run.context.span_id]
    call, = named["cortex.model.call"]
    assert {link.context.span_id for link in call.links} == {jobs["job-a"].context.span_id,
                                                              jobs["job-b"].context.span_id}


def test_messages_batched_by_the_worker_share_a_call_that_links_each_job(spans: InMemorySpanExporter):
    """Two messages (two requests the gateway sent apart) meet in the worker's batcher behind a busy model."""
    gate, busy = threading.Event(), threading.Event()

    def model(values: list[str]) -> list[int]:
        if values == ["busy"]:
            busy.set()
            gate.wait(5)
        return [len(value) for value in values]

    batcher = DynamicBatcher(model, name="batcher-m")
    first = threading.Thread(target=batcher.submit, args=(["busy"],))
    first.start()
    assert busy.wait(5)
    workers = []
    for name in ("a", "b"):
        kwargs, headers = _published([_request(name)])
        workers.append(threading.Thread(target=_run_in_worker, args=(kwargs, headers, batcher)))
        workers[-1].start()
        deadline = time.monotonic() + 5
        while len(batcher._heap) < len(workers) and time.monotonic() < deadline:
            time.sleep(0.002)
    gate.set()
    for thread in [first, *workers]:
        thread.join(10)

    named = _by_name(spans.get_finished_spans())
    jobs = {span.attributes["cortex.job_id"]: span for span in named["cortex.job"]}
    calls = [call for call in named["cortex.model.call"] if call.attributes["cortex.items"] == 2]
    assert len(calls) == 1, [call.attributes for call in named["cortex.model.call"]]
    call = calls[0]
    assert {link.context.span_id for link in call.links} == {jobs["job-a"].context.span_id,
                                                              jobs["job-b"].context.span_id}
    assert {link.context.trace_id for link in call.links} == {jobs["job-a"].context.trace_id,
                                                               jobs["job-b"].context.trace_id}
    assert len({link.context.trace_id for link in call.links}) == 2


def test_off_without_an_endpoint_nothing_of_opentelemetry_is_loaded():
    """No OTEL_EXPORTER_OTLP_ENDPOINT: the gateway's app, a request's job, the coalescer's send path and a
    worker's batched call run without importing OpenTelemetry at all, so no tracer provider or span
    processor can be active (in a fresh interpreter: this one has the SDK loaded by the tests above)."""
    script = textwrap.dedent("""
        import sys
        from flask import Flask
        from cortex_tasks.core.jobs.store import NewJob
        from cortex_tasks.core.observability import tracing
        from cortex_tasks.runtime.inference.batcher import DynamicBatcher
        from cortex_web.coalescer import PendingJob
        from cortex_web.tracing import instrument

        assert instrument(Flask("probe")) is False
        job = PendingJob("j", ["x"], NewJob(owner="k", kind="predict", task="embed", tenant="default"))
        assert job.trace is None
        with tracing.sending([job.trace]), tracing.running_jobs([("j", job.trace)]):
            assert DynamicBatcher(lambda values: values).submit(["x"]) == ["x"]
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        assert loaded == [], loaded
        print("off")
    """)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**environment, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "off", done.stderr


@pytest.mark.parametrize("environment, wanted", [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_the_standard_variables_turn_it_on_and_off(environment: dict[str, str], wanted: bool):
    assert tracing.wanted(environment) is wanted
