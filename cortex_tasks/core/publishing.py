"""Every message Cortex publishes carries the time it was enqueued (header `enqueued_at`): load shedding
and priority aging read a waiting message's age from it."""
from __future__ import annotations

import time

from celery import signals


@signals.before_task_publish.connect
def _stamp_enqueue_time(headers=None, **_: object) -> None:
    if headers is not None:
        headers.setdefault("enqueued_at", time.time())
