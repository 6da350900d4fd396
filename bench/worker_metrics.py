"""What the worker's metrics cost per task: the prerun and postrun observations (task latency, queue wait,
torch's GPU memory) in one process and in prometheus_client's multiprocess mode (prefork workers), as a
share of the cheapest real model call measured in the same run (VADER sentiment on one sentence, the
lightest task a worker serves).

`python -m bench worker_metrics [--quick]`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPEATS = 5


def _hooks_seconds(count: int) -> float:
    """Seconds per task of the signals' observations (best of REPEATS), on a task whose message carries
    the publish time as Cortex's do."""
    from cortex_tasks.runtime.metrics import instruments
    from cortex_tasks.runtime.metrics.resources import record_torch_memory

    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(count):
            request = types.SimpleNamespace(delivery_info={"routing_key": "nlp"}, eta=None, enqueued_at=time.time())
            task = types.SimpleNamespace(name="cortex.inference.run_nlp_jobs", request=request)
            instruments.task_started(task)
            instruments.task_finished(task)
            record_torch_memory()
        best = min(best, (time.perf_counter() - started) / count)
    return best


def _model_call_seconds(count: int) -> float:
    from cortex_tasks.runtime.models.loaded import get_model

    model = get_model("vader")
    model.predict(["warm up"], {})
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for i in range(count):
            model.predict([f"What a lovely, quiet afternoon number {i}."], {})
        best = min(best, (time.perf_counter() - started) / count)
    return best


def _multiprocess_hooks_seconds(count: int) -> float:
    """The same observations in a process started in multiprocess mode (its metrics in mmapped files)."""
    with tempfile.TemporaryDirectory(prefix="cortex-bench-metrics-") as folder:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder, "PYTHONPATH": str(Path(__file__).parents[1])}
        code = f"import json; from bench.worker_metrics import _hooks_seconds; print(json.dumps(_hooks_seconds({count})))"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                              check=True)
        return float(json.loads(done.stdout.strip().splitlines()[-1]))


def run(quick: bool = False) -> dict[str, Any]:
    count = 2_000 if quick else 20_000
    hooks = _hooks_seconds(count)
    multiprocess = _multiprocess_hooks_seconds(count)
    model = _model_call_seconds(200 if quick else 2_000)
    return {"tasks": count, "hooks_us_per_task": round(hooks * 1e6, 2),
            "hooks_multiprocess_us_per_task": round(multiprocess * 1e6, 2),
            "cheapest_model_call_us": round(model * 1e6, 2),
            "hooks_share_of_cheapest_call": round(hooks / model, 4),
            "multiprocess_hooks_share_of_cheapest_call": round(multiprocess / model, 4)}
