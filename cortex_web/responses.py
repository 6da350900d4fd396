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
    tenant: str = Field(description="The tenant the key belongs to; it sees only that tenant's resources.")
    models: list[str] | None = Field(description="The only model names the key may use; null: any.")
    tasks: list[str] | None = Field(description="The only tasks the key may run; null: any.")
    expires_at: str | None


class TenantCreated(_Response):
    tenant: str
    name: str | None
    created_at: str


class TenantList(_Response):
    tenants: list[TenantCreated]


class Collection(_Response):
    """A vector collection (PUT /vectors/{collection}: 201 when created, 200 when it already existed)."""

    name: str
    dimension: int
    metric: str
    index: dict[str, Any] = Field(description="type and its parameters, state, and built_at once built.")
    model: str | None = Field(description="The embedding model that fills it from text, if any.")
    created_by: str | None
    created_at: str | None


class DatasetStored(_Response):
    name: str
    size: int
    sha256: str
    dataset: dict[str, str] = Field(description='What a training job names it with: {"object": name}.')


class DatasetList(_Response):
    datasets: list[str]


class DatasetDeleted(_Response):
    name: str
    deleted: bool


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
    """200 when every check is ok; 503 (this same body, not an error object) when one is not. Without a
    key only `status`; with a key of any role also `checks`, `workers` and `queues_served`."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, dict[str, Any]] | None = Field(
        None, description="With a key: database, redis, models, each {ok} or {ok: false, code, message}.")
    workers: list[dict[str, Any]] | None = Field(
        None, description="With a key: the workers that have reported ready (hostname, pid, queues, models, "
                          "failed_models as {model: {code, message}}, batching).")
    queues_served: list[str] | None = Field(None, description="With a key: the queues some ready worker serves.")


class KeyList(_Response):
    keys: list[dict[str, Any]] = Field(description="Each key's id, name, role, tier, tenant, model and task "
                                                   "limits and dates; never secrets.")


class KeyRevoked(_Response):
    key_id: str
    revoked: bool


class TokenIssued(BaseModel):
    """RFC 6749 §5.1: an access token; send it as `Authorization: Bearer <access_token>`."""

    access_token: str = Field(description="A JWT signed by Cortex (ES256, kid in its header).")
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds the token is valid (CORTEX_TOKEN_LIFETIME).")


class OAuthErrorResponse(BaseModel):
    """RFC 6749 §5.2: the token route's errors, in the shape OAuth2 clients read."""

    error: Literal["invalid_request", "invalid_client", "unsupported_grant_type", "invalid_scope"]
    error_description: str = Field(description="What went wrong, for people.")


class Jwks(BaseModel):
    """RFC 7517 JSON Web Key Set: the public keys that verify Cortex's access tokens."""

    keys: list[dict[str, Any]] = Field(description="Public JWKs (kty, crv, x, y, kid, alg, use), newest first.")


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


class ChainHead(_Response):
    id: int | None = Field(description="The last row appended; null while the log is empty.")
    hash: str = Field(description="Its row_hash (SHA-256, hex): keep it outside the database to compare later.")


class ChainBreak(_Response):
    row_id: int | None
    kind: Literal["content_changed", "rows_missing", "row_inserted", "start_missing", "end_missing",
                  "outside_chain"]
    message: str


class AuditChainReport(_Response):
    """The audit log's hash chain checked row by row (GET /api/v1/audit/verify)."""

    ok: bool
    rows: int = Field(description="Rows checked before the first break (all of them when ok).")
    head: ChainHead
    start_after_id: int | None = Field(description="The last row retention deleted; null if none was.")
    broken: ChainBreak | None = Field(description="The first broken link; null when the chain is intact.")


class DocumentSummary(_Response):
    id: str
    collection: str
    passages: int
    characters: int | None = None
    meta: dict[str, Any] | None = None
    indexed_at: Any = Field(default=None, description="When it was indexed (ISO 8601).")


class DocumentList(_Response):
    documents: list[DocumentSummary] = Field(description="Newest first.")
    total: int
    limit: int
    offset: int
    collections: dict[str, Any] = Field(description="Documents per collection.")


class QueueHealth(_Response):
    queues: dict[str, Any] = Field(description="Messages waiting per queue.")
    workers: list[dict[str, Any]] = Field(description="The workers that have reported ready.")


class HostResources(QueueHealth):
    cpu_count: int | None
    load_average: list[float] = Field(description="1, 5 and 15 minutes.")


class ModelHealth(_Response):
    model: str
    version: str
    task: str
    queue: str
    loaded_on_workers: list[str]
    status: Literal["loaded", "not_loaded"]
    batching: dict[str, Any] = Field(description="Each worker's batching settings for the model, by host.")


class HaystackHealth(_Response):
    """200 when the package and the store are usable; 503 (this same body, not an error object) when not."""

    status: Literal["ok", "degraded", "unavailable"]
    packages: dict[str, str | None] = Field(description="Installed version by package; null: not installed.")
    store: dict[str, Any] = Field(
        description="ok, and collections (documents per collection), or a code and a message.")
    pipelines_run_on: list[Any] = Field(description="The ready gpu workers' host names.")


class CacheHealth(_Response):
    enabled: bool
    hits: int
    misses: int
    warming: Any = Field(description="How well cache warming has paid off.")


class LangchainHealth(_Response):
    status: Literal["ok", "degraded"]
    langchain_core: str | None = Field(description="The installed version; null: not installed.")
    workers_serving_chat: int
    default_model: str
    models: dict[str, dict[str, Any]] = Field(description="Each chat model's provider and availability.")
    memory: dict[str, int] = Field(description="The memory window: turns, characters, and the tokens a whole "
                                               "prompt may take (counted with the model's own tokenizer).")


class ModelList(_Response):
    models: list[dict[str, Any]] = Field(description="Registered models (source registry) with their production "
                                                     "and canary versions, then bundled ones (source catalogue).")


class ModelDetail(_Response):
    """A registered model's versions, deployments and training runs; a bundled model's one version."""

    name: str
    task: str | None = None
    source: Literal["registry", "catalogue"]
    versions: list[dict[str, Any]]
    serving: dict[str, Any] = Field(description="production and canary (null when none), with live stats.")


class ModelVersion(_Response):
    """One registered version: its record, live stats, deployments and model card."""

    stats: dict[str, Any]
    deployments: list[dict[str, Any]]
    card: str = Field(description="The model card as Markdown.")


class ModelRoute(_Response):
    model: str
    version: Any = Field(description="The version that answers the calling key.")
    stage: str
    source: Literal["registry", "catalogue"]


class RolledBack(_Response):
    model: str
    version: int = Field(description="The version now in production.")
    stage: Literal["production"]
    rolled_back_from: Any
    deployment: Any


class TrainingStatus(_Response):
    job_id: str
    status: str
    progress: JobProgress
    metrics_so_far: Any = Field(default=None, description="The last epoch's metrics, once a run exists.")
    result: Any = Field(default=None, description="Present once the job has a result.")
    error: dict[str, Any] | None = Field(default=None, description="Present when the job failed.")


class TrainingResources(_Response):
    queue: dict[str, Any]
    concurrency: dict[str, Any]
    running: list[dict[str, Any]] = Field(description="Running jobs; the owner is shown to admins only.")
    host: dict[str, Any]
    gpu: dict[str, Any]
    quotas: dict[str, Any]


class TrainingRuns(_Response):
    model: str
    runs: list[dict[str, Any]] = Field(description="Config, data fingerprint, metrics and resource use of each.")
    comparison: Any


class OpenAIUsage(_Response):
    since: str
    items: list[dict[str, Any]] = Field(description="Calls, tokens and cost per tenant, key and model.")
    tenants: list[dict[str, Any]] = Field(description="Calls, tokens and cost per tenant.")
    total_cost_usd: float
    scope: Literal["all_tenants", "tenant", "own_key"] = Field(
        description="all_tenants: the platform admin's view; tenant: every key of the caller's tenant "
                    "(model_admin); own_key: the caller's key only.")
    tenant: str | None = Field(description="The tenant shown; null when every tenant is.")
    configured: bool
    models: dict[str, list[str]]
    prices_per_1k_tokens_usd: dict[str, Any]
    budget: dict[str, Any]


class CollectionDetail(Collection):
    count: int
    table_bytes: int
    index_bytes: int


# --- The usage ledger (GET /api/v1/usage) ---

class UsageRow(_Response):
    """One group's usage; the group's fields (tenant, key_id, model) are those of `group_by`."""

    tenant: str | None = None
    key_id: str | None = None
    model: str | None = None
    openai_calls: int
    openai_cached_calls: int
    prompt_tokens: int
    completion_tokens: int
    openai_cost_usd: float
    worker_jobs: int = Field(description="Jobs of Cortex's own models that spent worker time.")
    worker_items: int = Field(description="Items those models computed (cache hits cost nothing).")
    worker_seconds: float = Field(description="Wall seconds of model calls; a batched call's shared over its items.")
    worker_cost_usd: float
    cost_usd: float = Field(description="openai_cost_usd + worker_cost_usd.")


class UsageLedger(_Response):
    items: list[UsageRow]
    totals: UsageRow
    group_by: list[str]
    scope: Literal["all_tenants", "tenant", "own_key"] = Field(
        description="all_tenants: the platform admin's view of every tenant; tenant: every key of one tenant "
                    "(model_admin, platform admin); own_key: the caller's key only.")
    tenant: str | None = Field(description="The tenant shown; null when every tenant is.")
    prices: dict[str, Any] = Field(description="worker_second_usd per worker kind and OpenAI's per 1k tokens, "
                                               "as configured now (rows keep the price they were recorded at).")


# --- OpenAI-compatible routes (/v1): OpenAI's own shapes ---

class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error, insufficient_quota, "
                                  "permission_error or server_error.")
    param: str | None = Field(description="The request parameter at fault, if one is.")
    code: str | None = Field(description="e.g. invalid_api_key, model_not_found, rate_limit_exceeded, "
                                         "token_arrays_not_supported.")


class OpenAIErrorResponse(BaseModel):
    """Every error answer of the /v1 routes, in OpenAI's shape."""

    error: OpenAIErrorBody


class OpenAIModel(_Response):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(_Response):
    object: Literal["list"]
    data: list[OpenAIModel]


class OpenAIEmbedding(_Response):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32 values.")


class OpenAIEmbeddings(_Response):
    object: Literal["list"]
    model: str
    data: list[OpenAIEmbedding]
    usage: dict[str, int] = Field(description="prompt_tokens and total_tokens, estimated at four characters "
                                              "per token.")


class OpenAIChatChoice(_Response):
    index: int
    message: dict[str, Any] = Field(description="role assistant and the content.")
    finish_reason: Literal["stop", "length"]


class OpenAIChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[OpenAIChatChoice]
    usage: dict[str, int] = Field(description="prompt_tokens, completion_tokens and total_tokens.")
# --- prompts and agents (cortex_web/blueprints/prompts.py, agents.py) ---


class PromptVersionBody(_Response):
    name: str
    version: int
    reference: str = Field(description="`name@version`: how chains and agents name this version.")
    stage: Literal["staging", "production", "archived"]
    template: str
    input_variables: list[str]
    description: str | None
    created_by: str | None
    created_at: str | None
    stage_changed_at: str | None


class PromptSummary(_Response):
    name: str
    description: str | None
    latest_version: int
    production_version: int | None
    updated_at: str | None


class PromptList(_Response):
    prompts: list[PromptSummary]


class PromptDeploymentBody(_Response):
    id: int
    version: int
    action: Literal["create", "promote", "rollback"]
    previous_version: int | None
    actor: str | None
    at: str | None


class PromptDetail(PromptSummary):
    created_by: str | None
    created_at: str | None
    versions: list[PromptVersionBody]
    deployments: list[PromptDeploymentBody] = Field(description="Production changes, newest first.")


class PromptSwitched(_Response):
    prompt: str
    version: int = Field(description="The version now in production.")
    stage: Literal["production"]
    previous_version: int | None
    deployment: PromptDeploymentBody


class PromptRendered(_Response):
    name: str
    version: int
    reference: str
    text: str


class AgentBody(_Response):
    name: str
    description: str | None
    model: str
    prompt: str = Field(description="`name@version`, or `name` (its production version at each run).")
    tools: list[dict[str, Any]]
    max_steps: int
    token_budget: int
    temperature: float
    max_tokens: int
    created_by: str | None
    created_at: str | None


class AgentList(_Response):
    agents: list[AgentBody]


class AgentDeleted(_Response):
    agent: str
    deleted: bool


class AgentRun(_Response):
    """The run's result (runtime/agents/service.py), with its job id."""

    job_id: str
    agent: str
    model: str
    prompt: dict[str, Any] = Field(description="The exact prompt version used: name, version, reference.")
    answer: str
    steps: list[dict[str, Any]] = Field(description="One per model call: its content, tokens and tool calls "
                                                    "(tool, arguments, status, result or error).")
    tokens: dict[str, int] = Field(description="prompt, completion and total tokens of every step; the budget.")
    cost_usd: float
