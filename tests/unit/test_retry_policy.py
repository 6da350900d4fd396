"""The retry helpers jobs call: outside a Celery task (a trainer run in-process, a maintenance function
called by hand) nothing retries, so a job counts no retries and none are ever used up."""
from __future__ import annotations

from cortex_tasks.core.retry_policy import current_retries, retries_exhausted


def test_outside_a_task_nothing_has_retried_and_nothing_is_exhausted():
    assert current_retries() == 0
    assert retries_exhausted() is False
