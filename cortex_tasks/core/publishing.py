"""What every message Cortex publishes carries besides its arguments.

- The time it was enqueued (header `enqueued_at`): load shedding and priority aging read a waiting
  message's age from it. It is Redis's time, not this host's (core/redis_clock.py): the process that
  reads the age runs on another host, whose clock may be minutes apart.
- Its arguments as Flower and the logs show them (`argsrepr`/`kwargsrepr`, in the message headers and in
  the task-sent and task-received events): ids and sizes only, never the texts. Celery's default is a
  repr of the arguments themselves, which put users' inputs, chat messages and PII into Flower and into
  every process that reads task events. The app publishes through `ArgumentSummaryAMQP`, so no sender
  can forget it.
"""
from __future__ import annotations

from typing import Any

from celery import signals
from celery.app.amqp import AMQP

from cortex_tasks.core import redis_clock
from cortex_tasks.core.broker import native_priority

# Fields shown as they are when they hold a short string: names and ids chosen by Cortex or the operator
# (a job id, a model name), never content. Everything else is shown by its type and size.
SHOWN_FIELDS = frozenset({
    "job_id", "message_id", "reply_to", "task", "model", "queue", "collection", "kind", "owner", "version", "tenant",
    "session_id", "deployment_id", "chunk_index", "priority", "total", "deadline_seconds", "inline_errors",
    "looked_up", "warm", "sensitive", "k", "top_k", "generate", "max_tokens", "created_by", "indexed_by",
})
MAX_SHOWN_STRING = 128
MAX_SHOWN_ITEMS = 32  # of a list of records (a prediction message's jobs); the rest are counted
MAX_REPR = 2048


def _size(value: Any) -> str:
    if isinstance(value, str):
        return f"<str {len(value)} chars>"
    if isinstance(value, (list, tuple)):
        return f"<list {len(value)} items>"
    if isinstance(value, dict):
        return f"<dict {len(value)} keys>"
    return f"<{type(value).__name__}>"


def _job_shown(job: dict[str, Any]) -> dict[str, Any]:
    if job.get("sealed_inputs"):  # the count is in its record
        return {"job_id": job.get("job_id"), "inputs": (job.get("record") or {}).get("total"), "sealed": True}
    return {"job_id": job.get("job_id"), "inputs": len(job.get("inputs") or ())}


def _shown(value: Any, field: str | None, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if field in SHOWN_FIELDS and len(value) <= MAX_SHOWN_STRING else _size(value)
    if isinstance(value, dict) and depth == 0:
        return {str(key): _shown(item, str(key), depth + 1) for key, item in value.items()}
    if isinstance(value, list) and field == "jobs":
        # A prediction message's jobs: each job's id and input count, so an operator can find it (its
        # record repeats the message's task and model; leaving it out keeps this off the send path's cost).
        shown: list[Any] = [_job_shown(job) if isinstance(job, dict) else _size(job)
                            for job in value[:MAX_SHOWN_ITEMS]]
        if len(value) > MAX_SHOWN_ITEMS:
            shown.append(f"<{len(value) - MAX_SHOWN_ITEMS} more>")
        return shown
    return _size(value)


def shown_arguments(arguments: Any) -> str:
    """The repr Flower and the logs show of a task's args or kwargs: ids and sizes only."""
    if isinstance(arguments, dict):
        text = repr(_shown(arguments, None, 0))
    else:
        text = repr(tuple(_shown(item, None, 1) if not isinstance(item, dict) else _size(item)
                          for item in arguments))
    return text if len(text) <= MAX_REPR else text[:MAX_REPR - 3] + "..."


class ArgumentSummaryAMQP(AMQP):
    """Celery's AMQP with `argsrepr`/`kwargsrepr` always made by shown_arguments (a sender's own are
    replaced too: they were written for convenience, not for privacy), and each message's priority in
    the convention of the broker it goes to (core/broker.py)."""

    def _create_task_sender(self) -> Any:
        send = super()._create_task_sender()
        default_step = self.app.conf.task_default_priority

        def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
            headers = message[0]
            # Redis takes Cortex's steps as they are. A retry re-sends the priority its message was delivered
            # with, already the broker's own.
            driver_type = producer.connection.transport.driver_type
            if driver_type == "amqp" and not headers.get("retries"):
                options["priority"] = native_priority(options.get("priority"), driver_type, default_step)
            return send(producer, name, message, **options)

        return send_task_message

    def as_task_v2(self, task_id: str, name: str, args: Any = None, kwargs: Any = None,  # type: ignore[override]
                   *positional: Any, **options: Any) -> Any:
        options["argsrepr"] = shown_arguments(args or ())
        options["kwargsrepr"] = shown_arguments(kwargs or {})
        return super().as_task_v2(task_id, name, args, kwargs, *positional, **options)


@signals.before_task_publish.connect
def _stamp_enqueue_time(headers=None, **_: object) -> None:
    if headers is not None:
        headers.setdefault("enqueued_at", redis_clock.broker_now())
