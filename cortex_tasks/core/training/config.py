"""Training quotas and priorities, and the evaluation gate (the minimum confidence a new version needs):
the training group of the settings object."""
from __future__ import annotations

from cortex_tasks.core.settings import TrainingConfig, get_settings

__all__ = ["TrainingConfig", "training_config"]


def training_config() -> TrainingConfig:
    return get_settings().training
