"""Structured logs: one line per record, JSON (python-json-logger) or plain text, the same fields everywhere.

Every line names when (`time`, ISO 8601 in UTC), how bad (`level`), which process kind wrote it
(`component`: gateway, worker-gpu, worker-nlp, worker-training, beat, up), where (`logger`) and what
(`message`, its %-style arguments filled in). Where they apply, the line also carries the job, task, model
and tenant it was written for and the trace it belongs to (`job_id`, `task_id`, `task`, `model`, `tenant`,
`trace_id`, `span_id`). Those are bound once, where the work starts (a worker task's prerun hook binds its
message's job ids, task and model; the gateway's and worker's tenant scope is read from core/tenancy.py; the
trace from OpenTelemetry's current span), so no call has to pass them along.

`CORTEX_LOG_FORMAT`: `json`, `text`, or `auto` (the default): JSON lines unless the process writes to a
terminal, where `cortex up` and a worker run by hand stay readable. Processes whose output goes to a file
or a collector (every child of `cortex up`, compose, Kubernetes) write JSON. `CORTEX_LOG_LEVEL` sets the
level (INFO by default).

Inputs and outputs are never logged: Cortex's own log calls name ids and sizes only, Celery's task-received
lines show the summary of core/publishing.py, and the lines in which Celery would show a task's return
value (task succeeded) or, at DEBUG, its raw message (the pool applying it) show their sizes instead
(ContextFilter). Any Cortex API key that reaches a
message anyway is cut to its id (core/log_redaction.py).
"""
from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from cortex_tasks.core.log_redaction import redact_keys

# The fields bound to the work in progress (a task's job ids, task, model); read by every record.
_bound: ContextVar[Mapping[str, Any]] = ContextVar("cortex_log_fields", default=MappingProxyType({}))
_component = "cortex"
# Fields the context adds, in the order a text line shows them.
CONTEXT_FIELDS = ("job_id", "task", "task_id", "model", "tenant", "trace_id", "span_id")
# Celery's line for a finished task formats the task's return value (its outputs) into the message.
CELERY_TRACE_LOGGER = "celery.app.trace"
# At DEBUG, Celery's pool logs each task it applies with the raw message body (the inputs): the lines keep
# the task, not the arguments.
CELERY_POOL_LOGGER = "celery.pool"


def component() -> str:
    return _component


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind `fields` (None values left out) to every record written inside the block, in this thread or
    task (contextvars: a thread started inside sees nothing, a new asyncio task a copy)."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """bound() for hooks that open and close in two calls (Celery's prerun and postrun): pass the token
    back to unbind()."""
    return _bound.set({**_bound.get(), **{key: value for key, value in fields.items() if value is not None}})


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _bound.reset(token)


def bound_fields() -> Mapping[str, Any]:
    return _bound.get()


def _summary(value: Any) -> str:
    text = str(value)
    return f"<{type(value).__name__} {len(text)} chars>"


class ContextFilter(logging.Filter):
    """Adds the component, the bound fields, the tenant in scope and the current trace to each record; cuts
    Celery's task return values down to their size. A handler's filter, so it sees every record the
    handler writes, whichever logger made it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = _component
        for key, value in _bound.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "tenant"):
            tenant = _tenant()
            if tenant is not None:
                record.tenant = tenant
        trace_ids = _trace_ids()
        if trace_ids is not None:
            record.trace_id, record.span_id = trace_ids
        if record.name == CELERY_POOL_LOGGER and isinstance(record.args, tuple) and len(record.args) == 3:
            target, arguments, keywords = record.args
            record.args = (target, _summary(arguments), _summary(keywords))
        if record.name == CELERY_TRACE_LOGGER:
            # The same mapping is the message's arguments and, as `data`, an extra field of the line.
            for name in ("args", "data"):
                given = getattr(record, name, None)
                if isinstance(given, Mapping) and "return_value" in given:
                    setattr(record, name, {**given, "return_value": _summary(given["return_value"])})
        return True


def _tenant() -> str | None:
    from cortex_tasks.core.tenancy import current_scope

    scope = current_scope()
    return scope if isinstance(scope, str) else None


def _trace_ids() -> tuple[str, str] | None:
    # Only where OpenTelemetry is loaded at all (tracing is on, tracing.py): a process that does not trace
    # pays nothing for this lookup.
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _iso_time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class JsonLines(JsonFormatter):
    """One JSON object per line: time, level, component, logger, message, then the context fields and any
    `extra` a call passed."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(component)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["message"] = redact_keys(str(log_data.get("message", "")))


class TextLines(logging.Formatter):
    """For a terminal: `time level component logger: message [job_id=... trace_id=...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(component)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)

    def format(self, record: logging.LogRecord) -> str:
        text = redact_keys(super().format(record))
        context = " ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name))
        if not context:
            return text
        first, newline, rest = text.partition("\n")  # a traceback stays below the line it belongs to
        return f"{first} [{context}]{newline}{rest}"


def resolved_format(configured: str, stream: TextIO) -> str:
    """`json` or `text`: `auto` is text on a terminal, JSON anywhere else."""
    if configured != "auto":
        return configured
    isatty = getattr(stream, "isatty", None)
    try:
        return "text" if isatty is not None and isatty() else "json"
    except ValueError:  # a closed stream
        return "json"


def formatter(log_format: str) -> logging.Formatter:
    return JsonLines() if log_format == "json" else TextLines()


def handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing Cortex's lines to `stream` (stderr by default)."""
    written = logging.StreamHandler(stream or sys.stderr)
    written.setFormatter(formatter(log_format))
    written.addFilter(ContextFilter())
    written._cortex = True  # type: ignore[attr-defined]  # configure_logging replaces its own handler
    return written


_configure_lock = threading.Lock()


def configure_logging(name: str, level: int | str | None = None, stream: TextIO | None = None) -> str:
    """Send every record of this process to stderr in Cortex's format, as `name` (the component); the
    root logger's other handlers are removed, so each record is written once. `level`: a more verbose
    level a command asked for (Celery's --loglevel) wins over CORTEX_LOG_LEVEL. Returns the format used."""
    from cortex_tasks.core.settings import get_settings

    global _component
    settings = get_settings()
    stream = stream or sys.stderr
    log_format = resolved_format(settings.log_format, stream)
    with _configure_lock:
        _component = name
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler(log_format, stream))
        configured = logging.getLevelName(settings.log_level)
        asked = logging.getLevelName(level.upper()) if isinstance(level, str) else level
        root.setLevel(min(configured, asked) if isinstance(asked, int) and asked > 0 else configured)
    logging.captureWarnings(True)
    return log_format


def use_format_on(loggers: list[logging.Logger], name: str) -> None:
    """Cortex's format and fields, as component `name`, on the handlers other code set up on `loggers`
    (gunicorn's error and access logs keep their destinations, whatever an operator configured)."""
    from cortex_tasks.core.settings import get_settings

    global _component
    _component = name
    configured = get_settings().log_format
    for logger in loggers:
        for existing in logger.handlers:
            stream = getattr(existing, "stream", None)
            existing.setFormatter(formatter(resolved_format(configured, stream) if stream else
                                            ("json" if configured == "auto" else configured)))
            if not any(isinstance(found, ContextFilter) for found in existing.filters):
                existing.addFilter(ContextFilter())
