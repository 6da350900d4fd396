"""Logs and traces of the Celery processes (workers and Beat), set up through Celery's own signals.

Logging: Celery configures the root logger itself unless a receiver answers `setup_logging`; this one
does, with Cortex's format (logs.py), so Celery's lines and Cortex's share one format and one handler.
A worker's component is `worker-<name>`, from its node name (`-n gpu@%h`: worker-gpu); Beat's is `beat`.
Celery prints its start-up banner to stdout before any of this: when the lines are JSON, the worker is
made quiet (the same facts are in its `worker ready` line).

Each task's lines carry its task name and id, its job id(s), model and tenant: bound in task_prerun and
released in task_postrun, in the task's own thread (a threads pool runs many tasks at once).

Tracing (tracing.py), when configured: the maintained Celery instrumentation, from `worker_init` (a
prefork pool's children inherit it; the SDK restarts its export thread after the fork) and `beat_init`;
each task's run span is annotated with its job id and model; a pool child flushes its spans before exiting.

Connected when cortex_tasks is imported (cortex_tasks/__init__.py): `celeryd_init` is sent before a worker
imports its task modules.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any

from celery import signals

from cortex_tasks.core.observability import logs, tracing

_component: str | None = None
_task_tokens = threading.local()


def _component_of_command(argv: list[str]) -> str:
    if _component:
        return _component
    return next((command for command in ("beat", "flower", "worker") if command in argv), "celery")


@signals.celeryd_init.connect
def _name_worker(sender: str | None = None, instance: Any = None, options: dict[str, Any] | None = None,
                 **_: Any) -> None:
    global _component
    node = str(sender or "").split("@", 1)[0]
    _component = f"worker-{node}" if node else "worker"
    # Logging starts here rather than at setup_logging: the worker warns (running as root, say) in between.
    _setup_logging((options or {}).get("loglevel"))
    if logs.resolved_format(_log_format(), sys.stderr) == "json":
        if instance is not None:
            instance.quiet = True  # its banner is plain text on stdout
        # Progress bars (a model's weights loading) draw on stderr, between the JSON lines.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")


def _log_format() -> str:
    from cortex_tasks.core.settings import get_settings

    return get_settings().log_format


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Celery passes its default level (WARNING) when the command names none: only a level the command
    # line names competes with CORTEX_LOG_LEVEL.
    asked = loglevel if _names_a_level(sys.argv) else None
    logs.configure_logging(_component_of_command(sys.argv), asked)


def _names_a_level(argv: list[str]) -> bool:
    return any(arg == "-l" or arg.startswith("--loglevel") or (arg.startswith("-l") and len(arg) > 2
                                                                and not arg.startswith("--"))
               for arg in argv)


def _start_tracing(component: str) -> None:
    if not tracing.configure(component):
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()
    # After the instrumentation's own prerun receiver, so the run span is current.
    signals.task_prerun.connect(_annotate_run_span, weak=False, dispatch_uid="cortex-annotate-run-span")


@signals.worker_init.connect
def _trace_worker(**_: Any) -> None:
    _start_tracing(_component_of_command(sys.argv))


@signals.beat_init.connect
def _trace_beat(**_: Any) -> None:
    _start_tracing("beat")


@signals.worker_process_shutdown.connect
def _flush_child(**_: Any) -> None:
    tracing.flush()


@signals.worker_shutdown.connect
def _flush_worker(**_: Any) -> None:
    tracing.flush()


def job_fields(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The ids and names a task's message carries (never its inputs): job_id (or job_ids for a message of
    several jobs), model."""
    message = kwargs or {}
    fields: dict[str, Any] = {}
    if isinstance(message.get("job_id"), str):
        fields["job_id"] = message["job_id"]
    jobs = message.get("jobs")
    if isinstance(jobs, list):
        ids = [job.get("job_id") for job in jobs if isinstance(job, dict) and isinstance(job.get("job_id"), str)]
        if len(ids) == 1:
            fields["job_id"] = ids[0]
        elif ids:
            fields["job_ids"] = ids
    if isinstance(message.get("model"), str):
        fields["model"] = message["model"]
    return fields


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, kwargs: dict[str, Any] | None = None,
               **_: Any) -> None:
    token = logs.bind(task=getattr(task, "name", None), task_id=task_id, **job_fields(kwargs))
    _task_tokens.__dict__.setdefault("stack", []).append(token)


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    stack = _task_tokens.__dict__.get("stack")
    if stack:
        logs.unbind(stack.pop())


def _annotate_run_span(task_id: str | None = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    fields = job_fields(kwargs)
    if "job_ids" in fields:
        fields["job_ids"] = ",".join(fields["job_ids"])
    tenant = (kwargs or {}).get("tenant")
    tracing.annotate(tenant=tenant if isinstance(tenant, str) else None, **fields)
