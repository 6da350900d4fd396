"""Running a training job in the training worker: take a slot, validate the data, train with pause and
cancel honoured, evaluate, register a `staging` version, and promote it to canary if it passes the
evaluation gate. Every step is recorded on the run (experiment tracking)."""
from __future__ import annotations

import importlib
import logging
import math
import shutil
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, cast, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by

from cortex_tasks.core.jobs import store
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.observability import tracing
from cortex_tasks.core.registry import readiness
from cortex_tasks.core.registry import service as registry
from cortex_tasks.core.retry_policy import TRANSIENT_ERRORS, current_retries
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Job, TrainingRun
from cortex_tasks.core.training import runs
from cortex_tasks.core.training.config import training_config
from cortex_tasks.core.training.datasets import load_rows
from cortex_tasks.core.training.kinds import KINDS, TrainingKind
from cortex_tasks.core.training.outcome import TrainedModel
from cortex_tasks.runtime.training.context import Cancelled, Paused, TrainingContext

log = logging.getLogger(__name__)
SLOT_LOCK = 0x7C0A7F


class NoSlot(Exception):
    """Every training slot is taken, or this model is already being trained: try again later."""


def claim_slot(job_id: str, model_name: str) -> str:
    """At most `max_concurrent_jobs` runs train at once, and one run per model (a singleton: two runs of
    one model would race to register versions from different data). Counted in the database under an
    advisory lock, so the limit holds across workers, and a run whose worker died frees its slot when
    its job is redelivered (same job id) or failed by the stale-job sweep."""
    limit = training_config().max_concurrent_jobs
    with session_scope() as session:
        session.execute(select(func.pg_advisory_xact_lock(SLOT_LOCK)))
        # Rows are locked job first, then run, everywhere (see submission.control): the other order
        # deadlocked with a cancel arriving as the run started.
        session.execute(select(1).select_from(Job).where(Job.id == job_id).with_for_update())
        active = session.execute(
            select(TrainingRun.model_name).join(Job, Job.id == TrainingRun.id)
            .where(Job.status == store.RUNNING, TrainingRun.phase.in_(runs.ACTIVE_PHASES), TrainingRun.id != job_id)
        ).scalars().all()
        if len(active) >= limit or model_name in active:
            return "busy"
        claimed = session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == job_id, TrainingRun.phase.in_((runs.QUEUED, *runs.ACTIVE_PHASES)))
            .values(phase="validating", control=None, started_at=func.coalesce(TrainingRun.started_at, func.now()),
                    updated_at=func.now())
            .returning(TrainingRun.id)
            .execution_options(synchronize_session=False)
        ).scalar()
        if claimed is None:
            return "gone"  # paused, cancelled or finished meanwhile
        # Epochs recorded after the checkpoint are trained again (a worker died mid-run): drop them.
        checkpoint_epoch = func.coalesce(TrainingRun.checkpoint_epoch, 0)
        entry = func.jsonb_array_elements(TrainingRun.history, type_=JSONB).column_valued("e")
        entry_epoch = cast(entry["epoch"].astext, Integer)
        kept = (select(func.coalesce(func.jsonb_agg(aggregate_order_by(entry, entry_epoch)), literal([], JSONB)))
                .where(entry_epoch <= checkpoint_epoch).scalar_subquery())
        session.execute(update(TrainingRun).where(TrainingRun.id == job_id)
                        .values(history=kept, epoch=checkpoint_epoch)
                        .execution_options(synchronize_session=False))
        session.execute(update(Job).where(Job.id == job_id, Job.status == store.QUEUED)
                        .values(status=store.RUNNING, started_at=func.coalesce(Job.started_at, func.now()))
                        .execution_options(synchronize_session=False))
    return "claimed"


def trainer_module(kind: TrainingKind) -> Any:
    return importlib.import_module(kind.trainer)


@dataclass(frozen=True)
class Gate:
    metric: str
    threshold: float
    higher_is_better: bool

    def passes(self, metrics: dict[str, Any]) -> bool | None:
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return None
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "min" if self.higher_is_better else "max": self.threshold}


def gate_of(kind: TrainingKind, params: dict[str, Any]) -> Gate | None:
    """params.gate = {"metric": "macro_f1", "min": 0.9} (or "max" for errors); params.auto_promote=false
    registers without promoting. The default gate is the kind's primary metric against the configured
    threshold (the evaluation gate's minimum confidence)."""
    config = training_config()
    if params.get("auto_promote") is False or (not config.gate_enabled and "gate" not in params):
        return None
    spec = params.get("gate")
    if isinstance(spec, dict) and isinstance(spec.get("metric"), str):
        if isinstance(spec.get("min"), (int, float)):
            return Gate(spec["metric"], float(spec["min"]), True)
        if isinstance(spec.get("max"), (int, float)):
            return Gate(spec["metric"], float(spec["max"]), False)
        raise JobInputError("invalid_params", 'params.gate is {"metric": name, "min": x} or {"metric": name, "max": x}')
    if spec is not None:
        raise JobInputError("invalid_params", 'params.gate is {"metric": name, "min": x} or {"metric": name, "max": x}')
    if not kind.higher_is_better:
        return None  # an error metric has no universal threshold: give params.gate to promote automatically
    return Gate(kind.primary_metric, config.gate_threshold, True)


def register(run: Any, kind: TrainingKind, trained: TrainedModel, fingerprint: str,
             validation: dict[str, Any]) -> registry.VersionRecord:
    return registry.register_version(
        run.model_name, task=kind.task, framework=trained.framework, artifact=trained.artifact,
        artifact_filename=trained.artifact_filename, metrics=trained.metrics,
        parameters={**trained.parameters, "training_kind": kind.name, "training_run": run.id,
                    "training_rows": validation.get("rows"), "validation_warnings": validation.get("warnings", [])},
        data_fingerprint=fingerprint, created_by=run.owner, description=trained.description or kind.description)


def promote_to_canary(record: registry.VersionRecord, job_id: str) -> dict[str, Any]:
    """Blue-green, as a promotion through the API: pending deployment, readiness check, switch."""
    deployment = registry.request_promotion(record.model, record.version, registry.CANARY,
                                            actor=f"training:{job_id}", job_id=job_id)
    try:
        check = readiness.check_ready(record)
    except Exception as exc:  # noqa: BLE001 (any failure of the check means: not ready, stay in staging)
        registry.fail_deployment(deployment["id"], {"code": "readiness_check_failed", "message": str(exc)}, job_id)
        return {"promoted": False, "reason": f"readiness check failed: {exc}"}
    switched = registry.complete_deployment(deployment["id"], job_id)
    return {"promoted": True, "stage": switched.stage, "traffic_percent": switched.traffic_percent,
            "deployment_id": deployment["id"], "readiness": check}


def run_training(job_id: str) -> dict[str, Any]:
    """Returns the job outcome; raises NoSlot when the job must wait for a slot."""
    run, job = runs.get_run(job_id), store.get_job(job_id)
    if run is None or job is None or job.status not in (store.QUEUED, store.RUNNING):
        return {"job_id": job_id, "skipped": True, "status": getattr(job, "status", None)}
    kind = KINDS.get(run.kind)
    if kind is None:
        store.fail_job(job_id, {"code": "unknown_kind", "message": f"unknown training kind {run.kind!r}"})
        return {"job_id": job_id, "status": "failed"}
    slot = claim_slot(job_id, run.model_name)
    if slot == "busy":
        raise NoSlot()
    if slot == "gone":
        return {"job_id": job_id, "skipped": True}
    # The task's own retries (a transient error) are not a worker's death: they do not count against the cap.
    attempt = store.begin_attempt(job_id, get_settings().max_deliveries + current_retries())
    if attempt is None:
        job = store.get_job(job_id)
        runs.update_run(job_id, phase=runs.FAILED, finished_at="now()", error=job.error if job else None)
        return {"job_id": job_id, "status": getattr(job, "status", "failed")}
    run = runs.get_run(job_id)
    context = TrainingContext(job_id, run.epochs, run.checkpoint_ref, run.checkpoint_epoch)
    try:
        return _train(run, kind, context)
    except TRANSIENT_ERRORS:
        raise
    except Paused as paused:
        with session_scope() as session:
            if session.execute(update(Job).where(Job.id == job_id, Job.status == store.RUNNING)
                               .values(status=runs.PAUSED).execution_options(synchronize_session=False)).rowcount:
                store.record_worker_time(session, job_id, context.worker_time(kind.name))
        runs.update_run(job_id, phase=runs.PAUSED, control=None, resources=context.resources())
        return {"job_id": job_id, "status": "paused", "checkpoint_epoch": paused.epoch}
    except Cancelled:
        with session_scope() as session:
            if session.execute(update(Job).where(Job.id == job_id, Job.status == store.RUNNING)
                               .values(status=store.CANCELLED, finished_at=func.now())
                               .execution_options(synchronize_session=False)).rowcount:
                store.record_worker_time(session, job_id, context.worker_time(kind.name))
        runs.update_run(job_id, phase=runs.CANCELLED, control=None, finished_at="now()",
                        resources=context.resources())
        return {"job_id": job_id, "status": "cancelled"}
    except (JobInputError, registry.RegistryError) as exc:
        error = {"code": exc.code, "message": str(exc), "details": getattr(exc, "details", {})}
        store.fail_job(job_id, error, context.worker_time(kind.name))
        runs.update_run(job_id, phase=runs.FAILED, finished_at="now()", error=error, resources=context.resources())
        return {"job_id": job_id, "status": "failed", "error": error}
    except Exception as exc:
        log.exception("training job %s failed", job_id)
        error = {"code": "training_failed", "message": f"{type(exc).__name__}: {exc}"}
        store.fail_job(job_id, error, context.worker_time(kind.name))
        runs.update_run(job_id, phase=runs.FAILED, finished_at="now()", error=error, resources=context.resources())
        return {"job_id": job_id, "status": "failed", "error": error}


def _train(run: Any, kind: TrainingKind, context: TrainingContext) -> dict[str, Any]:
    params = (run.config or {}).get("params") or {}
    trainer = trainer_module(kind)
    gate = gate_of(kind, params)  # bad gate params fail the job before any training
    context.phase("validating")
    rows = load_rows(run.dataset or {})
    context.rows = len(rows)
    report, examples = trainer.validate(rows, params)
    fingerprint = registry.fingerprint_rows(rows)
    runs.update_run(run.id, validation=report.as_dict(), data_fingerprint=fingerprint[:64])
    report.raise_if_invalid()
    context.obey(0, None)
    with tracing.span("cortex.trainer.fit", job_id=run.id, kind=kind.name, model=run.model_name):
        trained: TrainedModel = trainer.train(context, examples, params)
    context.flush()
    context.phase("registering", metrics=trained.metrics)
    try:
        with tracing.span("cortex.trainer.register", job_id=run.id):
            record = register(run, kind, trained, fingerprint, report.as_dict())
    finally:
        if trained.extra.get("cleanup"):
            shutil.rmtree(trained.extra["cleanup"], ignore_errors=True)
    stage, gate_result = record.stage, None
    if gate is not None:
        passed = gate.passes(trained.metrics)
        gate_result = {**gate.as_dict(), "value": trained.metrics.get(gate.metric), "passed": bool(passed)}
        if passed:
            gate_result.update(promote_to_canary(record, run.id))
            stage = gate_result.get("stage", stage)
    result = {"model": record.model, "version": record.version, "reference": record.reference, "stage": stage,
              "task": kind.task, "framework": trained.framework, "metrics": trained.metrics,
              "data_fingerprint": fingerprint, "gate": gate_result}
    resources = context.resources()
    runs.update_run(run.id, phase=runs.SUCCEEDED, registered_version=record.version, stage=stage,
                    resources=resources, finished_at="now()")
    store.finish_job(run.id, result, usage=context.worker_time(kind.name))
    return {"job_id": run.id, "status": "succeeded", "result": result}
