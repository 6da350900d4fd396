"""`training_endpoints` from the architecture document (quotas, priorities) and the evaluation gate
(`model_selection.criteria.minimum_confidence`), overridable from the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from cortex_tasks.core.settings import env_float, env_int


@dataclass(frozen=True)
class TrainingConfig:
    # At most this many training jobs run at once (across workers), and at most this many per owner
    # may be waiting or running: over that, a submission is refused with 429.
    max_concurrent_jobs: int = 5
    # Training jobs waiting in the queue, over all owners; a submission past it is refused with 429.
    queue_size: int = 100
    priority_levels: int = 3  # high, normal, low
    # A version whose primary held-out metric reaches this is promoted to canary on its own
    # (params.gate overrides per job; params.auto_promote=false switches it off).
    gate_threshold: float = 0.85
    gate_enabled: bool = True
    # How long a job that found no free training slot waits before it tries again.
    slot_retry_seconds: int = 10
    max_rows: int = 100_000


@lru_cache(maxsize=1)
def training_config() -> TrainingConfig:
    return TrainingConfig(
        max_concurrent_jobs=env_int("CORTEX_TRAINING_MAX_CONCURRENT", 5),
        queue_size=env_int("CORTEX_TRAINING_QUEUE_SIZE", 100),
        gate_threshold=env_float("CORTEX_TRAINING_GATE_THRESHOLD", 0.85),
        gate_enabled=os.environ.get("CORTEX_TRAINING_GATE", "1").lower() not in ("0", "false", "no", "off"),
        slot_retry_seconds=env_int("CORTEX_TRAINING_SLOT_RETRY_SECONDS", 10),
    )
