"""Thin Celery tasks for training (routed to the `training` queue by `cortex.training.*`)."""
from __future__ import annotations

from typing import Any

from cortex_tasks import app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.registry import readiness
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS
from cortex_tasks.core.training.config import training_config
from cortex_tasks.runtime.training import service

# Under the visibility timeout (celeryconfig.LONGEST_HARD_TIME_LIMIT): a long run pauses and resumes
# rather than outliving it.
TRAINING_LIMITS: dict[str, Any] = {"soft_time_limit": 4 * 3600 - 600, "time_limit": 4 * 3600 - 300}


@app.task(name=task_names.TRAIN_MODEL, bind=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True,
          max_retries=5, ignore_result=True, **TRAINING_LIMITS)
def train_model(self, *, job_id: str) -> dict[str, Any]:
    try:
        return service.run_training(job_id)
    except service.NoSlot:
        # Waiting for a slot is not a failure: no retry limit, and the job stays queued meanwhile.
        raise self.retry(countdown=training_config().slot_retry_seconds, max_retries=None) from None


def _register_readiness_probes() -> None:
    """A promotion of a version this training produced loads its artifact the way serving will."""
    from cortex_tasks.runtime.training import probes

    for framework, probe in probes.PROBES.items():
        readiness.register_probe(framework, probe)


_register_readiness_probes()
