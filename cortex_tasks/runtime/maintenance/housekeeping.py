"""Periodic housekeeping beyond the job table: result expiry, metric roll-ups, cache warming."""
from __future__ import annotations

import logging
import shutil
from typing import Any

from sqlalchemy import text

from cortex_tasks.core.batch.results import delete_results
from cortex_tasks.core.cache import warming
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.object_store import ObjectNotFound, get_object_store

log = logging.getLogger(__name__)


def expire_results(batch_retention_days: int, checkpoint_retention_days: int = 1) -> dict[str, int]:
    """Delete batch result objects and training checkpoints past their retention; the job rows stay
    (with `result.expired`) until the job-record expiry removes them."""
    with session_scope() as session:
        batches = session.execute(text(
            "SELECT id FROM jobs WHERE kind = 'batch' AND status IN ('succeeded', 'failed', 'cancelled') "
            "AND finished_at < now() - make_interval(days => :days) "
            "AND (result_ref IS NOT NULL OR EXISTS (SELECT 1 FROM batch_chunks c WHERE c.job_id = jobs.id "
            "AND c.result_ref IS NOT NULL)) LIMIT 500"), {"days": batch_retention_days}).scalars().all()
        checkpoints = session.execute(text(
            "SELECT id, checkpoint_ref FROM training_runs WHERE checkpoint_ref IS NOT NULL "
            "AND phase IN ('succeeded', 'failed', 'cancelled') "
            "AND finished_at < now() - make_interval(days => :days) LIMIT 500"),
            {"days": checkpoint_retention_days}).all()
    objects = 0
    for job_id in batches:
        objects += delete_results(job_id)
        with session_scope() as session:
            session.execute(text("UPDATE batch_chunks SET result_ref = NULL WHERE job_id = :id"), {"id": job_id})
            session.execute(text(
                "UPDATE jobs SET result_ref = NULL, result = coalesce(result, '{}'::jsonb) || "
                "jsonb_build_object('expired', true, 'result_ref', NULL) WHERE id = :id"), {"id": job_id})
    store = get_object_store()
    for run_id, ref in checkpoints:
        try:
            objects += store.delete(ref)
        except ObjectNotFound:
            pass
        with session_scope() as session:
            session.execute(text("UPDATE training_runs SET checkpoint_ref = NULL WHERE id = :id"), {"id": run_id})
        shutil.rmtree(get_settings().data_dir / "training-work" / run_id, ignore_errors=True)
    return {"batches_expired": len(batches), "checkpoints_deleted": len(checkpoints), "objects_deleted": objects}


def roll_up_metrics(hours: int = 2) -> dict[str, int]:
    """Hourly counts and latency percentiles of finished jobs per kind, task and model, for the current
    and the previous hours (recomputed each time, so late finishers are counted and reruns are harmless)."""
    with session_scope() as session:
        written = session.execute(text(
            "INSERT INTO job_metrics_hourly (hour, kind, task, model, jobs, succeeded, failed, items, "
            "queue_ms_p50, run_ms_p50, run_ms_p95, updated_at) "
            "SELECT date_trunc('hour', finished_at), kind, task, coalesce(model, ''), count(*), "
            "count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'), "
            "coalesce(sum(progress_total), 0), "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at) * 1000), "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at) * 1000), "
            "now() FROM jobs WHERE finished_at >= date_trunc('hour', now()) - make_interval(hours => :hours) "
            "GROUP BY 1, 2, 3, 4 "
            "ON CONFLICT (hour, kind, task, model) DO UPDATE SET jobs = excluded.jobs, "
            "succeeded = excluded.succeeded, failed = excluded.failed, items = excluded.items, "
            "queue_ms_p50 = excluded.queue_ms_p50, run_ms_p50 = excluded.run_ms_p50, "
            "run_ms_p95 = excluded.run_ms_p95, updated_at = now()"), {"hours": max(0, hours - 1)}).rowcount
    return {"rows_written": written}


def warm_cache() -> dict[str, Any]:
    """Cache warming (Beat runs it every 30 minutes)."""
    return warming.warm_cache()
