"""The gateway's traces (core/observability/tracing.py): a server span per HTTP request
(opentelemetry-instrumentation-flask) and a producer span per message it publishes, whose context travels
in the message headers to the worker. Nothing is imported or wrapped when tracing is off."""
from __future__ import annotations

import os
from typing import Any

from flask import Flask

from cortex_tasks.core.log_redaction import redact_query, redact_target
from cortex_tasks.core.observability import tracing

# Probes and scrapes come every few seconds and say nothing about a job; OTEL_PYTHON_FLASK_EXCLUDED_URLS,
# when set, is the operator's own list instead.
PROBE_URLS = "/health$,/ready$,/metrics$"


def instrument(app: Flask) -> bool:
    """Trace `app`'s requests and what it publishes, if tracing is configured; returns whether it is."""
    if not tracing.configure("gateway"):
        return False
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    excluded = None if os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS") else PROBE_URLS
    FlaskInstrumentor().instrument_app(app, excluded_urls=excluded, request_hook=redact_request_attributes)
    tracing.publish_spans()
    return True


def redact_request_attributes(span: Any, environ: dict[str, Any]) -> None:
    """The request's target as the logs show it: a client that sends `?api_key=ctx_...` (keys belong in
    headers) must not have its key written into a trace (core/log_redaction.py). The instrumentation only
    redacts a few cloud providers' signature parameters."""
    if span is None or not span.is_recording():
        return
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if target:
        span.set_attribute("http.target", redact_target(str(target)))
    query = environ.get("QUERY_STRING")
    if query:
        span.set_attribute("url.query", redact_query(str(query)))
    for name in ("http.url", "url.full"):
        shown = span.attributes.get(name) if hasattr(span, "attributes") else None
        if isinstance(shown, str):
            span.set_attribute(name, redact_target(shown))
