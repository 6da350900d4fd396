"""Thin Celery tasks of the registry."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import ActivationMessage
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.jobs.outcomes import publish_outcome
from cortex_tasks.core.jobs.running import JobInputError, refuse_message, run_job
from cortex_tasks.core.registry import readiness, service
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS, retries_exhausted
from cortex_tasks.core.storage.object_store import ObjectStoreError, ObjectStoreUnavailable


def activate(deployment_id: int, job_id: str) -> dict[str, Any]:
    """Check the version is ready, then switch traffic to it. A failed check fails the deployment and
    leaves the serving versions as they were."""
    name, pending = service.deployment(deployment_id)
    record = service.get_version(name, pending["version"])
    try:
        check = readiness.check_ready(record)
    except ObjectStoreUnavailable as exc:
        if not retries_exhausted():
            raise  # transient: the task retries, the deployment stays pending
        # Left pending, the deployment would block every later promotion of the model.
        error = {"code": "object_store_unavailable",
                 "message": f"the artifact could not be fetched through every retry ({exc.message}); "
                            "serving is unchanged. Promote again once the object store is back."}
        service.fail_deployment(deployment_id, error, job_id)
        raise JobInputError(error["code"], f"{record.reference} was not promoted: {error['message']}",
                            {"deployment_id": deployment_id, "status": 503}) from None
    except ObjectStoreError as exc:
        error = {"code": exc.code, "message": exc.message}
        service.fail_deployment(deployment_id, error, job_id)
        raise JobInputError(exc.code, f"{record.reference} is not ready: {exc.message}",
                            {"deployment_id": deployment_id}) from None
    except Exception as exc:  # noqa: BLE001 (any failure of a probe means: not ready)
        error = {"code": "readiness_check_failed", "message": f"{type(exc).__name__}: {exc}"}
        service.fail_deployment(deployment_id, error, job_id)
        raise JobInputError("readiness_check_failed", f"{record.reference} is not ready: {error['message']}",
                            {"deployment_id": deployment_id}) from None
    switched = service.complete_deployment(deployment_id, job_id)
    _, done = service.deployment(deployment_id)
    return {"version": switched.as_dict(), "deployment": done, "readiness": check}


@app.task(name=task_names.REGISTRY_ACTIVATE_VERSION, soft_time_limit=300, time_limit=360,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3, ignore_result=True)
def activate_version(**kwargs: Any) -> dict[str, Any]:
    """The kwargs are the message (core.contracts.job_messages.ActivationMessage). An unreadable one fails
    its job and, where its id can be read, its deployment (a pending one would block every later promotion
    of the model); serving is unchanged."""
    try:
        message = read_message(ActivationMessage, kwargs)
    except MessageRefused as exc:
        outcome = refuse_message(kwargs, exc)
        deployment_id, job_id = kwargs.get("deployment_id"), kwargs.get("job_id")
        if outcome["recorded"] and isinstance(deployment_id, int) and not isinstance(deployment_id, bool):
            service.fail_deployment(deployment_id, outcome["error"], job_id if isinstance(job_id, str) else None)
        return outcome
    outcome = run_job(message.job_id, lambda: activate(message.deployment_id, message.job_id))
    if outcome["status"] != "succeeded":
        # However the job ended (the redelivery cap included), a pending deployment would block every
        # later promotion of the model: it fails with the job (only a pending one changes).
        service.fail_deployment(message.deployment_id, outcome.get("error") or {"code": "job_failed"},
                                message.job_id)
    publish_outcome(message.reply_to, message.job_id, outcome)
    return outcome
