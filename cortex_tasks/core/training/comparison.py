"""Comparing a model's training runs (experiment tracking): the best run by its kind's primary metric,
how each finished run moved that metric, and which params changed since the best run."""
from __future__ import annotations

from typing import Any

from cortex_tasks.core.storage.tables import TrainingRun
from cortex_tasks.core.training import runs
from cortex_tasks.core.training.kinds import KINDS


def _primary(run: TrainingRun) -> tuple[str, float | None, bool]:
    kind = KINDS.get(run.kind)
    metric = kind.primary_metric if kind else "accuracy"
    value = (run.metrics or {}).get(metric)
    return metric, value if isinstance(value, (int, float)) else None, kind.higher_is_better if kind else True


def compare_runs(model_runs: list[TrainingRun]) -> dict[str, Any]:
    """The best run by its kind's primary metric, and how each finished run moved it from the run before."""
    finished = [run for run in reversed(model_runs) if run.phase == runs.SUCCEEDED]  # oldest first
    if not finished:
        return {"runs_compared": 0}
    metric, _, higher = _primary(finished[-1])
    scored = [(run, _primary(run)[1]) for run in finished if _primary(run)[1] is not None]
    rows, previous = [], None
    for run, value in scored:
        rows.append({"run_id": run.id, "version": run.registered_version, metric: value,
                     "change": None if previous is None else round(value - previous, 6),
                     "data_fingerprint": run.data_fingerprint})
        previous = value
    best = (max if higher else min)(scored, key=lambda pair: pair[1]) if scored else None
    latest = finished[-1]
    changed = {}
    if best is not None and best[0].id != latest.id:
        best_params = (best[0].config or {}).get("params") or {}
        latest_params = (latest.config or {}).get("params") or {}
        changed = {key: {"best": best_params.get(key), "latest": latest_params.get(key)}
                   for key in sorted(set(best_params) | set(latest_params))
                   if best_params.get(key) != latest_params.get(key)}
    return {"metric": metric, "higher_is_better": higher, "runs_compared": len(scored),
            "best": None if best is None else {"run_id": best[0].id, "version": best[0].registered_version,
                                               metric: best[1]},
            "latest": {"run_id": latest.id, "version": latest.registered_version, metric: _primary(latest)[1]},
            "params_changed_since_best": changed, "by_run": rows}
