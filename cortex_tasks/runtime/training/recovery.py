"""Training jobs the stale-job sweep can help.

A training message whose worker died is redelivered by the broker, and the run resumes from its last
checkpoint. Only a run that has shown no sign of life for longer than the task's hard time limit is
re-enqueued here (its worker is surely gone, so two copies cannot train at once); a queued job is never
re-sent, because its message may simply be waiting for a slot. Runs of jobs that the sweep failed are
marked failed too.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, or_, update

from cortex_tasks.core.jobs.store import FAILED, QUEUED, RUNNING
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Job, TrainingRun
from cortex_tasks.core.tenancy import all_tenants
from cortex_tasks.core.training import runs
from cortex_tasks.core.training.submission import send_training
from cortex_tasks.runtime.training.tasks import TRAINING_LIMITS


def requeue_dead_training() -> dict[str, int]:
    dead_after = timedelta(seconds=int(TRAINING_LIMITS["time_limit"]) + 300)
    # The sweep looks after every tenant's training; each job is sent again in its own tenant.
    with all_tenants(), session_scope() as session:
        # UPDATE jobs ... FROM training_runs: the guard and the requeue are one statement.
        dead = session.execute(
            update(Job)
            .where(TrainingRun.id == Job.id, Job.kind == "training", Job.status == RUNNING,
                   TrainingRun.updated_at < func.now() - dead_after,
                   or_(Job.deadline_at.is_(None), Job.deadline_at > func.now()))
            .values(status=QUEUED)
            .returning(Job.id, Job.priority, Job.tenant)
            .execution_options(synchronize_session=False)
        ).all()
        for row in dead:
            session.execute(update(TrainingRun).where(TrainingRun.id == row.id, TrainingRun.tenant == row.tenant)
                            .values(phase=runs.QUEUED, updated_at=func.now())
                            .execution_options(synchronize_session=False))
    for row in dead:
        send_training(row.id, row.priority, row.tenant)
    return {"training_requeued": len(dead)}


def fail_orphaned_runs() -> int:
    """Runs whose job was failed outside the trainer (the sweep's deadline, the delivery cap), of every
    tenant (a run and its job share id and tenant)."""
    with all_tenants(), session_scope() as session:
        return session.execute(
            update(TrainingRun)
            .where(Job.id == TrainingRun.id, Job.tenant == TrainingRun.tenant, Job.status == FAILED, TrainingRun.phase.not_in(runs.FINISHED_PHASES))
            .values(phase=runs.FAILED, finished_at=func.coalesce(TrainingRun.finished_at, func.now()),
                    error=Job.error, updated_at=func.now())
            .execution_options(synchronize_session=False)
        ).rowcount
