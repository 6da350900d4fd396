"""The batch group of the settings object."""
from __future__ import annotations

from cortex_tasks.core.settings import BatchConfig, get_settings

__all__ = ["BatchConfig", "batch_config", "batch_queue"]


def batch_config() -> BatchConfig:
    return get_settings().batch


def batch_queue() -> str:
    """The queue chunk tasks go to (CORTEX_BATCH_QUEUE). The queue is recorded with the job, so every
    follow-up chunk goes where the first ones went."""
    return get_settings().batch.queue
