"""Training jobs over HTTP: submit (with quotas), status (phase, epoch, metrics so far), control (cancel,
pause, resume), resources (queue, running jobs, capacity, CPU/GPU/memory), and the runs of a model
(experiment tracking: config, data fingerprint, metrics per epoch, resource use, compared)."""
from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request, url_for
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cortex_tasks.core.auth.permissions import check_allowed
from cortex_tasks.core.auth.roles import READ, TRAIN
from cortex_tasks.core.machine_resources import host_use
from cortex_tasks.core.queues import TRAINING, priority_of
from cortex_tasks.core.request_fields import Storable
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.training import runs
from cortex_tasks.core.training.capacity import training_load
from cortex_tasks.core.training.comparison import compare_runs
from cortex_tasks.core.training.config import training_config
from cortex_tasks.core.training.datasets import delete_dataset, list_datasets, store_dataset
from cortex_tasks.core.training.intake import RetrainingSchedule, accept_training
from cortex_tasks.core.training.submission import ControlRefused, TrainingRequest, control
from cortex_tasks.core.worker_records import ready_workers
from cortex_web.audit import audited
from cortex_web.auth import current_principal, is_admin, require
from cortex_web.blueprints.jobs import visible_job
from cortex_web.dispatch import queue_depths, redis_client
from cortex_web.errors import ApiError
from cortex_web.limits import limit_work
from cortex_web.request_body import accepts_body_up_to, parse_body

bp = Blueprint("training", __name__, url_prefix="/api/v1")

MAX_TRAINING_BODY_BYTES = 24 * 1024 * 1024
# An uploaded dataset is held in memory once by the gateway on its way to the object store.
MAX_DATASET_BYTES = 64 * 1024 * 1024


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
    dataset: Storable[dict[str, Any]]
    params: Storable[dict[str, Any]] = Field(default_factory=dict)
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


@bp.post("/training/submit")
@accepts_body_up_to(MAX_TRAINING_BODY_BYTES)
@require(TRAIN)
@limit_work
@audited("training.submit")
def submit() -> tuple[Response, int]:
    """Submit a training job; over the quota it is refused with 429."""
    body = parse_body(TrainingSubmitRequest, get_settings().max_json_depth)
    check_allowed(current_principal(), None, body.model)  # a key limited to named models trains only those
    schedule = None if body.schedule is None else RetrainingSchedule(
        body.schedule.cron, body.schedule.metric, body.schedule.threshold)
    job_id, kind = accept_training(
        TrainingRequest(owner=current_principal().key_id, kind=body.kind, model=body.model, dataset=body.dataset,
                        params=body.params, priority=priority_of(body.priority)), schedule)
    return jsonify({"job_id": job_id, "status": "queued", "kind": kind.name, "model": body.model,
                    "status_url": url_for("training.status", job_id=job_id),
                    "control_url": url_for("training.control_job", job_id=job_id)}), 202


def training_job(job_id: str):
    job = visible_job(job_id)
    if job.kind != "training":
        raise ApiError(404, "job_not_found", f"Job {job_id!r} is not a training job.")
    return job


@bp.put("/training/datasets/<path:dataset>")
@accepts_body_up_to(MAX_DATASET_BYTES)
@require(TRAIN)
@audited("dataset.upload")
def upload_dataset(dataset: str) -> tuple[Response, int]:
    """Store a dataset (the request body, as is; its name ends in .jsonl, .ndjson, .json, .csv or .parquet)
    in the tenant's dataset folder, replacing one of the same name. Train on it with
    `"dataset": {"object": "<name>"}`."""
    stored = store_dataset(dataset, request.get_data(cache=False))
    return jsonify({"name": dataset, "size": stored.size, "sha256": stored.sha256,
                    "dataset": {"object": dataset}}), 201


@bp.get("/training/datasets")
@require(TRAIN)
def datasets() -> Response:
    """The names of the tenant's uploaded datasets."""
    return jsonify({"datasets": list_datasets()})


@bp.delete("/training/datasets/<path:dataset>")
@require(TRAIN)
@audited("dataset.delete")
def remove_dataset(dataset: str) -> Response:
    """Delete an uploaded dataset (jobs already queued with it fail with dataset_unavailable)."""
    if not delete_dataset(dataset):
        raise ApiError(404, "dataset_not_found", f"No dataset named {dataset!r}.")
    return jsonify({"name": dataset, "deleted": True})


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


@bp.get("/training/resources")
@require(READ)
def resources() -> Response:
    """Queue depth, running jobs, concurrency and capacity, and CPU / GPU / memory use."""
    config = training_config()
    load = training_load()
    running, counts = load.running, load.jobs_by_status
    principal = current_principal()
    workers = [worker for worker in ready_workers(redis_client()) if TRAINING in worker.get("queues", [])]
    gpu_reports = [row.resources for row in running if (row.resources or {}).get("device") == "cuda"]
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
        "host": host_use(),
        "gpu": {"in_use": bool(gpu_reports),
                "peak_memory_mb": [report.get("gpu_peak_memory_mb") for report in gpu_reports]},
        "quotas": {"resource_quotas": {"gpu_memory": "16G", "cpu_cores": 8}},
    })


@bp.get("/training/runs/<name>")
@require(READ)
def model_runs(name: str) -> Response:
    """Every training run of a model (config, data fingerprint, metrics per epoch, resource use), compared.
    A model with no run in the caller's tenant is a 404, like another tenant's model."""
    model_runs = runs.runs_of_model(name)
    if not model_runs:
        raise ApiError(404, "model_not_found", f"No training runs of a model {name!r}.")
    with_history = request.args.get("history", "1") not in ("0", "false")
    return jsonify({"model": name, "runs": [runs.run_to_api(run, with_history) for run in model_runs],
                    "comparison": compare_runs(model_runs)})


def runs_summary(name: str, limit: int = 10) -> dict[str, Any]:
    """The training runs of a model, compared (for GET /models/{name}); full history at runs_url."""
    model_runs = runs.runs_of_model(name)
    return {"runs_url": url_for("training.model_runs", name=name), "count": len(model_runs),
            "runs": [runs.run_to_api(run, with_history=False) for run in model_runs[:limit]],
            "comparison": compare_runs(model_runs)}
