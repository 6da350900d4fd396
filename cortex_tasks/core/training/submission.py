"""Submitting and steering training jobs (gateway side, torch-free): quotas, the job and run rows,
pause / resume / cancel.

Quotas (`training_endpoints`): an owner may have at most `max_concurrent_jobs` training jobs waiting or
running, and at most `queue_size` training jobs may wait in all. Both counts are taken under one
transaction-scoped advisory lock, so concurrent submissions cannot slip past a quota together.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from cortex_tasks import app as celery_app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import TrainingMessage
from cortex_tasks.core.queues import TRAINING
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.training import runs
from cortex_tasks.core.training.config import training_config

TRAIN_TASK = task_names.TRAIN_MODEL
QUOTA_LOCK = 0x7C0A7E  # pg_advisory_xact_lock key serialising training submissions
DEADLINE = timedelta(days=2)


class QuotaExceeded(Exception):
    def __init__(self, code: str, message: str, details: dict[str, Any]):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class ControlRefused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class TrainingRequest:
    owner: str
    kind: str
    model: str
    dataset: dict[str, Any]
    params: dict[str, Any]
    priority: int
    trigger: str = "api"


def dataset_description(dataset: dict[str, Any]) -> dict[str, Any]:
    """What the run's config records about the data (not the rows themselves)."""
    if "rows" in dataset:
        return {"source": "inline", "rows": len(dataset["rows"])}
    return {"source": "object", "reference": dataset.get("object") or dataset.get("uri"),
            "format": dataset.get("format")}


def submit_training(request: TrainingRequest, send: bool = True) -> str:
    config = training_config()
    job_id = str(uuid.uuid4())
    epochs = request.params.get("epochs") if isinstance(request.params.get("epochs"), int) else 0
    with session_scope() as session:
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": QUOTA_LOCK})
        owner_active = session.execute(text(
            "SELECT count(*) FROM jobs WHERE kind = 'training' AND owner = :owner "
            "AND status IN ('queued', 'running')"), {"owner": request.owner}).scalar()
        if owner_active >= config.max_concurrent_jobs:
            raise QuotaExceeded("training_quota_exceeded",
                                f"This key already has {owner_active} training jobs queued or running; at most "
                                f"{config.max_concurrent_jobs} are allowed at once. Wait for one to finish, or "
                                "cancel one.", {"active": owner_active, "max_concurrent_jobs": config.max_concurrent_jobs})
        waiting = session.execute(text(
            "SELECT count(*) FROM jobs WHERE kind = 'training' AND status = 'queued'")).scalar()
        if waiting >= config.queue_size:
            raise QuotaExceeded("training_queue_full",
                                f"The training queue is full ({waiting} jobs waiting, at most {config.queue_size}); "
                                "try again later.", {"queued": waiting, "queue_size": config.queue_size})
        session.execute(text(
            "INSERT INTO jobs (id, owner, kind, task, model, status, priority, progress_done, progress_total, "
            "attempts, params, deadline_at) VALUES (:id, :owner, 'training', :kind, :model, 'queued', :priority, "
            "0, :epochs, 0, CAST(:params AS jsonb), :deadline)"
        ), {"id": job_id, "owner": request.owner, "kind": request.kind, "model": request.model,
            "priority": request.priority, "epochs": epochs, "params": json.dumps(request.params),
            "deadline": datetime.now(UTC) + DEADLINE})
        session.execute(text(
            "INSERT INTO training_runs (id, owner, model_name, kind, priority, phase, epochs, config, dataset, "
            "trigger) VALUES (:id, :owner, :model, :kind, :priority, 'queued', :epochs, CAST(:config AS jsonb), "
            "CAST(:dataset AS jsonb), :trigger)"
        ), {"id": job_id, "owner": request.owner, "model": request.model, "kind": request.kind,
            "priority": request.priority, "epochs": epochs, "trigger": request.trigger,
            "config": json.dumps({"kind": request.kind, "params": request.params,
                                  "dataset": dataset_description(request.dataset)}),
            "dataset": json.dumps(request.dataset)})
    if send:
        send_training(job_id, request.priority)
    return job_id


def send_training(job_id: str, priority: int) -> None:
    celery_app.send_task(TRAIN_TASK, kwargs=TrainingMessage(job_id=job_id).to_kwargs(), queue=TRAINING,
                         priority=priority)


def control(job_id: str, action: str) -> dict[str, Any]:
    """Cancel, pause or resume. A running job is asked (its trainer obeys between steps); a queued or
    paused one changes at once."""
    with session_scope() as session:
        job = session.execute(text("SELECT status, priority FROM jobs WHERE id = :id FOR UPDATE"),
                              {"id": job_id}).one()
        status = job.status
        if action == "cancel":
            if status in ("queued", "paused"):
                _set(session, job_id, "cancelled", runs.CANCELLED, finished=True)
                return {"action": action, "status": "cancelled"}
            if status == "running":
                _request(session, job_id, runs.CANCEL)
                return {"action": action, "status": "cancelling"}
        elif action == "pause":
            if status == "queued":
                _set(session, job_id, "paused", runs.PAUSED)
                return {"action": action, "status": "paused"}
            if status == "running":
                _request(session, job_id, runs.PAUSE)
                return {"action": action, "status": "pausing"}
        elif action == "resume":
            if status == "paused":
                # A resumed job starts a fresh delivery count: pausing is not a failed delivery.
                session.execute(text("UPDATE jobs SET status = 'queued', attempts = 0, finished_at = NULL "
                                     "WHERE id = :id"), {"id": job_id})
                session.execute(text("UPDATE training_runs SET phase = 'queued', control = NULL, "
                                     "updated_at = now() WHERE id = :id"), {"id": job_id})
                resumed = True
            else:
                resumed = False
            if resumed:
                priority = job.priority
        else:
            raise ControlRefused("invalid_action", "action is cancel, pause or resume")
    if action == "resume" and resumed:
        send_training(job_id, priority)
        return {"action": action, "status": "queued"}
    raise ControlRefused("invalid_state", f"Cannot {action} a training job that is {status}.")


def _request(session: Any, job_id: str, action: str) -> None:
    session.execute(text("UPDATE training_runs SET control = :action, updated_at = now() WHERE id = :id"),
                    {"id": job_id, "action": action})


def _set(session: Any, job_id: str, job_status: str, phase: str, finished: bool = False) -> None:
    session.execute(text(
        f"UPDATE jobs SET status = :status{', finished_at = now()' if finished else ''} WHERE id = :id"),
        {"id": job_id, "status": job_status})
    session.execute(text(
        f"UPDATE training_runs SET phase = :phase, control = NULL, updated_at = now()"
        f"{', finished_at = now()' if finished else ''} WHERE id = :id"), {"id": job_id, "phase": phase})
