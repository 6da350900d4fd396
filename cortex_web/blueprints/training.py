"""Training jobs over HTTP: submit (with quotas), status (phase, epoch, metrics so far), control (cancel,
pause, resume), resources (queue, running jobs, capacity, CPU/GPU/memory), and the runs of a model
(experiment tracking: config, data fingerprint, metrics per epoch, resource use, compared)."""
from __future__ import annotations

import os
from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request, url_for
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import text

from cortex_tasks.core.auth.roles import READ, TRAIN
from cortex_tasks.core.queues import TRAINING, priority_of
from cortex_tasks.core.registry.service import check_model_name
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.training import runs
from cortex_tasks.core.training.config import training_config
from cortex_tasks.core.training.kinds import KINDS, kind_names
from cortex_tasks.core.training.schedules import InvalidSchedule, parse_cron, save_schedule
from cortex_tasks.core.training.submission import (
    ControlRefused,
    QuotaExceeded,
    TrainingRequest,
    control,
    submit_training,
)
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.blueprints.jobs import visible_job
from cortex_web.dispatch import queue_depths, redis_client
from cortex_web.errors import ApiError
from cortex_web.limits import limit_work
from cortex_web.request_body import parse_body

bp = Blueprint("training", __name__, url_prefix="/api/v1")

MAX_TRAINING_BODY_BYTES = 24 * 1024 * 1024


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    cron: str | None = Field(default=None, max_length=64)
    metric: str | None = Field(default=None, max_length=64)
    threshold: float | None = None

    @field_validator("threshold", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number")  # noqa: TRY004 (pydantic reports ValueErrors)
        return float(value) if isinstance(value, int) else value


class TrainingSubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: str = Field(min_length=1, max_length=32)
    model: str = Field(min_length=1, max_length=128)
    # {"rows": [...]} inline, or {"object": "datasets/x.jsonl"} / {"uri": "s3://bucket/x.parquet"} (+ "format")
    dataset: dict[str, Any]
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["high", "normal", "low"] = "normal"
    # Retrain this model later with the same data and params: on a cron, and/or when a metric drops.
    schedule: ScheduleSpec | None = None


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    action: Literal["cancel", "pause", "resume"]


REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/api/v1/training/submit"): TrainingSubmitRequest,
    ("post", "/api/v1/training/control/{job_id}"): ControlRequest,
}


def _check_dataset(dataset: dict[str, Any]) -> None:
    sources = [key for key in ("rows", "object", "uri") if key in dataset]
    if len(sources) != 1:
        raise ApiError(422, "invalid_dataset", "dataset needs exactly one of 'rows' (inline), 'object' (a name "
                                               "in the object store) or 'uri' (s3://... or file://...).")
    if "rows" in dataset:
        if not isinstance(dataset["rows"], list) or not dataset["rows"]:
            raise ApiError(422, "invalid_dataset", "dataset.rows must be a non-empty list of rows.")
        if len(dataset["rows"]) > training_config().max_rows:
            raise ApiError(422, "invalid_dataset", f"at most {training_config().max_rows} rows inline.")
    elif not isinstance(dataset[sources[0]], str) or not dataset[sources[0]]:
        raise ApiError(422, "invalid_dataset", f"dataset.{sources[0]} must be a non-empty string.")
    unknown = set(dataset) - {"rows", "object", "uri", "format"}
    if unknown:
        raise ApiError(422, "invalid_dataset", f"unknown dataset field(s) {sorted(unknown)}")


def _check_registered_task(model: str, task: str) -> None:
    with session_scope() as session:
        existing = session.execute(text("SELECT task FROM registry_models WHERE name = :name"),
                                   {"name": model}).scalar()
    if existing is not None and existing != task:
        raise ApiError(409, "task_mismatch", f"Model {model!r} is registered for task {existing!r}; this training "
                                             f"kind produces a {task!r} model. Choose another name.")


@bp.post("/training/submit")
@require(TRAIN)
@limit_work
@audited("training.submit")
def submit() -> tuple[Response, int]:
    """Submit a training job; over the quota it is refused with 429."""
    request.max_content_length = MAX_TRAINING_BODY_BYTES
    body = parse_body(TrainingSubmitRequest, get_settings().max_json_depth)
    kind = KINDS.get(body.kind)
    if kind is None:
        raise ApiError(422, "unknown_kind", f"Unknown training kind {body.kind!r}.", {"valid": kind_names()})
    check_model_name(body.model)  # a RegistryError: 422 invalid_model_name
    _check_dataset(body.dataset)
    _check_registered_task(body.model, kind.task)
    owner = current_principal().key_id
    if body.schedule is not None:
        spec = body.schedule
        if not spec.cron and not spec.metric:
            raise ApiError(422, "invalid_schedule", "schedule needs a cron expression, a metric with a threshold, "
                                                    "or both.")
        if spec.metric and spec.threshold is None:
            raise ApiError(422, "invalid_schedule", "schedule.metric needs schedule.threshold.")
        try:
            if spec.cron:
                parse_cron(spec.cron)
        except InvalidSchedule as exc:
            raise ApiError(422, "invalid_schedule", str(exc)) from None
    try:
        job_id = submit_training(TrainingRequest(owner=owner, kind=kind.name, model=body.model, dataset=body.dataset,
                                                 params=body.params, priority=priority_of(body.priority)))
    except QuotaExceeded as exc:
        raise ApiError(429, exc.code, exc.message, exc.details, headers={"Retry-After": "30"}) from None
    if body.schedule is not None:
        save_schedule(body.model, owner, kind.name, body.dataset, body.params, body.schedule.cron,
                      body.schedule.metric, body.schedule.threshold)
    return jsonify({"job_id": job_id, "status": "queued", "kind": kind.name, "model": body.model,
                    "status_url": url_for("training.status", job_id=job_id),
                    "control_url": url_for("training.control_job", job_id=job_id)}), 202


def training_job(job_id: str):
    job = visible_job(job_id)
    if job.kind != "training":
        raise ApiError(404, "job_not_found", f"Job {job_id!r} is not a training job.")
    return job


@bp.get("/training/status/<job_id>")
@require(READ)
def status(job_id: str) -> Response:
    """Phase, epoch, metrics so far (per epoch), checkpoint, and the registered version when done."""
    job = training_job(job_id)
    run = runs.get_run(job_id)
    body: dict[str, Any] = {"job_id": job.id, "status": job.status,
                            "progress": {"done": job.progress_done, "total": job.progress_total}}
    if run is not None:
        body.update({key: value for key, value in runs.run_to_api(run).items() if key not in ("job_id",)})
        body["metrics_so_far"] = run.history[-1] if run.history else None
    if job.result is not None:
        body["result"] = job.result
    if job.error:
        body["error"] = job.error
    return jsonify(body)


@bp.post("/training/control/<job_id>")
@require(TRAIN)
@audited("training.control")
def control_job(job_id: str) -> tuple[Response, int]:
    """Cancel, pause (checkpoint) or resume (from the checkpoint) a training job."""
    body = parse_body(ControlRequest, get_settings().max_json_depth)
    job = training_job(job_id)
    try:
        answer = control(job.id, body.action)
    except ControlRefused as exc:
        raise ApiError(409, exc.code, exc.message, {"status": job.status}) from None
    return jsonify({"job_id": job.id, **answer, "status_url": url_for("training.status", job_id=job.id)}), 202


def _memory() -> dict[str, Any]:
    try:
        fields = {}
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0]) // 1024
        total, available = fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
        return {"total_mb": total, "available_mb": available,
                "used_percent": round(100 * (total - available) / total, 1) if total else None}
    except (OSError, KeyError, ValueError):
        return {}


@bp.get("/training/resources")
@require(READ)
def resources() -> Response:
    """Queue depth, running jobs, concurrency and capacity, and CPU / GPU / memory use."""
    from cortex_web.blueprints.health import ready_workers

    config = training_config()
    with session_scope() as session:
        counts = dict(session.execute(text(
            "SELECT status, count(*) FROM jobs WHERE kind = 'training' AND status IN ('queued', 'running', 'paused') "
            "GROUP BY status")).all())
        running = session.execute(text(
            "SELECT r.id, r.model_name, r.kind, r.phase, r.epoch, r.epochs, r.owner, r.resources, r.started_at "
            "FROM training_runs r JOIN jobs j ON j.id = r.id WHERE j.status = 'running' ORDER BY r.started_at")).all()
    principal = current_principal()
    from cortex_web.auth import is_admin

    workers = [worker for worker in ready_workers() if TRAINING in worker.get("queues", [])]
    gpu_reports = [row.resources for row in running if (row.resources or {}).get("device") == "cuda"]
    load1, load5, load15 = os.getloadavg()
    return jsonify({
        "queue": {"name": TRAINING, "depth": queue_depths(redis_client()).get(TRAINING, 0),
                  "queued_jobs": counts.get("queued", 0), "paused_jobs": counts.get("paused", 0),
                  "queue_size": config.queue_size},
        "concurrency": {"max_concurrent_jobs": config.max_concurrent_jobs, "running": len(running),
                        "available": max(0, config.max_concurrent_jobs - len(running)),
                        "priority_levels": config.priority_levels, "workers": len(workers),
                        "worker_hosts": [worker.get("hostname") for worker in workers]},
        "running": [{"job_id": row.id, "model": row.model_name, "kind": row.kind, "phase": row.phase,
                     "epoch": row.epoch, "epochs": row.epochs, "resources": row.resources,
                     "started_at": row.started_at.isoformat() if row.started_at else None,
                     **({"owner": row.owner} if is_admin(principal) else {})} for row in running],
        "host": {"cpu_count": os.cpu_count(), "load_average": [load1, load5, load15],
                 "cpu_percent": round(100 * load1 / (os.cpu_count() or 1), 1), "memory": _memory()},
        "gpu": {"in_use": bool(gpu_reports),
                "peak_memory_mb": [report.get("gpu_peak_memory_mb") for report in gpu_reports]},
        "quotas": {"resource_quotas": {"gpu_memory": "16G", "cpu_cores": 8}},
    })


def _primary(run: Any) -> tuple[str, float | None, bool]:
    kind = KINDS.get(run.kind)
    metric = kind.primary_metric if kind else "accuracy"
    value = (run.metrics or {}).get(metric)
    return metric, value if isinstance(value, (int, float)) else None, kind.higher_is_better if kind else True


def compare_runs(model_runs: list[Any]) -> dict[str, Any]:
    """The best run by its kind's primary metric, and how each finished run moved it from the run before."""
    finished = [run for run in reversed(model_runs) if run.phase == runs.SUCCEEDED]  # oldest first
    if not finished:
        return {"runs_compared": 0}
    metric, _, higher = _primary(finished[-1])
    scored = [(run, _primary(run)[1]) for run in finished if _primary(run)[1] is not None]
    rows, previous = [], None
    for run, value in scored:
        rows.append({"run_id": run.id, "version": run.registered_version, metric: value,
                     "change": None if previous is None else round(value - previous, 6),
                     "data_fingerprint": run.data_fingerprint})
        previous = value
    best = (max if higher else min)(scored, key=lambda pair: pair[1]) if scored else None
    latest = finished[-1]
    changed = {}
    if best is not None and best[0].id != latest.id:
        best_params = (best[0].config or {}).get("params") or {}
        latest_params = (latest.config or {}).get("params") or {}
        changed = {key: {"best": best_params.get(key), "latest": latest_params.get(key)}
                   for key in sorted(set(best_params) | set(latest_params))
                   if best_params.get(key) != latest_params.get(key)}
    return {"metric": metric, "higher_is_better": higher, "runs_compared": len(scored),
            "best": None if best is None else {"run_id": best[0].id, "version": best[0].registered_version,
                                               metric: best[1]},
            "latest": {"run_id": latest.id, "version": latest.registered_version, metric: _primary(latest)[1]},
            "params_changed_since_best": changed, "by_run": rows}


@bp.get("/training/runs/<name>")
@require(READ)
def model_runs(name: str) -> Response:
    """Every training run of a model (config, data fingerprint, metrics per epoch, resource use), compared."""
    model_runs = runs.runs_of_model(name)
    with_history = request.args.get("history", "1") not in ("0", "false")
    return jsonify({"model": name, "runs": [runs.run_to_api(run, with_history) for run in model_runs],
                    "comparison": compare_runs(model_runs)})


def runs_summary(name: str, limit: int = 10) -> dict[str, Any]:
    """The training runs of a model, compared (for GET /models/{name}); full history at runs_url."""
    model_runs = runs.runs_of_model(name)
    return {"runs_url": url_for("training.model_runs", name=name), "count": len(model_runs),
            "runs": [runs.run_to_api(run, with_history=False) for run in model_runs[:limit]],
            "comparison": compare_runs(model_runs)}
