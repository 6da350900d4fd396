"""Submitting and steering training jobs (gateway side, torch-free): quotas, the job and run rows,
pause / resume / cancel.

Quotas (`training_endpoints`): an owner may have at most `max_concurrent_jobs` training jobs waiting or
running, and at most `queue_size` training jobs may wait in all. Both counts are taken under one
transaction-scoped advisory lock, so concurrent submissions cannot slip past a quota together.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, insert, select, update

from cortex_tasks import app as celery_app
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import TrainingMessage
from cortex_tasks.core.jobs.store import QUEUED, RUNNING
from cortex_tasks.core.queues import TRAINING
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Job, TrainingRun
from cortex_tasks.core.tenancy import all_tenants, current_tenant
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
    tenant = current_tenant()  # Core inserts below: the storage layer stamps ORM rows only
    with session_scope() as session:
        session.execute(select(func.pg_advisory_xact_lock(QUOTA_LOCK)))
        training_jobs = select(func.count()).select_from(Job).where(Job.kind == "training")
        owner_active = session.execute(
            training_jobs.where(Job.owner == request.owner, Job.status.in_((QUEUED, RUNNING)))).scalar()
        if owner_active >= config.max_concurrent_jobs:
            raise QuotaExceeded("training_quota_exceeded",
                                f"This key already has {owner_active} training jobs queued or running; at most "
                                f"{config.max_concurrent_jobs} are allowed at once. Wait for one to finish, or "
                                "cancel one.", {"active": owner_active, "max_concurrent_jobs": config.max_concurrent_jobs})
        # The training queue is the platform's, shared by every tenant: its length counts all of them.
        with all_tenants():
            waiting = session.execute(training_jobs.where(Job.status == QUEUED)).scalar()
        if waiting >= config.queue_size:
            raise QuotaExceeded("training_queue_full",
                                f"The training queue is full ({waiting} jobs waiting, at most {config.queue_size}); "
                                "try again later.", {"queued": waiting, "queue_size": config.queue_size})
        # Columns left out take the tables' defaults, which are the database's own (0, '[]').
        session.execute(insert(Job).values(
            id=job_id, owner=request.owner, kind="training", task=request.kind, model=request.model,
            status=QUEUED, priority=request.priority, progress_done=0, progress_total=epochs, attempts=0,
            params=request.params, deadline_at=func.now() + DEADLINE, tenant=tenant))  # the sweep's clock
        session.execute(insert(TrainingRun).values(
            id=job_id, owner=request.owner, model_name=request.model, kind=request.kind,
            priority=request.priority, phase=runs.QUEUED, epochs=epochs, trigger=request.trigger,
            config={"kind": request.kind, "params": request.params,
                    "dataset": dataset_description(request.dataset)},
            dataset=request.dataset, tenant=tenant))
    if send:
        send_training(job_id, request.priority, tenant)
    return job_id


def send_training(job_id: str, priority: int, tenant: str) -> None:
    """The training task runs in the job's tenant: the version it registers is that tenant's."""
    celery_app.send_task(TRAIN_TASK, kwargs=TrainingMessage(job_id=job_id, tenant=tenant).to_kwargs(),
                         queue=TRAINING, priority=priority)


def control(job_id: str, action: str) -> dict[str, Any]:
    """Cancel, pause or resume. A running job is asked (its trainer obeys between steps); a queued or
    paused one changes at once."""
    with session_scope() as session:
        job = session.execute(select(Job.status, Job.priority).where(Job.id == job_id).with_for_update()).one()
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
                session.execute(update(Job).where(Job.id == job_id)
                                .values(status=QUEUED, attempts=0, finished_at=None)
                                .execution_options(synchronize_session=False))
                session.execute(update(TrainingRun).where(TrainingRun.id == job_id)
                                .values(phase=runs.QUEUED, control=None, updated_at=func.now())
                                .execution_options(synchronize_session=False))
                resumed = True
            else:
                resumed = False
            if resumed:
                priority = job.priority
        else:
            raise ControlRefused("invalid_action", "action is cancel, pause or resume")
    if action == "resume" and resumed:
        send_training(job_id, priority, current_tenant())
        return {"action": action, "status": "queued"}
    raise ControlRefused("invalid_state", f"Cannot {action} a training job that is {status}.")


def _request(session: Any, job_id: str, action: str) -> None:
    session.execute(update(TrainingRun).where(TrainingRun.id == job_id)
                    .values(control=action, updated_at=func.now()).execution_options(synchronize_session=False))


def _set(session: Any, job_id: str, job_status: str, phase: str, finished: bool = False) -> None:
    finished_at = {"finished_at": func.now()} if finished else {}
    session.execute(update(Job).where(Job.id == job_id).values(status=job_status, **finished_at)
                    .execution_options(synchronize_session=False))
    session.execute(update(TrainingRun).where(TrainingRun.id == job_id)
                    .values(phase=phase, control=None, updated_at=func.now(), **finished_at)
                    .execution_options(synchronize_session=False))
