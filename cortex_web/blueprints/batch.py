"""Batch jobs over HTTP: submit up to 1000 inputs, follow progress, page through results in input
order or download them whole as Parquet / Arrow, and list the items that failed."""
from __future__ import annotations

import math
import re
from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request, stream_with_context, url_for
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cortex_tasks.core.auth.roles import PREDICT, READ
from cortex_tasks.core.batch import results
from cortex_tasks.core.batch.config import batch_config
from cortex_tasks.core.batch.progress import failed_items, progress_report, result_chunks
from cortex_tasks.core.batch.submission import BatchRequest, check_batch_inputs, create_batch, request_hash
from cortex_tasks.core.jobs.store import SUCCEEDED, IdempotencyConflict
from cortex_tasks.core.openai.billing import billed_params
from cortex_tasks.core.queues import priority_of
from cortex_tasks.core.request_fields import Storable
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage import arrow_io
from cortex_tasks.core.storage.object_store import ObjectStoreError
from cortex_web.auth import current_principal, require
from cortex_web.blueprints.jobs import visible_job
from cortex_web.errors import ApiError
from cortex_web.limits import limit_model_work
from cortex_web.metrics import JOBS_SUBMITTED
from cortex_web.predictions import resolve, stage_images
from cortex_web.request_body import accepts_images, parse_body, positive_int_arg
from cortex_web.schemas import check_model_reference

bp = Blueprint("batch", __name__, url_prefix="/api/v1")

# 1000 texts of up to 10,000 characters do not fit the default 2 MiB body limit.
MAX_BATCH_BODY_BYTES = 24 * 1024 * 1024
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class BatchSubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=64)
    # Each item is checked in the worker like a /predict input; a bad item fails alone (see /batch/errors).
    inputs: Storable[list[Any]] = Field(min_length=1)  # they wait in PostgreSQL for their chunk
    model: str | None = None
    params: Storable[dict[str, Any]] = Field(default_factory=dict)
    priority: Literal["high", "normal", "low"] = "normal"
    # Personal data: inputs and results sealed at rest. Always so for pii_detect and pii_mask.
    sensitive: bool = False

    _check_model = field_validator("model")(classmethod(lambda cls, value: check_model_reference(value)))


REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {("post", "/api/v1/batch/submit"): BatchSubmitRequest}


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "invalid_idempotency_key",
                       "Idempotency-Key must be 1..200 printable ASCII characters without spaces.")
    return key


def _links(job_id: str) -> dict[str, str]:
    return {"status_url": url_for("jobs.show_job", job_id=job_id),
            "progress_url": url_for("batch.progress", job_id=job_id),
            "results_url": url_for("batch.results_page", job_id=job_id),
            "errors_url": url_for("batch.errors", job_id=job_id)}


@bp.post("/batch/submit")
@accepts_images(at_least=MAX_BATCH_BODY_BYTES)
@require(PREDICT)
@limit_model_work
def submit() -> tuple[Response, int]:
    """Submit a batch job (1..1000 inputs), answered at once with its job id."""
    settings = get_settings()
    body = parse_body(BatchSubmitRequest, settings.max_json_depth)
    check_batch_inputs(body.inputs)
    key = _idempotency_key()
    task, model = resolve(body.task, body.model)
    # Images are checked and stored here, the inputs of the batch being their hashes: a bad one refuses the
    # batch naming it (the worker has nothing to decode it from).
    inputs = stage_images(task, body.inputs)
    batch = BatchRequest(owner=current_principal().key_id, task=task.name, model=model.name,
                         inputs=inputs, priority=priority_of(body.priority),
                         # OpenAI calls are billed to the submitting key (cortex_tasks/core/openai/billing.py)
                         params=billed_params(model.name, body.params, current_principal().key_id),
                         idempotency_key=key, batchable=model.batchable,
                         sensitive=body.sensitive or task.sensitive)
    digest = request_hash(body.task, body.model, body.inputs, body.params, body.priority) if key else None
    try:
        submitted = create_batch(batch, digest)
    except IdempotencyConflict:
        raise ApiError(422, "idempotency_key_reused",
                       "This Idempotency-Key was already used with a different request body.",
                       {"idempotency_key": key}) from None
    if submitted.created:
        JOBS_SUBMITTED.labels("batch", task.name, "batch").inc()
    return jsonify({"job_id": submitted.job_id, "status": "queued", "created": submitted.created,
                    "total": len(body.inputs), "chunks": submitted.chunks, **_links(submitted.job_id)}), 202


def batch_job(job_id: str):
    job = visible_job(job_id)
    if job.kind != "batch":
        raise ApiError(404, "job_not_found", f"Job {job_id!r} is not a batch job.")
    return job


@bp.get("/batch/progress/<job_id>")
@require(READ)
def progress(job_id: str) -> Response:
    """Items done and failed so far, chunk states and an estimate of the time left."""
    return jsonify(progress_report(batch_job(job_id)))


def _download(job, fmt: str) -> Response:
    if job.status != SUCCEEDED or not job.result_ref:
        raise ApiError(409, "batch_not_finished",
                       f"The batch is {job.status}; the whole result can be downloaded once it has succeeded "
                       "(pages of finished chunks are available meanwhile).", {"status": job.status})
    try:
        parquet = results.read_merged(job.result_ref)
    except ObjectStoreError as exc:
        raise ApiError(410 if exc.status == 404 else 502, "batch_result_unavailable",
                       f"The result file cannot be read ({exc.message}); results expire "
                       f"{batch_config().result_retention_days} days after a batch finishes.") from None
    disposition = {"Content-Disposition": f'attachment; filename="batch-{job.id}.{fmt}"'}
    if fmt == "parquet":
        return Response(parquet, mimetype="application/vnd.apache.parquet", headers=disposition)
    schema, batches = results.arrow_stream_from_parquet(parquet)
    return Response(stream_with_context(arrow_io.ipc_stream_chunks(schema, batches)),
                    mimetype="application/vnd.apache.arrow.stream", headers=disposition)


@bp.get("/batch/results/<job_id>")
@require(READ)
def results_page(job_id: str) -> Response:
    """Results in input order, a page at a time (?page=&size=), or the whole file (?format=parquet|arrow)."""
    job = batch_job(job_id)
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "parquet", "arrow"):
        raise ApiError(422, "invalid_query", "?format= is json, parquet or arrow.")
    if fmt != "json":
        return _download(job, fmt)
    config = batch_config()
    size = positive_int_arg("size", config.default_page_size, config.max_page_size)
    page = positive_int_arg("page", 1)
    total = job.progress_total
    first, last = (page - 1) * size, min(page * size, total)
    try:
        items = results.page_items(result_chunks(job_id), first, last) if first < total else []
    except ObjectStoreError as exc:
        raise ApiError(410 if exc.status == 404 else 502, "batch_result_unavailable",
                       f"The results cannot be read ({exc.message}).") from None
    pages = max(1, math.ceil(total / size))
    body: dict[str, Any] = {"job_id": job.id, "status": job.status, "page": page, "size": size, "total": total,
                            "pages": pages, "items": items}
    if page < pages:
        body["next"] = url_for("batch.results_page", job_id=job.id, page=page + 1, size=size)
    if job.result_ref:
        body["download"] = {fmt: url_for("batch.results_page", job_id=job.id, format=fmt)
                            for fmt in ("parquet", "arrow")}
    return jsonify(body)


@bp.get("/batch/errors/<job_id>")
@require(READ)
def errors(job_id: str) -> Response:
    """The failed items with their inputs and errors, in input order."""
    job = batch_job(job_id)
    items = failed_items(job_id)
    return jsonify({"job_id": job.id, "status": job.status, "failed": len(items), "errors": items})
