"""Inference as plain code: resolve the model, call it on the whole batch, shape the result."""
from __future__ import annotations

import time
from typing import Any

from cortex_tasks.catalogue import MODELS
from cortex_tasks.jobs.running import JobInputError
from cortex_tasks.models.loaded import get_model


def predict(task: str, model_name: str, inputs: list[Any], params: dict[str, Any]) -> dict[str, Any]:
    entry = MODELS.get(model_name)
    if entry is None or entry.task != task:
        raise JobInputError("unknown_model", f"model {model_name!r} does not serve task {task!r}")
    model = get_model(model_name)
    started = time.perf_counter()
    outputs = model.predict(inputs, params)
    return {
        "task": task,
        "model": {"name": model.info.name, "version": model.info.version},
        "outputs": outputs,
        "timings": {"model_ms": round((time.perf_counter() - started) * 1000, 2)},
    }
