"""Training run records (experiment tracking) and the control requests a running trainer obeys.

The run row is the experiment record: config, data fingerprint, validation report, metrics per epoch,
held-out metrics, resource use, checkpoint and the registry version produced. It is written by the
trainer as it goes and read by /training/status and /training/runs.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, literal, null, select, update
from sqlalchemy.dialects.postgresql import JSONB

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Job, TrainingRun

QUEUED, PAUSED, CANCELLED, SUCCEEDED, FAILED = "queued", "paused", "cancelled", "succeeded", "failed"
ACTIVE_PHASES = ("validating", "preparing", "training", "evaluating", "registering")
FINISHED_PHASES = (CANCELLED, SUCCEEDED, FAILED)
PAUSE, CANCEL = "pause", "cancel"


def get_run(run_id: str) -> TrainingRun | None:
    with session_scope() as session:
        return session.get(TrainingRun, run_id)


def update_run(run_id: str, **values: Any) -> None:
    assignments: dict[str, Any] = {}
    for key, value in values.items():
        # None is SQL NULL, as a bound None always was (the ORM would write a JSONB column's None as JSON
        # null); the string "now()" is the database's clock.
        assignments[key] = null() if value is None else func.now() if value == "now()" else value
    assignments["updated_at"] = func.now()
    with session_scope() as session:
        session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(assignments)
                        .execution_options(synchronize_session=False))


def append_history(run_id: str, epochs: list[dict[str, Any]], epoch: int) -> None:
    with session_scope() as session:
        # The job row before the run row: the lock order of every transaction that touches both.
        session.execute(update(Job).where(Job.id == run_id)
                        .values(progress_done=epoch, progress_total=func.greatest(Job.progress_total, epoch))
                        .execution_options(synchronize_session=False))
        session.execute(update(TrainingRun).where(TrainingRun.id == run_id)
                        .values(history=TrainingRun.history.op("||", return_type=JSONB)(literal(epochs, JSONB)),
                                epoch=epoch, updated_at=func.now())
                        .execution_options(synchronize_session=False))


def set_job_total(run_id: str, total: int) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == run_id).values(progress_total=total)
                        .execution_options(synchronize_session=False))


def read_control(run_id: str) -> str | None:
    with session_scope() as session:
        return session.execute(select(TrainingRun.control).where(TrainingRun.id == run_id)).scalar()


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
