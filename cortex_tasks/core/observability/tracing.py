"""OpenTelemetry traces of every job, from the HTTP request to the model call and back.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and then at no
cost: no SDK, no tracer provider, no instrumentation is loaded, and every helper below returns at its first
line (`_enabled` is False). When it is set, each process installs the SDK's tracer provider with a batch
processor and the OTLP/HTTP exporter, which read the standard variables themselves (`OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`...); an unset
service name becomes `cortex-<component>`. `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keep
it off.

One trace per job:
- the gateway's request span (opentelemetry-instrumentation-flask, cortex_web/tracing.py);
- the coalescer's send (`cortex.coalescer.send`): a message may hold several requests' jobs, so each job
  carries its request's W3C trace context in the message (PredictionJob.trace); the send span belongs to
  the first job's trace and links the others;
- the publish (`apply_async/<task>`, PRODUCER) and the worker's task run (`run/<task>`, CONSUMER), joined
  through the `traceparent` message header (opentelemetry-instrumentation-celery in the workers; in the
  gateway, which does not register the worker's tasks, by `publish_spans` below);
- one `cortex.job` span per job in the worker, in that job's own trace (linked to the task run when the
  job came in another job's message);
- the model call (`cortex.model.call`, runtime/inference/batcher.py): a child of the first submission it
  serves, with a LINK to every job it served, whichever message or trace each came in: batch membership.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

Carrier = dict[str, str]  # W3C trace context headers: traceparent (and tracestate)

_enabled = False
_provider: Any = None
_configure_lock = threading.Lock()
TRACER_NAME = "cortex"
# The job spans of the work in progress in this thread (set while a worker runs a message's jobs): a model
# call made meanwhile links them.
_served: ContextVar[tuple[Any, ...]] = ContextVar("cortex_served_jobs", default=())
# What the helpers on a request's path return when tracing is off: no generator, no span, one check.
_NOTHING: AbstractContextManager[None] = nullcontext()


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    return _enabled


def configure(component: str) -> bool:
    """Install the SDK's tracer provider exporting over OTLP/HTTP, once per process, if wanted(); returns
    whether tracing is on. In a process that forks after this (a prefork worker's pool), the SDK's batch
    processor restarts its export thread in each child itself."""
    global _enabled, _provider
    if _enabled or not wanted():
        return _enabled
    with _configure_lock:
        if _enabled:
            return True
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"cortex.component": component})  # reads OTEL_RESOURCE_ATTRIBUTES and
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):  # OTEL_SERVICE_NAME
            resource = resource.merge(Resource({SERVICE_NAME: f"cortex-{component}"}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider, _enabled = provider, True
    return True


def flush(timeout_millis: int = 5000) -> None:
    """Export what is buffered now (a process about to end without running atexit: a pool child)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def _tracer() -> Any:
    from opentelemetry import trace

    return trace.get_tracer(TRACER_NAME)


def carrier() -> Carrier | None:
    """The current trace context as W3C headers, to travel with a job; None when tracing is off."""
    if not _enabled:
        return None
    from opentelemetry.propagate import inject

    headers: Carrier = {}
    inject(headers)
    return headers or None


def _span_context(job_carrier: Carrier | None) -> Any:
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    if not job_carrier:
        return trace.INVALID_SPAN_CONTEXT
    return trace.get_current_span(extract(job_carrier)).get_span_context()


def _links(span_contexts: list[Any]) -> list[Any]:
    from opentelemetry.trace import Link

    seen, links = set(), []
    for context in span_contexts:
        if context.is_valid and (context.trace_id, context.span_id) not in seen:
            seen.add((context.trace_id, context.span_id))
            links.append(Link(context))
    return links


def sending(carriers: list[Carrier | None], **attributes: Any) -> AbstractContextManager[None]:
    """Around publishing one message of jobs: a span in the first job's trace, linking every other job's
    request, current while the message is published so that the broker hop joins that trace (the
    coalescer may send from its own thread, where no request's trace is current)."""
    return _NOTHING if not _enabled else _sending(carriers, **attributes)


@contextmanager
def _sending(carriers: list[Carrier | None], **attributes: Any) -> Iterator[None]:
    from opentelemetry import trace

    contexts = [_span_context(job_carrier) for job_carrier in carriers]
    parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])) if contexts and contexts[0].is_valid \
        else None
    with _tracer().start_as_current_span("cortex.coalescer.send", context=parent, kind=trace.SpanKind.PRODUCER,
                                         links=_links(contexts[1:]),
                                         attributes={"cortex.jobs": len(carriers), **_attributes(attributes)}):
        yield


def running_jobs(jobs: list[tuple[str, Carrier | None]], **attributes: Any) -> AbstractContextManager[None]:
    """Around running one message's jobs in a worker: one `cortex.job` span per job, in the trace the job's
    request started; model calls made meanwhile link these spans (model_call)."""
    return _NOTHING if not _enabled else _running_jobs(jobs, **attributes)


@contextmanager
def _running_jobs(jobs: list[tuple[str, Carrier | None]], **attributes: Any) -> Iterator[None]:
    from opentelemetry import trace

    running = trace.get_current_span().get_span_context()  # the task's run span
    here = trace.set_span_in_context(trace.get_current_span())
    spans = []
    for job_id, job_carrier in jobs:
        origin = _span_context(job_carrier)
        if origin.is_valid and origin.trace_id != running.trace_id:
            # A job that shared another job's message: its span goes in its own trace, linked to the run.
            parent, links = trace.set_span_in_context(trace.NonRecordingSpan(origin)), _links([running])
        else:
            parent, links = here, []
        spans.append(_tracer().start_span("cortex.job", context=parent, links=links,
                                          attributes={"cortex.job_id": job_id, **_attributes(attributes)}))
    token = _served.set(tuple(span.get_span_context() for span in spans))
    try:
        yield
    finally:
        _served.reset(token)
        for span in spans:
            span.end()


def submission() -> tuple[Any, tuple[Any, ...]] | None:
    """What a model call needs to know of one submission to a batcher, taken in the submitting thread:
    (the current span's context, the job spans it serves); None when tracing is off."""
    if not _enabled:
        return None
    from opentelemetry import trace

    return trace.get_current_span().get_span_context(), _served.get()


def model_call(submissions: list[tuple[Any, tuple[Any, ...]] | None], **attributes: Any) -> AbstractContextManager[None]:
    """Around one batched model call: a child of the first submission it serves, linking every job it
    served (or, for work that is no prediction job, a batch chunk, the submitting task's span)."""
    return _NOTHING if not _enabled else _model_call(submissions, **attributes)


@contextmanager
def _model_call(submissions: list[tuple[Any, tuple[Any, ...]] | None], **attributes: Any) -> Iterator[None]:
    from opentelemetry import trace

    taken = [found for found in submissions if found is not None and found[0].is_valid]
    if not taken:
        yield
        return
    served = [context for current, jobs in taken for context in (jobs or (current,))]
    parent = trace.set_span_in_context(trace.NonRecordingSpan(taken[0][0]))
    with _tracer().start_as_current_span("cortex.model.call", context=parent, links=_links(served),
                                         attributes={"cortex.items": len(submissions),
                                                     **_attributes(attributes)}):
        yield


def span(name: str, **attributes: Any) -> AbstractContextManager[None]:
    """A span around a step of a job (a training run's fit), in the current trace; nothing when off."""
    return _NOTHING if not _enabled else _span(name, **attributes)


@contextmanager
def _span(name: str, **attributes: Any) -> Iterator[None]:
    with _tracer().start_as_current_span(name, attributes=_attributes(attributes)):
        yield


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (a task's run span: its job, model, tenant)."""
    if not _enabled:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(_attributes(attributes))


def _attributes(given: Mapping[str, Any]) -> dict[str, Any]:
    """`cortex.<name>` attributes; ids and names only (never inputs, outputs or params values)."""
    return {f"cortex.{key}" if "." not in key else key: value for key, value in given.items()
            if isinstance(value, (str, bool, int, float))}


# Publishing from a process that does not register the task it sends (the gateway sends by name:
# cortex_web never imports the worker runtime). opentelemetry-instrumentation-celery's publish hooks
# find no task object there: they open a span they never end and leave its context attached to the
# sending thread, nesting every later request under it. The gateway uses these two hooks instead: a
# PRODUCER span per published message, its context injected into the message headers, ended once published.
_MAX_OPEN_PUBLISHES = 10_000  # a publish that raised never sees after_task_publish: forget the oldest
_publishing: OrderedDict[str, Any] = OrderedDict()
_publishing_lock = threading.Lock()


def _before_publish(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    if not _enabled or headers is None:
        return
    from opentelemetry import trace
    from opentelemetry.propagate import inject

    task_id = str(headers.get("id"))
    started = _tracer().start_span(f"apply_async/{sender}", kind=trace.SpanKind.PRODUCER,
                                   attributes={"celery.task_name": str(sender), "messaging.message.id": task_id,
                                               "celery.action": "apply_async"})
    inject(headers, context=trace.set_span_in_context(started))
    with _publishing_lock:
        _publishing[task_id] = started
        while len(_publishing) > _MAX_OPEN_PUBLISHES:
            _publishing.popitem(last=False)


def _after_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if not _enabled or headers is None:
        return
    with _publishing_lock:
        started = _publishing.pop(str(headers.get("id")), None)
    if started is not None:
        started.end()


def publish_spans() -> None:
    """Trace what this process publishes by task name (the gateway); call once tracing is configured."""
    from celery import signals

    signals.before_task_publish.connect(_before_publish, weak=False, dispatch_uid="cortex-publish-span")
    signals.after_task_publish.connect(_after_publish, weak=False, dispatch_uid="cortex-publish-span-end")
