"""Thin Celery tasks for training (routed to the `training` queue by `cortex.training.*`)."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import TrainingMessage
from cortex_tasks.core.contracts.messages import MessageRefused, read_message
from cortex_tasks.core.jobs.running import refuse_message
from cortex_tasks.core.registry import readiness
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.core.training import runs
from cortex_tasks.core.training.config import training_config
from cortex_tasks.runtime.training import probes, service

# Under the visibility timeout (celeryconfig.LONGEST_HARD_TIME_LIMIT): a long run pauses and resumes
# rather than outliving it.
TRAINING_LIMITS: dict[str, Any] = {"soft_time_limit": 4 * 3600 - 600, "time_limit": 4 * 3600 - 300}


@app.task(name=task_names.TRAIN_MODEL, bind=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True,
          max_retries=5, ignore_result=True, **TRAINING_LIMITS)
def train_model(self, **kwargs: Any) -> dict[str, Any]:
    """The kwargs are the message (core.contracts.job_messages.TrainingMessage). An unreadable one fails its
    job and its run (a queued run would count against the owner's quota until its deadline)."""
    try:
        message = read_message(TrainingMessage, kwargs)
    except MessageRefused as exc:
        outcome = refuse_message(kwargs, exc)
        if outcome["recorded"]:
            runs.update_run(kwargs["job_id"], phase=runs.FAILED, finished_at="now()", error=outcome["error"])
        return outcome
    try:
        return service.run_training(message.job_id)
    except service.NoSlot:
        # Waiting for a slot is not a failure: no retry limit, and the job stays queued meanwhile.
        raise self.retry(countdown=training_config().slot_retry_seconds, max_retries=None) from None


def _register_readiness_probes() -> None:
    """A promotion of a version this training produced loads its artifact the way serving will."""
    for framework, probe in probes.PROBES.items():
        readiness.register_probe(framework, probe)


_register_readiness_probes()
