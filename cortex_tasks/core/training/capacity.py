"""How loaded training is: training jobs waiting and paused, and the runs in progress."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Job, TrainingRun

WAITING_OR_RUNNING = ("queued", "running", "paused")


@dataclass(frozen=True)
class TrainingLoad:
    jobs_by_status: dict[str, int]  # queued, running and paused training jobs
    running: list[TrainingRun]  # the runs whose job is running, the longest-running first


def training_load() -> TrainingLoad:
    with session_scope() as session:
        counts = session.execute(
            select(Job.status, func.count())
            .where(Job.kind == "training", Job.status.in_(WAITING_OR_RUNNING))
            .group_by(Job.status)).all()
        running = session.scalars(
            select(TrainingRun).join(Job, Job.id == TrainingRun.id)
            .where(Job.status == "running").order_by(TrainingRun.started_at)).all()
    return TrainingLoad({status: count for status, count in counts}, list(running))
