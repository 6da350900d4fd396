"""Response bodies, as pydantic models, for the OpenAPI document only: the views still build plain dicts.
Each model describes what its view returns today (read the view before changing one); a field the view
adds only sometimes is optional here, and says when it is there."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Response(BaseModel):
    # Documented fields are the contract; a view may add more (e.g. a worker's result fields).
    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. rate_limited, overloaded, job_not_found.")
    message: str = Field(description="What went wrong, for people.")
    details: dict[str, Any] = Field(description="Context for the code, e.g. the job_id or the valid values.")


class ErrorResponse(BaseModel):
    """Every error answer, whatever its status (cortex_web/errors.py)."""

    error: ErrorBody


class Accepted(_Response):
    """Not finished within the wait: poll status_url (GET /api/v1/jobs/{job_id})."""

    job_id: str
    status: Literal["queued"]
    status_url: str


class PredictResponse(_Response):
    job_id: str | None = Field(description="null when the cache answered every input (no job was run).")
    task: str
    model: dict[str, Any] = Field(description="The model that answered: name, version, and fallback or "
                                              "circuit notes when another model stood in.")
    outputs: list[Any] = Field(description="One output per input, in input order.")
    cached: bool = Field(description="True when every output came from the result cache.")
    timings: dict[str, float] = Field(description="Milliseconds per stage; total_ms is the gateway's.")
    cached_items: int | None = Field(default=None, description="Present only when some, not all, outputs "
                                                               "came from the cache.")


class PredictBatchResponse(PredictResponse):
    errors: int = Field(description="How many outputs are {index, error} objects (items that failed).")


class PipelineStepResult(PredictResponse):
    step: int
    inputs: list[Any] = Field(description="What this step was given.")


class PipelineResponse(_Response):
    steps: list[PipelineStepResult]
    outputs: list[Any] = Field(description="The last step's outputs.")


class JobProgress(BaseModel):
    done: int
    total: int


class JobResponse(_Response):
    job_id: str
    kind: str
    task: str
    status: str = Field(description="queued, running, succeeded, failed, cancelled, ...")
    progress: JobProgress
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    attempts: int
    model: str | None = Field(default=None, description="Present when the job names a model.")
    result: Any = Field(default=None, description="Present once the job has succeeded.")
    result_ref: str | None = Field(default=None, description="Present when the result is stored as a file.")
    error: dict[str, Any] | None = Field(default=None, description="Present when the job failed.")


class BatchSubmitted(_Response):
    job_id: str
    status: Literal["queued"]
    created: bool = Field(description="False when an earlier request with the same Idempotency-Key made it.")
    total: int
    chunks: int
    status_url: str
    progress_url: str
    results_url: str
    errors_url: str


class ChunkStates(BaseModel):
    total: int
    finished: int
    pending: int
    queued: int
    running: int


class BatchProgress(_Response):
    job_id: str
    status: str
    done: int
    failed: int
    total: int
    chunks: ChunkStates
    created_at: str
    started_at: str | None
    finished_at: str | None
    eta_seconds: float | None = Field(default=None, description="Present while the batch runs.")
    items_per_second: float | None = Field(default=None, description="Present while the batch runs.")
    error: dict[str, Any] | None = Field(default=None, description="Present when the batch failed.")


class BatchResultsPage(_Response):
    job_id: str
    status: str
    page: int
    size: int
    total: int
    pages: int
    items: list[Any] = Field(description="This page's results in input order (finished chunks only).")
    next: str | None = Field(default=None, description="The next page's URL; absent on the last page.")
    download: dict[str, str] | None = Field(default=None, description="parquet and arrow URLs of the whole "
                                                                      "result, once it is merged.")


class BatchItemError(BaseModel):
    index: int
    input: Any
    error: Any


class BatchErrors(_Response):
    job_id: str
    status: str
    failed: int
    errors: list[BatchItemError]


class KeyCreated(_Response):
    key_id: str
    key: str = Field(description="The secret; shown only in this answer.")
    role: str
    tier: str
    expires_at: str | None


class Collection(_Response):
    """A vector collection (PUT /vectors/{collection}: 201 when created, 200 when it already existed)."""

    name: str
    dimension: int
    metric: str
    index: dict[str, Any] = Field(description="type and its parameters, state, and built_at once built.")
    model: str | None = Field(description="The embedding model that fills it from text, if any.")
    created_by: str | None
    created_at: str | None


class TrainingSubmitted(_Response):
    job_id: str
    status: Literal["queued"]
    kind: str
    model: str
    status_url: str
    control_url: str


class TrainingControlled(_Response):
    job_id: str
    action: str
    status: str = Field(description="cancelled or paused when done at once; cancelling or pausing while the "
                                    "worker checkpoints; queued on resume.")
    status_url: str


class Promoted(_Response):
    """The version's new stage. Promotions to canary or production also carry the activation job's
    deployment and readiness; retirements to staging or archived do not."""

    model: str
    version: int
    stage: str
    traffic_percent: float | None
    job_id: str | None = Field(default=None, description="The activation job (canary and production).")
    previous_production: int | None = Field(default=None, description="Canary and production only.")
    deployment: dict[str, Any] | None = Field(default=None, description="Canary and production only.")
    readiness: Any = Field(default=None, description="Canary and production only.")


class Deploying(_Response):
    """The activation job did not finish within `wait`: poll status_url."""

    job_id: str
    status: Literal["deploying"]
    deployment: dict[str, Any]
    status_url: str


class Health(_Response):
    status: Literal["ok"]


class Readiness(_Response):
    """200 when every check is ok; 503 (this same body, not an error object) when one is not."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, dict[str, Any]] = Field(description="database, redis, models: each {ok, ...}.")
    workers: list[dict[str, Any]] = Field(description="The workers that have reported ready.")
    queues_served: list[str]


class KeyList(_Response):
    keys: list[dict[str, Any]] = Field(description="Every key's id, name, role, tier and dates; never secrets.")


class KeyRevoked(_Response):
    key_id: str
    revoked: bool


class CollectionList(_Response):
    collections: list[Collection]


class CollectionDropped(_Response):
    collection: str
    dropped: bool


class ItemsDeleted(_Response):
    collection: str
    deleted: int = Field(description="How many of the given ids existed and were deleted.")


class ItemCount(_Response):
    collection: str
    count: int


class ChatHistory(_Response):
    session_id: str
    messages: list[dict[str, Any]]
    turns: int


class ChatCleared(_Response):
    session_id: str
    deleted: bool
    deleted_messages: int


class DocumentDeleted(_Response):
    collection: str
    document_id: str
    deleted: bool
    passages_deleted: int


class AuditPage(_Response):
    events: list[dict[str, Any]]
    page: int
    size: int
    next_page: int | None = Field(description="The next page's number; null on the last page.")
