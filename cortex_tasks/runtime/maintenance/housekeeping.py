"""Periodic housekeeping beyond the job table: result and media expiry, metric roll-ups, cache warming."""
from __future__ import annotations

import logging
import shutil
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import DateTime, extract, func, literal, literal_column, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cortex_tasks.core.auth.keys import tenant_ids
from cortex_tasks.core.batch.results import delete_results
from cortex_tasks.core.cache import warming
from cortex_tasks.core.jobs.store import FAILED, FINISHED_STATES, SUCCEEDED
from cortex_tasks.core.media_files import DAY, GENERATED_KIND, MEDIA_NAME, STAGED_KINDS, media_prefix
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.object_store import ObjectNotFound, get_object_store
from cortex_tasks.core.storage.tables import BatchChunk, Job, JobMetricsHourly, TrainingRun
from cortex_tasks.core.tenancy import all_tenants
from cortex_tasks.core.training.runs import FINISHED_PHASES

log = logging.getLogger(__name__)

# Merged into an expired batch's result: what a reader of the job sees instead of its results.
_EXPIRED = {"expired": True, "result_ref": None}


def expire_results(batch_retention_days: int, checkpoint_retention_days: int = 1) -> dict[str, int]:
    """Delete batch result objects and training checkpoints past their retention; the job rows stay
    (with `result.expired`) until the job-record expiry removes them."""
    # Retention is the platform's rule, applied to every tenant's results.
    with all_tenants():
        return _expire_results(batch_retention_days, checkpoint_retention_days)


def expire_media(staged_retention_days: float, generated_retention_days: float) -> dict[str, int]:
    """Delete every tenant's staged inputs and generated images past their retention (core/media_files.py)."""
    store = get_object_store()
    now = time.time()
    deleted = {"staged_deleted": 0, "generated_deleted": 0}
    for tenant in tenant_ids():
        for kind in (*STAGED_KINDS, GENERATED_KIND):
            staged = kind in STAGED_KINDS
            cutoff = now - (staged_retention_days if staged else generated_retention_days) * DAY
            for name in store.modified_before(media_prefix(tenant, kind), cutoff):
                if MEDIA_NAME.match(name) and store.delete(name):
                    deleted["staged_deleted" if staged else "generated_deleted"] += 1
    return deleted


def _expire_results(batch_retention_days: int, checkpoint_retention_days: int) -> dict[str, int]:
    chunk_results = select(1).where(BatchChunk.job_id == Job.id, BatchChunk.result_ref.is_not(None)).exists()
    with session_scope() as session:
        batches = session.execute(
            select(Job.id)
            .where(Job.kind == "batch", Job.status.in_(FINISHED_STATES),
                   Job.finished_at < func.now() - timedelta(days=batch_retention_days),
                   or_(Job.result_ref.is_not(None), chunk_results))
            .limit(500)).scalars().all()
        checkpoints = session.execute(
            select(TrainingRun.id, TrainingRun.checkpoint_ref)
            .where(TrainingRun.checkpoint_ref.is_not(None), TrainingRun.phase.in_(FINISHED_PHASES),
                   TrainingRun.finished_at < func.now() - timedelta(days=checkpoint_retention_days))
            .limit(500)).all()
    objects = 0
    for job_id in batches:
        objects += delete_results(job_id)
        with session_scope() as session:
            session.execute(update(BatchChunk).where(BatchChunk.job_id == job_id).values(result_ref=None)
                            .execution_options(synchronize_session=False))
            session.execute(
                update(Job).where(Job.id == job_id)
                .values(result_ref=None,
                        result=func.coalesce(Job.result, literal({}, JSONB))
                        .op("||", return_type=JSONB)(literal(_EXPIRED, JSONB)))
                .execution_options(synchronize_session=False))
    store = get_object_store()
    for run_id, ref in checkpoints:
        try:
            objects += store.delete(ref)
        except ObjectNotFound:
            pass
        with session_scope() as session:
            session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(checkpoint_ref=None)
                            .execution_options(synchronize_session=False))
        shutil.rmtree(get_settings().data_dir / "training-work" / run_id, ignore_errors=True)
    return {"batches_expired": len(batches), "checkpoints_deleted": len(checkpoints), "objects_deleted": objects}


def _milliseconds(interval: Any) -> Any:
    return extract("epoch", interval) * 1000


def roll_up_metrics(hours: int = 2) -> dict[str, int]:
    """Hourly counts and latency percentiles of finished jobs per kind, task and model, for the current
    and the previous hours (recomputed each time, so late finishers are counted and reruns are harmless)."""
    # The roll-up is the operators' view of the platform: every tenant's jobs are counted together.
    with all_tenants():
        return _roll_up_metrics(hours)


def _roll_up_metrics(hours: int) -> dict[str, int]:
    # Constants inline, not bound: GROUP BY must repeat the selected expressions exactly.
    hour = func.date_trunc(literal_column("'hour'"), Job.finished_at, type_=DateTime(timezone=True))
    model = func.coalesce(Job.model, literal_column("''"))
    run_ms = _milliseconds(Job.finished_at - Job.started_at)
    rows = (
        select(hour, Job.kind, Job.task, model, func.count(),
               func.count().filter(Job.status == SUCCEEDED), func.count().filter(Job.status == FAILED),
               func.coalesce(func.sum(Job.progress_total), 0),
               func.percentile_cont(0.5).within_group(_milliseconds(Job.started_at - Job.created_at)),
               func.percentile_cont(0.5).within_group(run_ms),
               func.percentile_cont(0.95).within_group(run_ms),
               func.now())
        .where(Job.finished_at >= func.date_trunc("hour", func.now(), type_=DateTime(timezone=True))
               - timedelta(hours=max(0, hours - 1)))
        .group_by(hour, Job.kind, Job.task, model)
    )
    insert = pg_insert(JobMetricsHourly).from_select(
        ["hour", "kind", "task", "model", "jobs", "succeeded", "failed", "items",
         "queue_ms_p50", "run_ms_p50", "run_ms_p95", "updated_at"], rows)
    recomputed = ("jobs", "succeeded", "failed", "items", "queue_ms_p50", "run_ms_p50", "run_ms_p95")
    upsert = insert.on_conflict_do_update(
        index_elements=["hour", "kind", "task", "model"],
        set_={**{name: insert.excluded[name] for name in recomputed}, "updated_at": func.now()})
    with session_scope() as session:
        # An INSERT's rowcount is kept only when asked for (a text() statement's always was); on the
        # session's connection, so the ORM's bulk-insert path does not handle it.
        written = session.connection().execute(upsert.execution_options(preserve_rowcount=True)).rowcount
    return {"rows_written": written}


def warm_cache() -> dict[str, Any]:
    """Cache warming (Beat runs it every 30 minutes)."""
    # The query counts are the platform's; the warming jobs it starts name their own (default) tenant.
    with all_tenants():
        return warming.warm_cache()
