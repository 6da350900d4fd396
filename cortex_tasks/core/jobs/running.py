"""Running a job inside a task: count the delivery, do the work, record the outcome exactly once.

The returned payload travels back through the result backend to a gateway waiting on it; the job row
in PostgreSQL is the durable record.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from cortex_tasks.core.contracts.messages import MessageRefused
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.outcomes import publish_outcome
from cortex_tasks.core.retry_policy import (
    DATABASE_ERRORS,
    TRANSIENT_ERRORS,
    current_retries,
    dependency_error,
    retries_exhausted,
    run_kept_while_database_away,
)
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.usage.worker_time import ModelClock, WorkerTime

log = logging.getLogger(__name__)


class JobInputError(CortexError):
    """The job's input cannot be processed (a client error discovered in the worker).

    Its HTTP status travels in details["status"] (default 422), because details are what a job record
    keeps; the gateway reads it from there (dispatch.py) and leaves it out of the answer's details.
    """

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(code, message, details)

    @property  # type: ignore[override]
    def status(self) -> int:
        return int(self.details.get("status", 422))

    def public_details(self) -> dict[str, Any]:
        return {name: value for name, value in self.details.items() if name != "status"}


def shown_outcome(outcome: dict[str, Any]) -> dict[str, Any]:
    """What a task returns once it has published its outcome: the worker logs it and Flower shows it
    (task-succeeded), so the status and error code only, never the result (search hits, answers, texts)."""
    shown = {"status": outcome["status"]}
    if isinstance(outcome.get("error"), dict):
        shown["error"] = {"code": outcome["error"].get("code")}
    return shown


def run_job(job_id: str, work: Callable[[], dict[str, Any]], clock: ModelClock | None = None) -> dict[str, Any]:
    """`clock`: the model calls `work` makes are charged to it, and their time is recorded with the job's
    outcome (core/usage/worker_time.py), once: only by the delivery that records the outcome.

    PostgreSQL away through every retry of the task, wherever it was missed (counting the delivery, in the
    work, recording the outcome), keeps the task's message, like a prediction's: the job's inputs travel only
    in it (retry_policy.run_kept_while_database_away). Once PostgreSQL answers, the job runs again only if
    its row is still open; a job whose outcome was recorded before is answered from its record."""
    return run_kept_while_database_away(lambda: _run_job(job_id, work, clock))


def _run_job(job_id: str, work: Callable[[], dict[str, Any]], clock: ModelClock | None) -> dict[str, Any]:
    # The task's own retries are deliveries too, but not a worker dying: they do not count against the cap
    # (a task allowed more retries than CORTEX_MAX_DELIVERIES was failed as `redelivery_limit`).
    attempt = store.begin_attempt(job_id, get_settings().max_deliveries + current_retries())
    if attempt is None:
        # A duplicate delivery of a finished job, or the redelivery cap was reached: answer from the record.
        job = store.get_job(job_id)
        if job is None:
            return {"status": "failed", "error": {"code": "unknown_job", "message": "no such job"}}
        result, unavailable = store.job_result(job)
        return {"status": job.status, "result": result, "error": job.error or unavailable}
    started = time.perf_counter()
    try:
        with clock if clock is not None else nullcontext():
            result = work()
    except TRANSIENT_ERRORS as exc:
        if not retries_exhausted():
            raise  # the task's autoretry takes it from here; the job stays running
        error = dependency_error(exc)
        try:
            store.fail_job(job_id, error, _usage(clock))
        except DATABASE_ERRORS:
            raise  # PostgreSQL itself is away: the job can be neither run nor failed; run_job keeps its message
        except TRANSIENT_ERRORS:
            raise exc from None  # not PostgreSQL: the task fails, as any transient error past its retries
        return {"status": "failed", "error": error}
    except JobInputError as exc:
        error = {"code": exc.code, "message": str(exc), "details": exc.details}
        store.fail_job(job_id, error, _usage(clock))
        return {"status": "failed", "error": error}
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error = {"code": "job_failed", "message": f"{type(exc).__name__}: {exc}"}
        store.fail_job(job_id, error, _usage(clock))
        return {"status": "failed", "error": error}
    result.setdefault("timings", {})["worker_ms"] = round((time.perf_counter() - started) * 1000, 2)
    store.finish_job(job_id, result, usage=_usage(clock))
    return {"status": "succeeded", "result": result}


def _usage(clock: ModelClock | None) -> list[WorkerTime]:
    return clock.usage() if clock is not None else []


def refuse_message(kwargs: dict[str, Any], refused: MessageRefused) -> dict[str, Any]:
    """Fail the job of a single-job message this worker cannot read (job_messages.JobMessage), with the
    reason, instead of raising: a retry, or another worker of the same release, would refuse it again. The
    job id and reply channel are taken from the raw message where they can be, so the row the sender
    created is failed and a waiting caller is answered at once. `recorded`: the row was failed here (it
    was still queued or running)."""
    log.error("refused a message: %s", refused)
    error = {"code": refused.code, "message": str(refused)}
    outcome = {"status": store.FAILED, "error": error}
    job_id, reply_to = kwargs.get("job_id"), kwargs.get("reply_to")
    if not isinstance(job_id, str):  # nothing to fail: the log line is all that is left of it
        return {**outcome, "recorded": False}
    recorded = store.fail_job(job_id, error)
    publish_outcome(reply_to if isinstance(reply_to, str) else None, job_id, outcome)
    return {**outcome, "recorded": recorded}
