"""`training_endpoints` from the architecture document (quotas, priorities) and the evaluation gate
(`model_selection.criteria.minimum_confidence`): the training group of the settings object."""
from __future__ import annotations

from cortex_tasks.core.settings import TrainingConfig, get_settings

__all__ = ["TrainingConfig", "training_config"]


def training_config() -> TrainingConfig:
    return get_settings().training
