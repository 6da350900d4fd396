"""Training jobs the stale-job sweep can help.

A training message whose worker died is redelivered by the broker, and the run resumes from its last
checkpoint. Only a run that has shown no sign of life for longer than the task's hard time limit is
re-enqueued here (its worker is surely gone, so two copies cannot train at once); a queued job is never
re-sent, because its message may simply be waiting for a slot. Runs of jobs that the sweep failed are
marked failed too.
"""
from __future__ import annotations

from sqlalchemy import text

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.training.submission import send_training
from cortex_tasks.runtime.training.tasks import TRAINING_LIMITS


def requeue_dead_training() -> dict[str, int]:
    dead_after = int(TRAINING_LIMITS["time_limit"]) + 300
    with session_scope() as session:
        dead = session.execute(text(
            "UPDATE jobs j SET status = 'queued' FROM training_runs r WHERE r.id = j.id AND j.kind = 'training' "
            "AND j.status = 'running' AND r.updated_at < now() - make_interval(secs => :dead) "
            "AND (j.deadline_at IS NULL OR j.deadline_at > now()) RETURNING j.id, j.priority"),
            {"dead": dead_after}).all()
        for row in dead:
            session.execute(text("UPDATE training_runs SET phase = 'queued', updated_at = now() WHERE id = :id"),
                            {"id": row.id})
    for row in dead:
        send_training(row.id, row.priority)
    return {"training_requeued": len(dead)}


def fail_orphaned_runs() -> int:
    """Runs whose job was failed outside the trainer (the sweep's deadline, the delivery cap)."""
    with session_scope() as session:
        return session.execute(text(
            "UPDATE training_runs r SET phase = 'failed', finished_at = coalesce(r.finished_at, now()), "
            "error = j.error, updated_at = now() FROM jobs j WHERE j.id = r.id AND j.status = 'failed' "
            "AND r.phase NOT IN ('failed', 'succeeded', 'cancelled')")).rowcount
