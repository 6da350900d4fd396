"""The OpenAPI 3.1 document, built from the app's own URL map so every route is listed, with the request
models the gateway validates with and the response models of cortex_web/responses.py.

3.1 because its schemas are JSON Schema 2020-12, which is what pydantic emits (`{"type": "null"}`,
`const`); every model lands in components/schemas and every reference points there."""
from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cortex_tasks.core.agents.declarations import TEXT_TASKS
from cortex_tasks.core.audit.service import EVENT_TYPES
from cortex_tasks.core.catalogue import MODELS, TASKS
from cortex_tasks.core.chat.history import SESSION_ID
from cortex_tasks.core.documents.catalog import MAX_LIST_LIMIT
from cortex_tasks.core.documents.requests import (
    MAX_CONTENT_CHARS,
    MAX_DOCUMENT_ID_CHARS,
    META_KEY,
    RESERVED_META_KEYS,
)
from cortex_tasks.core.registry.records import MODEL_NAME
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.object_store import MAX_NAME_CHARS as MAX_OBJECT_NAME_CHARS
from cortex_tasks.core.storage.object_store import OBJECT_NAME
from cortex_tasks.core.storage.vector_store import COLLECTION_NAME, MAX_ID_CHARS
from cortex_tasks.core.streams.declarations import StreamSpec
from cortex_tasks.core.tenancy import TENANT_ID
from cortex_tasks.core.training.config import training_config
from cortex_tasks.core.training.datasets import DATASET_FORMATS, MAX_DATASET_NAME_CHARS
from cortex_tasks.core.training.kinds import KINDS
from cortex_tasks.core.validation.items import MAX_VECTOR_VALUES, max_text_chars
from cortex_tasks.core.validation.timeseries import MAX_POINTS
from cortex_web import alert_responses, responses
from cortex_web.openai_translation import ChatCompletionRequest, EmbeddingsRequest
from cortex_web.request_body import JSON_FORM_FIELDS, MAX_QUERY_INT
from cortex_web.schemas import (
    MODEL_REFERENCE,
    CreateKeyRequest,
    CreateTenantRequest,
    PipelineRequest,
    PredictRequest,
)

REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/api/v1/predict"): PredictRequest,
    ("post", "/api/v1/predict/batch"): PredictRequest,
    ("post", "/api/v1/predict/stream"): PredictRequest,
    ("post", "/api/v1/predict/pipeline"): PipelineRequest,
    ("post", "/api/v1/keys"): CreateKeyRequest,
    ("post", "/api/v1/tenants"): CreateTenantRequest,
    ("post", "/v1/embeddings"): EmbeddingsRequest,
    ("post", "/v1/chat/completions"): ChatCompletionRequest,
    ("post", "/api/v1/streams"): StreamSpec,
}
# A working body per route, shown by /api/v1/docs and sent by schemathesis' examples phase (a fuzzer rarely
# guesses a catalogue task name and inputs that task accepts).
_TEXTS = ["The river rose overnight.", "Markets opened higher on Monday."]
REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/v1/streams"): {
        "name": "sensor-readings", "timestamp_field": "ts", "key_fields": ["device"], "value_field": "reading",
        "fields": [{"name": "ts", "type": "timestamp"}, {"name": "device", "type": "string"},
                   {"name": "reading", "type": "number"}],
        "window": {"size": "5m", "overlap": "30s"},
        "detectors": [{"kind": "robust_zscore", "threshold": 3.5}, {"kind": "key_baseline"}],
        "alert_rules": [{"name": "spike", "detector": "robust_zscore", "min_score": 6, "severity": "high"}]},
    ("post", "/api/v1/predict"): {"task": "embed", "inputs": _TEXTS[:1], "wait": 10},
    ("post", "/api/v1/predict/batch"): {"task": "embed", "inputs": _TEXTS, "wait": 10},
    ("post", "/api/v1/predict/stream"): {"task": "embed", "inputs": _TEXTS},
    ("post", "/api/v1/predict/pipeline"): {"steps": [{"task": "pii_mask"}, {"task": "embed"}],
                                           "inputs": ["Write to jane.roe@example.org about the invoice."],
                                           "wait": 60},
    ("post", "/v1/embeddings"): {"model": "all-MiniLM-L6-v2", "input": _TEXTS},
    ("post", "/v1/chat/completions"): {"model": "SmolLM2-135M-Instruct", "max_tokens": 8,
                                       "messages": [{"role": "user", "content": "Say hello."}]},
}
# These views read the body only when one is sent (an empty body means the defaults).
OPTIONAL_BODIES = {("post", "/api/v1/models/{name}/rollback"), ("post", "/api/v1/vectors/{collection}/index")}

ACCEPTED = (responses.Accepted, "Not finished within `wait`: the job id and the URL to poll.")
# job_reply (cortex_web/dispatch.py): the job id and the worker's result fields (they differ by task).
JOB_RESULT = (None, "Finished within the wait: job_id and the job's result fields.")
RESPONSES: dict[tuple[str, str], dict[str, tuple[type[BaseModel] | None, str]]] = {
    ("post", "/api/v1/predict"): {"200": (responses.PredictResponse, "The prediction."), "202": ACCEPTED},
    ("post", "/api/v1/predict/batch"): {
        "200": (responses.PredictBatchResponse, "Every item's output; a failed item is {index, error}."),
        "202": ACCEPTED},
    ("post", "/api/v1/predict/pipeline"): {"200": (responses.PipelineResponse, "Every step and the last outputs.")},
    ("get", "/api/v1/jobs/{job_id}"): {"200": (responses.JobResponse, "The job's state, and its result once done.")},
    ("post", "/api/v1/batch/submit"): {"202": (responses.BatchSubmitted, "Accepted; poll progress_url.")},
    ("get", "/api/v1/batch/progress/{job_id}"): {"200": (responses.BatchProgress, "Progress of the batch.")},
    ("get", "/api/v1/batch/results/{job_id}"): {"200": (responses.BatchResultsPage, "A page of results.")},
    ("get", "/api/v1/batch/errors/{job_id}"): {"200": (responses.BatchErrors, "The failed items.")},
    ("post", "/api/v1/keys"): {"201": (responses.KeyCreated, "The new key; its secret is shown only here.")},
    ("post", "/api/v1/documents"): {"200": JOB_RESULT, "202": ACCEPTED},
    ("post", "/api/v1/qa"): {"200": JOB_RESULT, "202": ACCEPTED},
    ("post", "/api/v1/vectors/{collection}"): {"200": JOB_RESULT, "202": ACCEPTED},
    ("post", "/api/v1/vectors/{collection}/search"): {"200": JOB_RESULT, "202": ACCEPTED},
    ("post", "/api/v1/vectors/{collection}/index"): {"200": JOB_RESULT, "202": ACCEPTED},
    # The chat reply's fields (cortex_tasks/runtime/chat/) with the job id; a 202 also names the session.
    ("post", "/api/v1/chat/{session_id}"): {"200": (None, "The reply: job_id and the reply's fields."),
                                            "202": ACCEPTED},
    ("put", "/api/v1/vectors/{collection}"): {
        "200": (responses.Collection, "It already existed with this configuration."),
        "201": (responses.Collection, "Created.")},
    ("post", "/api/v1/training/submit"): {"202": (responses.TrainingSubmitted, "Queued; poll status_url.")},
    ("put", "/api/v1/training/datasets/{dataset}"): {"201": (responses.DatasetStored, "Stored.")},
    ("get", "/api/v1/training/datasets"): {"200": (responses.DatasetList, "The tenant's uploaded datasets.")},
    ("delete", "/api/v1/training/datasets/{dataset}"): {"200": (responses.DatasetDeleted, "Deleted.")},
    ("post", "/api/v1/training/control/{job_id}"): {
        "202": (responses.TrainingControlled, "Done, or asked of the worker; poll status_url.")},
    ("post", "/api/v1/models/{name}/versions/{version}/promote"): {
        "200": (responses.Promoted, "Promoted or retired."),
        "202": (responses.Deploying, "The activation job is still running; poll status_url.")},
    ("get", "/health"): {"200": (responses.Health, "The process answers.")},
    ("get", "/ready"): {"200": (responses.Readiness, "Every check is ok (the details only with a key)."),
                        "503": (responses.Readiness,
                                "A check failed (this body, not an error object; the details only with a key).")},
    ("get", "/api/v1/keys"): {"200": (responses.KeyList, ("The tenant's keys (the platform admin: every "
                                                          "tenant's, or ?tenant='s), without secrets."))},
    ("post", "/api/v1/tenants"): {"201": (responses.TenantCreated, "Created.")},
    ("get", "/api/v1/tenants"): {"200": (responses.TenantList, "Every tenant.")},
    ("delete", "/api/v1/keys/{key_id}"): {"200": (responses.KeyRevoked, "Revoked.")},
    ("get", "/api/v1/vectors"): {"200": (responses.CollectionList, "Every collection.")},
    ("delete", "/api/v1/vectors/{collection}"): {"200": (responses.CollectionDropped, "Dropped.")},
    ("post", "/api/v1/vectors/{collection}/delete"): {"200": (responses.ItemsDeleted, "Deleted.")},
    ("get", "/api/v1/vectors/{collection}/count"): {"200": (responses.ItemCount, "Items (matching the filter).")},
    ("get", "/api/v1/chat/{session_id}"): {"200": (responses.ChatHistory, "The session's messages in order.")},
    ("delete", "/api/v1/chat/{session_id}"): {"200": (responses.ChatCleared, "Forgotten.")},
    ("delete", "/api/v1/documents/{document_id}"): {"200": (responses.DocumentDeleted, "Deleted.")},
    ("get", "/api/v1/audit"): {"200": (responses.AuditPage, ("A page of audit events, newest first (a "
                                                             "model_admin's tenant's; the platform admin's: all)."))},
    ("get", "/api/v1/audit/verify"): {"200": (responses.AuditChainReport,
                                              "The chain checked, intact or not (platform admin).")},
    ("get", "/api/v1/documents"): {"200": (responses.DocumentList, "A page of the indexed documents.")},
    ("get", "/api/v1/health/metrics"): {"200": (responses.QueueHealth, "Queue depths and ready workers.")},
    ("get", "/api/v1/health/resources"): {"200": (responses.HostResources, "The gateway host's CPU load.")},
    ("get", "/api/v1/health/model/{model_id}"): {"200": (responses.ModelHealth, "Where the model is loaded.")},
    ("get", "/api/v1/health/haystack"): {
        "200": (responses.HaystackHealth, "The package and the passage store are usable."),
        "503": (responses.HaystackHealth, "They are not (this body, not an error object).")},
    ("get", "/api/v1/health/cache"): {"200": (responses.CacheHealth, "Hits, misses, L1 and L2.")},
    ("get", "/api/v1/health/langchain"): {"200": (responses.LangchainHealth, "Chat models and memory.")},
    ("get", "/api/v1/models"): {"200": (responses.ModelList, "Registered and bundled models.")},
    ("get", "/api/v1/models/{name}"): {"200": (responses.ModelDetail, "The model.")},
    ("get", "/api/v1/models/{name}/versions/{version}"): {"200": (responses.ModelVersion, "The version.")},
    ("get", "/api/v1/models/{name}/route"): {"200": (responses.ModelRoute, "The version this key is served.")},
    ("post", "/api/v1/models/{name}/rollback"): {"200": (responses.RolledBack, "Rolled back, at once.")},
    ("get", "/api/v1/training/status/{job_id}"): {"200": (responses.TrainingStatus, "The training job's state.")},
    ("get", "/api/v1/training/resources"): {"200": (responses.TrainingResources, "Training capacity and use.")},
    ("get", "/api/v1/training/runs/{name}"): {"200": (responses.TrainingRuns, "The model's runs, compared.")},
    ("get", "/api/v1/usage/openai"): {"200": (responses.OpenAIUsage, "OpenAI tokens and cost.")},
    ("get", "/api/v1/vectors/{collection}"): {"200": (responses.CollectionDetail, "The collection and its size.")},
    ("get", "/api/v1/openapi.json"): {"200": (None, "This document.")},
    ("post", "/api/v1/oauth/token"): {
        "200": (responses.TokenIssued, "The access token."),
        "400": (responses.OAuthErrorResponse, "invalid_request, unsupported_grant_type or invalid_scope."),
        "401": (responses.OAuthErrorResponse,
                "invalid_client: unknown client, wrong secret, revoked or expired key.")},
    ("get", "/api/v1/oauth/jwks.json"): {"200": (responses.Jwks, "The key set.")},
    ("get", "/api/v1/usage"): {"200": (responses.UsageLedger, "Usage and cost per group, and their totals.")},
    ("get", "/v1/models"): {"200": (responses.OpenAIModelList, "The models this key may use, as OpenAI lists them.")},
    ("post", "/v1/embeddings"): {"200": (responses.OpenAIEmbeddings, "The embeddings, in input order.")},
    ("post", "/v1/chat/completions"): {"200": (responses.OpenAIChatCompletion,
                                               "The completion (`stream: true`: Server-Sent Events instead).")},
    # Alerts, alert channels and stream reports (blueprints/alerts.py, blueprints/reports.py).
    ("get", "/api/v1/alerts"): {"200": (alert_responses.AlertPage, "A page of the tenant's alerts, newest first.")},
    ("get", "/api/v1/alerts/{alert_id}"): {"200": (alert_responses.AlertDetail, "The alert, its group and deliveries.")},
    ("post", "/api/v1/alerts/{alert_id}/acknowledge"): {"200": (alert_responses.AlertRecord, "Acknowledged.")},
    ("post", "/api/v1/alerts/{alert_id}/resolve"): {"200": (alert_responses.AlertRecord, "Resolved.")},
    ("post", "/api/v1/alert-channels"): {"201": (alert_responses.AlertChannelRecord, "The new channel.")},
    ("get", "/api/v1/alert-channels"): {"200": (alert_responses.AlertChannelList, "The tenant's channels.")},
    ("delete", "/api/v1/alert-channels/{name}"): {"200": (alert_responses.AlertChannelDeleted, "Deleted.")},
    ("post", "/api/v1/reports"): {"202": (alert_responses.ReportRecord, "Queued; poll its self link.")},
    ("get", "/api/v1/reports"): {"200": (alert_responses.ReportPage, "A page of the tenant's reports, newest first.")},
    ("get", "/api/v1/reports/{report_id}"): {"200": (alert_responses.ReportRecord, "The report's status and links.")},
    ("get", "/api/v1/reports/{report_id}/data"): {"200": (None, "The report's figures.")},
    # Real-time streams (cortex_web/blueprints/streams.py, docs/streams.md).
    ("post", "/api/v1/streams"): {"201": (None, "Declared: the declaration with its id and Redis Stream key."),
                                  "200": (None, "It already existed with this declaration.")},
    ("get", "/api/v1/streams"): {"200": (None, "The tenant's streams: {\"streams\": [declaration, ...]}.")},
    ("get", "/api/v1/streams/{name}"): {"200": (None, "The declaration with length, pending, consumers, rejected (and, with an IsolationForest, its latest fit).")},
    ("delete", "/api/v1/streams/{name}"): {"200": (None, "Deleted: {\"stream\", \"deleted\": true}.")},
    ("post", "/api/v1/streams/{name}/events"): {"202": (None, "Appended: accepted, first_id and last_id.")},
    ("get", "/api/v1/streams/{name}/windows"): {"200": (None, "Stored windows and next_after (null: no more).")},
}
# The OpenAI-compatible routes (/v1, blueprints/openai_compatible.py) answer errors in OpenAI's shape, and
# a streamed chat completion as Server-Sent Events of `data:` lines only (the last one `[DONE]`).
OPENAI_PREFIX = "/v1/"
OPENAI_ERROR_REF = {"$ref": "#/components/schemas/OpenAIErrorResponse"}
OPENAI_ERRORS: dict[str, tuple[str, bool]] = {
    "400": ("The body is invalid, or asks for what Cortex does not offer (param names it).", False),
    "401": ("No key, or an unknown, revoked or expired one (invalid_api_key).", False),
    "403": ("The key's role or its model and task lists do not allow this.", False),
    "404": ("No such model (model_not_found).", False),
    "429": ("Rate limited (rate_limit_exceeded) or the OpenAI budget is spent (insufficient_quota).", True),
    "4XX": ("Another client error: 413 body too large, 415 not JSON.", False),
    "503": ("Overloaded, the model's circuit is open, or OpenAI is not configured.", True),
    "5XX": ("A server or worker failure (502), or the job did not finish in time (504).", False),
}
_OPENAI_STREAM = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"], "properties": {
        "data": {"type": "string", "description": "A chat.completion.chunk as JSON, an {error} object, or "
                                                  "[DONE] last."}}}}}
_AGENT_STREAM = {"text/event-stream": {"schema": {
    "type": "object", "required": ["event", "data"], "properties": {
        "event": {"type": "string", "description": "start; one step per model call; done or error last."},
        "data": {"type": "string", "contentMediaType": "application/json"}}}}}
# Answers whose 200 is JSON, or Server-Sent Events when the body asks for "stream": true.
STREAMED_ALTERNATIVES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/chat/completions"): _OPENAI_STREAM,
    ("post", "/api/v1/agents/{name}/run"): _AGENT_STREAM,
}

# Prompts and agents (blueprints/prompts.py, blueprints/agents.py).
OPTIONAL_BODIES |= {("post", "/api/v1/prompts/{name}/rollback")}
RESPONSES.update({
    ("post", "/api/v1/prompts"): {"201": (responses.PromptVersionBody, "Created; version 1 is in production.")},
    ("get", "/api/v1/prompts"): {"200": (responses.PromptList, "The tenant's prompts.")},
    ("get", "/api/v1/prompts/{name}"): {"200": (responses.PromptDetail, "Versions and production history.")},
    ("get", "/api/v1/prompts/{name}/versions/{version}"): {"200": (responses.PromptVersionBody, "The version.")},
    ("post", "/api/v1/prompts/{name}/versions"): {"201": (responses.PromptVersionBody, "Added, in staging.")},
    ("post", "/api/v1/prompts/{name}/versions/{version}/promote"): {
        "200": (responses.PromptSwitched, "Now in production.")},
    ("post", "/api/v1/prompts/{name}/rollback"): {"200": (responses.PromptSwitched, "Rolled back, at once.")},
    ("post", "/api/v1/prompts/{name}/render"): {"200": (responses.PromptRendered, "The rendered text.")},
    ("post", "/api/v1/agents"): {"201": (responses.AgentBody, "Declared.")},
    ("get", "/api/v1/agents"): {"200": (responses.AgentList, "The tenant's agents.")},
    ("get", "/api/v1/agents/{name}"): {"200": (responses.AgentBody, "The agent.")},
    ("delete", "/api/v1/agents/{name}"): {"200": (responses.AgentDeleted, "Deleted.")},
    ("post", "/api/v1/agents/{name}/run"): {
        "200": (responses.AgentRun, ("Finished within the wait (with \"stream\": true, Server-Sent Events: "
                                     "start, one step per model call, done or error).")),
        "202": ACCEPTED},
})
# Bodies that are not JSON: (media type, schema). The token request is a form (RFC 6749 §4.4.2).
FORM_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/v1/oauth/token"): {
        "type": "object", "required": ["grant_type"],
        "properties": {
            "grant_type": {"type": "string", "const": "client_credentials"},
            "client_id": {"type": "string", "description": "The key's id (instead of HTTP Basic)."},
            "client_secret": {"type": "string", "description": "The key's secret part, or the whole key "
                                                               "(instead of HTTP Basic)."}}},
}
# Public routes limited per client address (limits.limit_by_address): they answer 429 too.
ADDRESS_LIMITED = {("post", "/api/v1/oauth/token")}
# Answers that are not JSON: (media type, schema, description).
_TEXT_BODY = {"type": "string"}
OTHER_MEDIA: dict[tuple[str, str], tuple[str, dict[str, Any], str]] = {
    ("get", "/metrics"): ("text/plain", _TEXT_BODY, "Prometheus text exposition."),
    ("get", "/api/v1/docs"): ("text/html", _TEXT_BODY, "The Swagger UI page."),
    ("get", "/api/v1/models/{name}/versions/{version}/card"): ("text/markdown", _TEXT_BODY, "The model card."),
    ("get", "/api/v1/reports/{report_id}/html"): ("text/html", _TEXT_BODY, "The report page, charts embedded."),
    ("get", "/api/v1/generated/{image_id}"): (
        "image/png", {"type": "string", "contentMediaType": "image/png"},
        "The image's bytes (PNG, or JPEG/WebP as the images API made it)."),
    # For an event stream the schema is each event's (schemathesis checks them one by one).
    ("post", "/api/v1/predict/stream"): (
        "text/event-stream", {"type": "object", "required": ["event", "data"], "properties": {
            "event": {"type": "string", "description": "start; token (generate) or item; done or error last."},
            "data": {"type": "string", "contentMediaType": "application/json"}}},
        "Server-Sent Events: tokens for generate, items otherwise, then a final event (or an error event)."),
    ("get", "/api/v1/streams/{name}/live"): (
        "text/event-stream", {"type": "object", "required": ["event", "data"], "properties": {
            "event": {"type": "string", "description": "ready first; verdicts and window; end last."},
            "data": {"type": "string", "contentMediaType": "application/json"}}},
        "Server-Sent Events: each micro-batch's verdicts and the windows' aggregates as computed."),
}
# Bodies sent as they are (not JSON): (media type, schema, description).
RAW_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    # One event (an object of the stream's declared fields), a batch of them, or an Arrow IPC stream of rows.
    ("post", "/api/v1/streams/{name}/events"): {
        "application/json": {"schema": {"anyOf": [
            {"type": "object", "description": "One event: the stream's declared fields."},
            {"type": "array", "minItems": 1, "maxItems": 10_000, "items": {"type": "object"},
             "description": "A batch of events, appended all or none."}]}},
        "application/vnd.apache.arrow.stream": {"schema": {
            "type": "string", "contentMediaType": "application/vnd.apache.arrow.stream",
            "description": "An Arrow IPC stream, one row per event, columns named as the declared fields."}}},
    ("put", "/api/v1/training/datasets/{dataset}"): {"application/octet-stream": {"schema": {
        "type": "string", "contentMediaType": "application/octet-stream", "minLength": 1,
        "description": "The dataset file: JSON Lines, JSON, CSV or Parquet, as its name's extension says."}}},
}
# Whole-result downloads of GET /batch/results/{job_id}?format=parquet|arrow.
BINARY_RESULTS = {"application/vnd.apache.parquet": {"schema": {"type": "string", "contentMediaType":
                                                                "application/vnd.apache.parquet"}},
                  "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "contentMediaType":
                                                                     "application/vnd.apache.arrow.stream"}}}
PUBLIC_PATHS = {"/health", "/ready", "/metrics", "/api/v1/openapi.json", "/api/v1/docs",
                "/api/v1/docs/assets/{filename}", "/api/v1/oauth/token", "/api/v1/oauth/jwks.json"}
# Public paths that answer a caller with a key more (and refuse a bad key): no key, or either scheme.
OPTIONAL_KEY_PATHS = {"/ready"}
OPTIONAL_SECURITY: list[dict[str, list[str]]] = [{}, {"bearer": []}, {"apiKey": []}, {"oauth2": []}]
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
ERROR_RESPONSES: dict[str, tuple[str, bool]] = {
    "401": (("No key or token, or a bad, revoked or expired one (missing_api_key, invalid_api_key, "
             "invalid_token)."), False),
    "403": (("The key's role lacks the permission this route needs (forbidden), the key is limited to other "
             "tasks or models (task_not_allowed, model_not_allowed; details name the allowed ones), or the "
             "model is a bundled, read-only one (read_only_model)."), False),
    "422": ("The body or query is invalid (invalid_request, invalid_query and task-specific codes).", False),
    "429": ("Rate limited (rate_limited) or a quota is used up; see Retry-After.", True),
    "4XX": (("Another client error, e.g. 400 malformed JSON, 404 unknown job or model, 409 conflict, "
             "413 body too large, 415 not JSON."), False),
    "503": (("Overloaded (overloaded: load shedding or too many requests in flight), the model's circuit is "
             "open (circuit_open), Redis or PostgreSQL is not answering (dependency_unavailable), or a dependency "
             "is not configured; see Retry-After where given."), True),
    "5XX": (("A server or worker failure (500 internal_error, 502 the job failed in the worker, "
             "504 a pipeline step timed out)."), False),
}
PATH_PARAMETER = re.compile(r"<(?:([^:<>]+):)?([^<>]+)>")

# What the views accept in their path parameters, by name, so generated requests reach the view's logic
# instead of its 422 (or, for a job id that is not a UUID, a 404 found without looking).
_UUID = {"type": "string", "format": "uuid",
         "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"}
# check_model_name also refuses '..' anywhere (a lookahead, which JSON Schema's ECMA-262 patterns allow).
_MODEL_NAME = {"type": "string", "pattern": "^(?!.*\\.\\.)" + MODEL_NAME.pattern.removeprefix("^")}
_COLLECTION = {"type": "string", "pattern": COLLECTION_NAME.pattern}
_TENANT = {"type": "string", "pattern": TENANT_ID.pattern.join("^$")}
PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "job_id": _UUID,
    "collection": _COLLECTION,
    "session_id": {"type": "string", "pattern": SESSION_ID.pattern},
    "name": _MODEL_NAME,
    "model_id": _MODEL_NAME,
    "version": {"type": "integer", "minimum": 0},
    # training/datasets.py: an object name whose extension is a dataset format.
    "dataset": {"type": "string", "maxLength": MAX_DATASET_NAME_CHARS,
                "pattern": OBJECT_NAME.pattern.removesuffix("$") + f"\\.({'|'.join(DATASET_FORMATS)})$"},
    "image_id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _page_parameters(default_size: int, max_size: int) -> list[dict[str, Any]]:
    # request_body.positive_int_arg: digits only, at least 1, `max_size` at most.
    return [_query("page", {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_INT, "default": 1}, "The page, from 1."),
            _query("size", {"type": "integer", "minimum": 1, "maximum": max_size, "default": default_size},
                   "Items per page.")]


def query_parameters() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The query parameters each view reads (request.args), with the bounds it checks them against."""
    batch = get_settings().batch
    moment = {"type": "string", "format": "date-time"}
    return {
        ("get", "/api/v1/audit"): [
            _query("type", {"type": "string", "enum": list(EVENT_TYPES)}, "Only events of this type."),
            _query("actor", {"type": "string", "minLength": 1, "maxLength": 64}, "Only this key id's events."),
            _query("since", moment, "Events at or after this time (ISO 8601; before `until`)."),
            _query("until", moment, "Events before this time (ISO 8601)."),
            _query("tenant", _TENANT, "The platform admin: only this tenant's events (default: every tenant's "
                                      "and those of no tenant). A model_admin: its own tenant only."),
            *_page_parameters(50, 200)],
        ("get", "/api/v1/batch/results/{job_id}"): [
            _query("format", {"type": "string", "enum": ["json", "parquet", "arrow"], "default": "json"},
                   "json: a page of results; parquet or arrow: the whole merged result as a file."),
            *_page_parameters(batch.default_page_size, batch.max_page_size)],
        ("get", "/api/v1/documents"): [
            _query("collection", _COLLECTION, "Only this collection's documents."),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 100},
                   "At most this many documents."),
            _query("offset", {"type": "integer", "minimum": 0, "maximum": 10_000_000, "default": 0},
                   "Skip this many documents.")],
        ("delete", "/api/v1/documents/{document_id}"): [
            _query("collection", {**_COLLECTION, "default": "default"}, "The collection holding the document.")],
        ("get", "/api/v1/usage"): [
            _query("from", moment, "Usage at or after this time (ISO 8601); default: the start of this month (UTC)."),
            _query("to", moment, "Usage before this time (ISO 8601; after `from`); default: now."),
            _query("group_by", {"type": "string", "pattern": "^((tenant|key|model)(,(tenant|key|model))*)?$",
                                "default": "tenant,key,model"},
                   "Comma-separated, each at most once: tenant, key, model; empty: the totals only."),
            _query("tenant", _TENANT, "The platform admin: this tenant's usage. Other roles: their own tenant only."),
            _query("all_tenants", {"type": "boolean", "default": False},
                   "The platform admin: every tenant's usage.")],
        ("get", "/api/v1/usage/openai"): [
            _query("since", {"type": "string", "anyOf": [{"format": "date-time"}, {"format": "date"}]},
                   "Usage since this date or time (ISO 8601); default: the start of this month (UTC)."),
            _query("tenant", _TENANT, "The platform admin: only this tenant's usage (default: every tenant's). "
                                      "Other roles: their own tenant only.")],
        ("get", "/api/v1/keys"): [
            _query("tenant", _TENANT, "The platform admin: only this tenant's keys (default: every tenant's). "
                                      "A model_admin: its own tenant only.")],
        ("get", "/api/v1/training/runs/{name}"): [
            _query("history", {"type": "string", "default": "1"},
                   "0 or false: without each run's per-epoch history; anything else: with it.")],
        # Alerts and stream reports (blueprints/alerts.py, blueprints/reports.py).
        ("get", "/api/v1/alerts"): [
            _query("source", {"type": "string", "minLength": 1, "maxLength": 160}, "cortex, or stream:<name>."),
            _query("stream", {"type": "string", "minLength": 1, "maxLength": 160}, "Only this stream's alerts."),
            _query("rule", {"type": "string", "minLength": 1, "maxLength": 160}, "Only this rule's alerts."),
            _query("state", {"type": "string", "enum": ["open", "acknowledged", "resolved"]}, "Only alerts in this state."),
            *_page_parameters(50, 200)],
        ("get", "/api/v1/reports"): [
            _query("stream", {"type": "string", "minLength": 1, "maxLength": 64}, "Only this stream's reports."),
            *_page_parameters(50, 200)],
        ("get", "/api/v1/streams/{name}/windows"): [
            _query("from", {**moment, "pattern": r"^[0-9]{4}-"}, "Windows starting at or after this time (ISO 8601, "
                   "years 2 to 9998; default: `to` - 24 h)."),
            _query("to", {**moment, "pattern": r"^[0-9]{4}-"}, "Windows starting before this time (ISO 8601, years 2 "
                   "to 9998; default: now)."),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 5000, "default": 500},
                   "At most this many windows."),
            _query("after", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                   "The next_after of the previous page.")],
        ("get", "/api/v1/streams/{name}/live"): [
            _query("seconds", {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_INT},
                   "Close after this many seconds (at most CORTEX_STREAM_LIVE_MAX_SECONDS, the default).")],
        ("get", "/api/v1/vectors/{collection}/count"): [
            {"name": "filter", "in": "query", "required": False,
             "description": "A JSON object: count only the items whose metadata match it.",
             "content": {"application/json": {"schema": {"type": "object"}}}}],
    }


def _error_responses(public: bool, optional_key: bool = False) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, (meaning, retry_after) in ERROR_RESPONSES.items():
        if public and status in ("401", "403", "429") and not (optional_key and status == "401"):
            continue
        if optional_key and status == "401":
            meaning = "A key was sent but is unknown, revoked or expired (invalid_api_key); send none, or a good one."
        answers[status] = {"description": meaning, "content": {"application/json": {"schema": ERROR_REF}}}
        if retry_after:
            answers[status]["headers"] = RETRY_AFTER
    return answers


def _openai_error_responses() -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, (meaning, retry_after) in OPENAI_ERRORS.items():
        answers[status] = {"description": meaning, "content": {"application/json": {"schema": OPENAI_ERROR_REF}}}
        if retry_after:
            answers[status]["headers"] = RETRY_AFTER
    return answers


# check_text: not blank, and none of items.CONTROL_CHARACTERS (tab, newline and carriage return are fine).
_CONTROL = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f"
TEXT_PATTERN = f"^[^{_CONTROL}]*[^\\s{_CONTROL}][^{_CONTROL}]*$"


def _text(max_length: int | None = None) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length or max_text_chars(), "pattern": TEXT_PATTERN}


# Image and audio items (core/images/intake.py, core/audio/intake.py; docs/images-and-speech.md). A multipart
# upload of files in the field `inputs` is the other way to send them.
MEDIA_ITEMS: list[dict[str, Any]] = [
    {"type": "object", "title": "Image", "required": ["image"], "additionalProperties": False,
     "properties": {"image": {"type": "string", "minLength": 1, "contentEncoding": "base64",
                              "description": "An image file (JPEG, PNG, GIF, WebP, BMP, TIFF) in base64."}}},
    {"type": "object", "title": "ImageReference", "required": ["image_ref"], "additionalProperties": False,
     "properties": {"image_ref": {"type": "string", "minLength": 1,
                                  "description": "An object of the store under tenants/<your tenant>/."}}},
    {"type": "object", "title": "Recording", "required": ["audio"], "additionalProperties": False,
     "properties": {"audio": {"type": "string", "minLength": 1, "contentEncoding": "base64",
                              "description": "A recording (WAV, FLAC, OGG, MP3, MP4/M4A, WebM) in base64."},
                    "filename": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._ -]{0,120}$"}}},
]


def _describe_requests(schemas: dict[str, Any]) -> None:
    """What pydantic cannot say of the prediction bodies, because the views check it against the catalogue:
    the task names, the inputs' forms, and a model reference's form (schemas.check_model_reference)."""
    model = {"anyOf": [{"type": "string", "pattern": "^(?!.*\\.\\.)" + MODEL_REFERENCE.pattern.removeprefix("^")},
                       {"type": "null"}], "default": None, "title": "Model",
             "description": "A catalogue or registry model name, optionally name@version; default: the "
                            "task's model."}
    # The first step's inputs: texts, or vectors where that step takes them (run_pipeline's validate_inputs).
    schemas["PipelineRequest"]["properties"]["inputs"]["items"] = {"anyOf": [
        _text(), {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": MAX_VECTOR_VALUES}]}
    step = schemas["PipelineStep"]["properties"]
    # The catalogue's task names as a pattern, not an enum: a generated client keeps `task` a plain string
    # (an enum would become a class its callers must use instead).
    task = {"type": "string", "pattern": f"^({'|'.join(sorted(TASKS))})$", "title": "Task",
            "description": f"A catalogue task: {', '.join(sorted(TASKS))}."}
    step["task"] = task
    step["model"] = model
    predict = schemas["PredictRequest"]["properties"]
    predict["task"], predict["model"] = task, model
    # One item of any task: a text, a vector (text_or_vector tasks) or a series (time-series tasks). Which
    # a task takes, and a time series' params, are the views' to check: a per-task variant (anyOf of
    # objects) would turn PredictRequest into a union that generated clients no longer name.
    predict["inputs"]["items"] = {"anyOf": [_text(), {"type": "array", "items": {},
                                                      "maxItems": max(MAX_VECTOR_VALUES, MAX_POINTS)},
                                            *MEDIA_ITEMS]}
    schemas["PipelineRequest"]["properties"]["inputs"]["items"]["anyOf"].extend(MEDIA_ITEMS)
    # The other bodies' rules that their validators (not their field types) enforce.
    if "DocumentIn" in schemas:  # documents/requests.py
        document = schemas["DocumentIn"]["properties"]
        document["content"] = {**_text(MAX_CONTENT_CHARS), "title": "Content"}
        document["id"] = {"anyOf": [_text(MAX_DOCUMENT_ID_CHARS), {"type": "null"}], "default": None, "title": "Id"}
        document["meta"]["propertyNames"] = {"pattern": META_KEY.pattern, "not": {"enum": sorted(RESERVED_META_KEYS)}}
    item_id = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": "^[^\\u0000]*$"}
    if "VectorItem" in schemas:  # blueprints/vectors.py, the store's check_ids
        item = schemas["VectorItem"]
        item["properties"]["id"] = {**item_id, "title": "Id"}
        item["properties"]["text"] = {"anyOf": [_text(), {"type": "null"}], "default": None, "title": "Text"}
    if "DeleteItemsRequest" in schemas:
        schemas["DeleteItemsRequest"]["properties"]["ids"]["items"] = item_id
    if "UpsertRequest" in schemas:  # VectorItem's rule: exactly one of text or vector
        properties = schemas.pop("VectorItem")["properties"]
        properties["vector"] = _vector()
        images = ("image", "image_ref")  # collections of an image model (docs/images-and-speech.md)
        properties["image"], properties["image_ref"] = MEDIA_ITEMS[0]["properties"]["image"], \
            MEDIA_ITEMS[1]["properties"]["image_ref"]
        schemas["UpsertRequest"]["properties"]["items"]["items"] = {"anyOf": [
            _object_of(schemas, properties, "VectorTextItem", required=("id", "text"), without=("vector", *images)),
            _object_of(schemas, properties, "VectorValuesItem", required=("id", "vector"), without=("text", *images)),
            _object_of(schemas, properties, "VectorImageItem", required=("id", "image"),
                       without=("text", "vector", "image_ref")),
            _object_of(schemas, properties, "VectorImageRefItem", required=("id", "image_ref"),
                       without=("text", "vector", "image"))]}
    if "SearchRequest" in schemas:  # exactly one of text or vector; the vector-only fields with a vector
        properties = schemas["SearchRequest"]["properties"]
        properties["text"], properties["vector"] = _text(), _vector()
        properties["image"], properties["image_ref"] = MEDIA_ITEMS[0]["properties"]["image"], \
            MEDIA_ITEMS[1]["properties"]["image_ref"]
        vector_only = ("include_vectors", "effort", "exact")
        schemas["SearchRequest"] = {
            "title": "SearchRequest", "description": "A search by text or image (embedded by the collection's "
                                                     "model) or by a vector of the collection's dimension.",
            "anyOf": [_object_of(schemas, properties, "TextSearch", required=("text",),
                                 without=("vector", "image", "image_ref", *vector_only)),
                      _object_of(schemas, properties, "VectorSearch", required=("vector",),
                                 without=("text", "image", "image_ref")),
                      _object_of(schemas, properties, "ImageSearch", required=("image",),
                                 without=("text", "vector", "image_ref", *vector_only)),
                      _object_of(schemas, properties, "ImageRefSearch", required=("image_ref",),
                                 without=("text", "vector", "image", *vector_only))]}
    if "CreateCollectionRequest" in schemas:  # vector_store.index_from_dict; a collection without a model
        def bounded(low: int, high: int) -> dict[str, Any]:
            return {"anyOf": [{"type": "integer", "minimum": low, "maximum": high}, {"type": "null"}], "default": None}
        hnsw = {"type": {"const": "hnsw", "default": "hnsw"}, "m": bounded(2, 100),
                "ef_construction": bounded(4, 1000), "ef_search": bounded(1, 1000)}
        ivfflat = {"type": {"const": "ivfflat"}, "lists": bounded(1, 32768), "probes": bounded(1, 32768)}
        schemas.pop("IndexSpec")
        collection = schemas["CreateCollectionRequest"]
        collection["properties"]["index"] = {"title": "Index", "description": "HNSW (default) or IVFFlat, with "
                                             "that type's parameters (ef_construction >= 2 * m; probes <= lists).",
                                             "anyOf": [_object_of(schemas, hnsw, "HnswIndexSpec", required=()),
                                                       _object_of(schemas, ivfflat, "IvfflatIndexSpec",
                                                                  required=("type",))]}
        # Its vectors are given, so their dimension must be.
        collection["if"] = {"properties": {"model": {"type": "null"}}, "required": ["model"]}
        collection["then"] = {"required": ["dimension"], "properties": {"dimension": {"type": "integer"}}}
    if "AgentDeclaration" in schemas:  # agents/declarations.check_declaration and the prompt reference's form
        agent = schemas["AgentDeclaration"]["properties"]
        offered = get_settings().agent_models
        agent["name"] = {**_MODEL_NAME, "title": "Name"}
        agent["model"] = {"type": "string", "default": agent["model"].get("default"), "title": "Model",
                          "pattern": f"^({'|'.join(map(re.escape, offered))})$",
                          "description": f"A chat model offered for agents (CORTEX_AGENT_MODELS): {', '.join(offered)}."}
        agent["prompt"] = {"type": "string", "title": "Prompt", "maxLength": 160,
                           "pattern": "^(?!.*\\.\\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@[1-9][0-9]{0,8})?$",
                           "description": "The system prompt: `name@version`, or `name` for its production version."}
    if "ToolSpec" in schemas:  # agents/declarations.ToolSpec: which fields each kind of tool takes
        tool = schemas.pop("ToolSpec")["properties"]

        def models_of(*tasks: str) -> dict[str, Any]:
            names = sorted({model.name for model in MODELS.values() if model.task in tasks})
            return {"anyOf": [{"type": "string", "pattern": f"^({'|'.join(map(re.escape, names))})$"},
                              {"type": "null"}], "default": None, "title": "Model"}

        text_tasks = {"type": "string", "pattern": f"^({'|'.join(TEXT_TASKS)})$", "title": "Task"}
        shapes = {
            "PredictTool": ({**tool, "tool": {"const": "predict"}, "task": text_tasks, "model": models_of(*TEXT_TASKS)},
                            ("collections",), ("tool", "task")),
            "ForecastTool": ({**tool, "tool": {"const": "forecast"}, "model": models_of("forecast")},
                             ("task", "collections"), ("tool",)),
            "CollectionTool": ({**tool, "tool": {"enum": ["vector_search", "document_qa"]}}, ("task", "model"),
                               ("tool",)),
        }
        schemas["AgentDeclaration"]["properties"]["tools"]["items"] = {"anyOf": [
            _object_of(schemas, properties, title, required=required, without=without)
            for title, (properties, without, required) in shapes.items()]}
    if "CreateKeyRequest" in schemas:  # checked against the configured tiers, which settings may change
        tiers = sorted(get_settings().rate_limit_tiers)
        schemas["CreateKeyRequest"]["properties"]["tier"] = {
            "type": "string", "default": "default", "title": "Tier", "pattern": f"^({'|'.join(map(re.escape, tiers))})$",
            "description": f"A configured rate-limit tier: {', '.join(tiers)}."}
    if "TrainingSubmitRequest" in schemas:
        training = schemas["TrainingSubmitRequest"]["properties"]
        training["kind"] = {"type": "string", "pattern": f"^({'|'.join(sorted(KINDS))})$", "title": "Kind",
                            "description": f"A training kind: {', '.join(sorted(KINDS))}."}
        training["model"] = {**_MODEL_NAME, "title": "Model", "description": "The registry model it trains."}
        training["dataset"] = _training_dataset(schemas)
        # intake.check_schedule: a cron expression, a metric with its threshold, or both.
        schedule = schemas.pop("ScheduleSpec")["properties"]
        schedule["cron"], schedule["threshold"] = _cron(), {"type": "number", "title": "Threshold"}
        schedule["metric"] = {"type": "string", "minLength": 1, "maxLength": 64, "title": "Metric"}
        training["schedule"] = {"title": "Schedule", "default": None, "anyOf": [
            _object_of(schemas, schedule, "CronSchedule", required=("cron",), dependent={"metric": ["threshold"]}),
            _object_of(schemas, schedule, "MetricSchedule", required=("metric", "threshold")), {"type": "null"}]}


def _object_of(schemas: dict[str, Any], properties: dict[str, Any], title: str, required: tuple[str, ...],
               without: tuple[str, ...] = (), dependent: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """One shape of a body whose fields depend on each other (exactly one of text or vector, say): a whole
    object per shape under components/schemas (its $ref returned), which a generated client reads as one of
    a union of small classes."""
    schemas[title] = {"type": "object", "title": title, "required": list(required), "additionalProperties": False,
                      "properties": {name: schema for name, schema in properties.items() if name not in without},
                      **({"dependentRequired": dependent} if dependent else {})}
    return {"$ref": f"#/components/schemas/{title}"}


def _vector() -> dict[str, Any]:
    """items.check_vector: finite numbers, at most MAX_VECTOR_VALUES (a collection's own dimension is its own)."""
    return {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": MAX_VECTOR_VALUES,
            "title": "Vector"}


def _cron() -> dict[str, Any]:
    """A five-field cron expression (minute hour day-of-month month day-of-week): lists of *, */step, a value
    or a range. Celery's crontab (schedules.parse_cron) reads more (steps of ranges, names), but not every
    such combination: the document states the forms that always parse."""
    def field(value: str) -> str:
        atom = f"(\\*(/[1-9][0-9]?)?|{value}(-{value})?)"
        return f"{atom}(,{atom})*"
    fields = [field("[1-5]?[0-9]"), field("(1?[0-9]|2[0-3])"), field("([1-9]|[12][0-9]|3[01])"),
              field("([1-9]|1[0-2])"), field("[0-6]")]
    return {"type": "string", "maxLength": 64, "pattern": f"^{' '.join(fields)}$", "title": "Cron",
            "description": "minute hour day-of-month month day-of-week, e.g. `0 3 * * 1`."}


def _training_dataset(schemas: dict[str, Any]) -> dict[str, Any]:
    """intake.check_dataset's rule: exactly one source, inline rows or a reference, and a known format.
    One object shape per source: a generated client names it as a union of small classes."""
    fmt = {"type": "string", "pattern": f"^({'|'.join(DATASET_FORMATS)})$",
           "description": "How the data is encoded; default: the stored name's extension."}
    rows = {"type": "array", "items": {}, "minItems": 1, "maxItems": training_config().max_rows,
            "description": "The rows inline (objects whose fields the training kind names)."}
    stored = {"type": "string", "minLength": 1, "maxLength": MAX_OBJECT_NAME_CHARS, "pattern": OBJECT_NAME.pattern,
              "description": "A name in the object store."}
    shapes = [("rows", rows, "InlineDataset"), ("object", stored, "StoredDataset")]
    if get_settings().uses_s3:  # object_store.resolve_uri; a file:// URI names what `object` names, so unstated
        shapes.append(("uri", {"type": "string", "pattern": "^s3://[^/]+/.+$", "description": "s3://bucket/name."},
                       "DatasetUri"))
    return {"title": "Dataset", "description": "Inline rows, or one reference to data in the object store.",
            "anyOf": [_object_of(schemas, {source: schema, "format": fmt}, title, required=(source,))
                      for source, schema, title in shapes]}


def _components(bodies: dict[tuple[str, str], type[BaseModel]]) -> tuple[dict[Any, Any], dict[str, Any]]:
    """Every request and response model's schema under components/schemas; returns the {"$ref": ...} of each
    (model, mode) and the schemas. Requests in validation mode (what is accepted), responses in
    serialization mode (what is sent)."""
    requests = {model for model in bodies.values()}
    answers = {model for by_status in RESPONSES.values() for model, _ in by_status.values() if model is not None}
    answers.add(responses.ErrorResponse)
    answers.add(responses.OpenAIErrorResponse)
    wanted = ([(model, "validation") for model in sorted(requests, key=lambda m: m.__name__)]
              + [(model, "serialization") for model in sorted(answers, key=lambda m: m.__name__)])
    refs, schemas = models_json_schema(wanted, ref_template="#/components/schemas/{model}")
    defined = schemas.get("$defs", {})
    _describe_requests(defined)
    return refs, defined


def _multipart_upload(schemas: dict[str, Any], model: type[BaseModel], ref: dict[str, str]) -> dict[str, Any]:
    """The multipart/form-data form a route that takes uploads reads (request_body._multipart_body): the JSON
    body in the field `request`, or its fields one by one (those in JSON_FORM_FIELDS as JSON, text fields as
    text; a field the form cannot carry, a list or a number, goes in `request`), and files in the field
    `inputs` where the body has inputs, each an input after those of `request`. A field given both ways is
    the form field's. Nothing else: another field or file is refused (422)."""
    body = _named(schemas, ref)
    shapes = [_named(schemas, shape) for shape in body["anyOf"]] if "anyOf" in body else [body]
    properties: dict[str, Any] = {"request": {
        "type": "object", "description": f"The body ({model.__name__}) as JSON; the other fields and the files "
                                         "add to it."}}
    encoding: dict[str, Any] = {"request": {"contentType": "application/json"}}
    for shape in shapes:
        for name, schema in shape["properties"].items():
            if name in properties:
                continue
            if name in JSON_FORM_FIELDS:
                properties[name], encoding[name] = schema, {"contentType": "application/json"}
            elif name == "inputs":  # the field _multipart_body reads files from
                properties[name] = {"type": "array", "items": {"type": "string", "format": "binary"},
                                    "description": "Files, each one input: an image, or a recording for "
                                                   "transcribe."}
                encoding[name] = {"contentType": "application/octet-stream"}
            elif (text := _text_form_of(schemas, schema)) is not None:
                properties[name] = text
    # The body in `request`, or the required fields of one of its shapes as form fields and files (with
    # none of another shape's: a search by text and image at once is refused).
    complete = [{"required": ["request"]}] + [
        {"required": list(shape["required"]),
         "propertyNames": {"enum": ["request", *(name for name in shape["properties"] if name in properties)]}}
        for shape in shapes if shape.get("required") and all(name in properties for name in shape["required"])]
    upload: dict[str, Any] = {"type": "object", "title": f"{model.__name__}Upload", "properties": properties,
                              "additionalProperties": False}
    if any(shape.get("required") for shape in shapes):
        if len(complete) == 1:
            upload["required"] = ["request"]
        else:
            upload["anyOf"] = complete
    return {"schema": upload, "encoding": encoding}


def _named(schemas: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    return schemas[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _text_form_of(schemas: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of a body field sent as a plain text form field, if the view takes it so: string fields
    (a null, which a form cannot send, is the field left out); None for any other."""
    schema = _named(schemas, schema)
    if schema.get("type") == "string":
        return {key: value for key, value in schema.items() if key != "default"}
    strings = [branch for branch in schema.get("anyOf", []) if branch.get("type") == "string"]
    others = [branch for branch in schema.get("anyOf", []) if branch.get("type") not in ("string", "null")]
    if len(strings) == 1 and not others:
        return {**strings[0], **{key: schema[key] for key in ("title", "description") if key in schema}}
    return None


def build_spec(app: Flask, blueprint_bodies: dict[tuple[str, str], type[BaseModel]] | None = None) -> dict[str, Any]:
    """`blueprint_bodies`: the request models the blueprints declare, by (method, path)."""
    bodies = {**REQUEST_BODIES, **(blueprint_bodies or {})}
    refs, schemas = _components(bodies)
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    query = query_parameters()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = PATH_PARAMETER.sub(r"{\2}", rule.rule)
        converters = {name: converter for converter, name in PATH_PARAMETER.findall(rule.rule)}
        view = app.view_functions[rule.endpoint]
        doc = (view.__doc__ or rule.endpoint).strip()
        public = path in PUBLIC_PATHS
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            method = method.lower()
            # An operationId must be unique; one view serving several methods or rules would repeat it.
            operation_id = rule.endpoint if rule.endpoint not in operation_ids else f"{rule.endpoint}_{method}"
            operation_ids.add(operation_id)
            documented = RESPONSES.get((method, path), {})
            answers: dict[str, Any] = {"200": {"description": "OK"}} if not documented else {}
            if (method, path) in OTHER_MEDIA:
                media_type, media_schema, meaning = OTHER_MEDIA[(method, path)]
                answers["200"] = {"description": meaning, "content": {media_type: {"schema": media_schema}}}
            for status, (model, meaning) in documented.items():
                schema = {"type": "object"} if model is None else refs[(model, "serialization")]
                answers[status] = {"description": meaning, "content": {"application/json": {"schema": schema}}}
            if (method, path) == ("get", "/api/v1/batch/results/{job_id}"):
                answers["200"]["content"].update(BINARY_RESULTS)
            if (method, path) == ("get", "/api/v1/generated/{image_id}"):  # other formats than PNG: bytes
                answers["200"]["content"]["application/octet-stream"] = {"schema": {"type": "string",
                                                                                    "format": "binary"}}
            # A status the route documents itself (/ready's 503 is its own body) is not an error object.
            errors = (_openai_error_responses() if path.startswith(OPENAI_PREFIX)
                      else _error_responses(public, path in OPTIONAL_KEY_PATHS))
            for status, answer in errors.items():
                answers.setdefault(status, answer)
            if (method, path) in STREAMED_ALTERNATIVES:
                answers["200"]["content"].update(STREAMED_ALTERNATIVES[(method, path)])
            if (method, path) in ADDRESS_LIMITED:
                answers.setdefault("429", _error_responses(False)["429"])
            operation: dict[str, Any] = {
                "operationId": operation_id,
                "summary": doc.splitlines()[0],
                "parameters": [*({"name": name, "in": "path", "required": True,
                                  "schema": PATH_SCHEMAS.get(name, {"type": "integer"} if converters[name] == "int"
                                                             else {"type": "string"})}
                                 for name in sorted(rule.arguments)),
                               *query.get((method, path), [])],
                "responses": answers,
            }
            if "\n" in doc:
                operation["description"] = doc
            body_model = bodies.get((method, path))
            if body_model is not None:
                media: dict[str, Any] = {"schema": refs[(body_model, "validation")]}
                if (method, path) in REQUEST_EXAMPLES:
                    media["examples"] = {"example": {"value": REQUEST_EXAMPLES[(method, path)]}}
                operation["requestBody"] = {"required": (method, path) not in OPTIONAL_BODIES,
                                            "content": {"application/json": media}}
            if body_model is not None and getattr(view, "takes_uploads", False):
                operation["requestBody"]["content"]["multipart/form-data"] = _multipart_upload(
                    schemas, body_model, refs[(body_model, "validation")])
            if (method, path) in RAW_BODIES:
                operation["requestBody"] = {"required": True, "content": RAW_BODIES[(method, path)]}
            if (method, path) in FORM_BODIES:
                operation["requestBody"] = {"required": True, "content": {
                    "application/x-www-form-urlencoded": {"schema": FORM_BODIES[(method, path)]}}}
                operation["security"] = [{}, {"clientBasic": []}]
            if path.startswith(OPENAI_PREFIX):  # as OpenAI's clients send it: Authorization: Bearer <key>
                operation["security"] = [{"bearer": []}]
            elif not public:
                operation["security"] = [{"bearer": []}, {"apiKey": []}, {"oauth2": []}]
            elif path in OPTIONAL_KEY_PATHS:
                operation["security"] = [dict(option) for option in OPTIONAL_SECURITY]
            paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Cortex API", "version": "1.0.0",
                 "description": "Submit AI jobs, poll or wait for results. Errors are JSON objects with an "
                                "error code, a message and details."},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API key, or an access token (JWT) from /api/v1/oauth/token "
                                          "or the configured identity provider."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "oauth2": {"type": "oauth2", "description": "Client credentials: client id = the key's id, "
                                                            "client secret = its secret part.",
                           "flows": {"clientCredentials": {"tokenUrl": "/api/v1/oauth/token", "scopes": {}}}},
                "clientBasic": {"type": "http", "scheme": "basic",
                                "description": "The token route's client authentication: key id and secret."}}},
        "paths": dict(sorted(paths.items())),
    }
