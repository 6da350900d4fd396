"""What a trainer hands back for registration."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex_tasks.core.jobs.running import JobInputError


@dataclass
class TrainedModel:
    framework: str  # how the artifact is loaded (models/registry_models.py)
    artifact: bytes | Path  # a file's bytes, or a directory (stored as tar.gz)
    artifact_filename: str
    metrics: dict[str, Any]  # held-out evaluation
    parameters: dict[str, Any]  # hyper-parameters and what the model card should say
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def param_int(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JobInputError("invalid_params", f"params.{name} must be an integer from {low} to {high}")
    return value


def param_float(params: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise JobInputError("invalid_params", f"params.{name} must be a number from {low} to {high}")
    return float(value)
