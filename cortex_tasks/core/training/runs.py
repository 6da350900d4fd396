"""Training run records (experiment tracking) and the control requests a running trainer obeys.

The run row is the experiment record: config, data fingerprint, validation report, metrics per epoch,
held-out metrics, resource use, checkpoint and the registry version produced. It is written by the
trainer as it goes and read by /training/status and /training/runs.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select, text

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import TrainingRun

QUEUED, PAUSED, CANCELLED, SUCCEEDED, FAILED = "queued", "paused", "cancelled", "succeeded", "failed"
ACTIVE_PHASES = ("validating", "preparing", "training", "evaluating", "registering")
FINISHED_PHASES = (CANCELLED, SUCCEEDED, FAILED)
PAUSE, CANCEL = "pause", "cancel"


def get_run(run_id: str) -> TrainingRun | None:
    with session_scope() as session:
        return session.get(TrainingRun, run_id)


def update_run(run_id: str, **values: Any) -> None:
    assignments, params = [], {"id": run_id}
    for key, value in values.items():
        if isinstance(value, (dict, list)):
            assignments.append(f"{key} = CAST(:{key} AS jsonb)")
            params[key] = json.dumps(value)
        elif value == "now()":
            assignments.append(f"{key} = now()")
        else:
            assignments.append(f"{key} = :{key}")
            params[key] = value
    assignments.append("updated_at = now()")
    with session_scope() as session:
        session.execute(text(f"UPDATE training_runs SET {', '.join(assignments)} WHERE id = :id"), params)


def append_history(run_id: str, epochs: list[dict[str, Any]], epoch: int) -> None:
    with session_scope() as session:
        # The job row before the run row: the lock order of every transaction that touches both.
        session.execute(text(
            "UPDATE jobs SET progress_done = :epoch, progress_total = greatest(progress_total, :epoch) "
            "WHERE id = :id"), {"id": run_id, "epoch": epoch})
        session.execute(text(
            "UPDATE training_runs SET history = history || CAST(:epochs AS jsonb), epoch = :epoch, "
            "updated_at = now() WHERE id = :id"), {"id": run_id, "epochs": json.dumps(epochs), "epoch": epoch})


def set_job_total(run_id: str, total: int) -> None:
    with session_scope() as session:
        session.execute(text("UPDATE jobs SET progress_total = :total WHERE id = :id"), {"id": run_id, "total": total})


def read_control(run_id: str) -> str | None:
    with session_scope() as session:
        return session.execute(text("SELECT control FROM training_runs WHERE id = :id"), {"id": run_id}).scalar()


def runs_of_model(model_name: str, limit: int = 50) -> list[TrainingRun]:
    with session_scope() as session:
        return list(session.scalars(select(TrainingRun).where(TrainingRun.model_name == model_name)
                                    .order_by(TrainingRun.created_at.desc()).limit(limit)).all())


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def run_to_api(run: TrainingRun, with_history: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "run_id": run.id, "job_id": run.id, "model": run.model_name, "kind": run.kind, "phase": run.phase,
        "epoch": run.epoch, "epochs": run.epochs, "trigger": run.trigger, "config": run.config,
        "data_fingerprint": run.data_fingerprint, "validation": run.validation,
        "metrics": run.metrics, "resources": run.resources,
        "checkpoint": ({"epoch": run.checkpoint_epoch, "ref": run.checkpoint_ref} if run.checkpoint_ref else None),
        "registered": ({"version": run.registered_version, "reference": f"{run.model_name}@{run.registered_version}",
                        "stage": run.stage} if run.registered_version else None),
        "control_requested": run.control, "error": run.error,
        "created_at": _iso(run.created_at), "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at), "updated_at": _iso(run.updated_at),
    }
    if with_history:
        body["history"] = run.history
    return body
