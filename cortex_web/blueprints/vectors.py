"""Vector collections over HTTP.

Each tenant has its own collections (two tenants may both have `products`): the store finds a collection by
name within the caller's tenant, so another tenant's collection answers 404 `collection_not_found` exactly
like a missing one. Reading needs `read`; creating, writing and searching `predict`; dropping a collection
or deleting its items `admin` (model_admin): deletion is an administrative act on the tenant's data, not a
deployment, so it does not ride on `deploy`. A key limited to named models may embed texts only with those
(the collection's embedding model is checked before any job is queued).

Vectors given as numbers are written and searched right here (PostgreSQL + pgvector, no model needed).
Texts must be embedded first, and the gateway never loads a model: text upserts and text searches
become jobs on the gpu queue (`cortex.vectors.upsert_items`, `cortex.vectors.search_text`), answered
within the wait budget like a prediction (200 with the result, or 202 with the job to poll).

- `GET    /api/v1/vectors`                          the collections
- `PUT    /api/v1/vectors/{collection}`             create (dimension, metric, index, model)
- `GET    /api/v1/vectors/{collection}`             describe, with the item count and sizes
- `DELETE /api/v1/vectors/{collection}`             drop it and its items
- `POST   /api/v1/vectors/{collection}`             upsert `{"items": [{"id", "text" | "vector" | "image" |
                                                    "image_ref", "metadata"?}]}`
- `POST   /api/v1/vectors/{collection}/search`      `{"text" | "vector" | "image" | "image_ref", "k", "filter"?}`
- `POST   /api/v1/vectors/{collection}/delete`      `{"ids": [...]}`
- `GET    /api/v1/vectors/{collection}/count`       `?filter={"key": value}` (JSON)
- `POST   /api/v1/vectors/{collection}/index`       (re)build the vector index over the current rows
"""
from __future__ import annotations

import json
from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cortex_tasks.core.auth.permissions import check_allowed
from cortex_tasks.core.auth.roles import ADMIN, PREDICT, READ
from cortex_tasks.core.catalogue import MODELS
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import (
    VectorIndexMessage,
    VectorSearchMessage,
    VectorUpsertMessage,
)
from cortex_tasks.core.images.intake import stage_item
from cortex_tasks.core.jobs.store import NewJob
from cortex_tasks.core.queues import GPU, MAINTENANCE, priority_of
from cortex_tasks.core.request_fields import Storable, WaitSeconds, storable
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.vector_store import (
    MAX_DIMENSION,
    MAX_K,
    check_collection_name,
)
from cortex_tasks.core.tenancy import current_tenant
from cortex_tasks.core.validation.items import check_text, check_vector
from cortex_tasks.core.vectors import service
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.dispatch import job_reply, submit_and_wait
from cortex_web.errors import ApiError
from cortex_web.limits import limit_work
from cortex_web.request_body import accepts_images, parse_body

bp = Blueprint("vectors", __name__, url_prefix="/api/v1")

MAX_UPSERT_ITEMS = service.MAX_ITEMS
FilterValue = str | int | float | bool | None


def _check_text(value: str | None, where: str) -> str | None:
    """The shared text rules (items.py: an ItemError, 422 invalid_input, as on /predict)."""
    return None if value is None else check_text(value, where, {"field": where})


def _check_vector(value: list[float] | None, where: str) -> list[float] | None:
    """The shared vector rules (at most 4096 finite numbers); the collection's dimension is the store's."""
    return None if value is None else check_vector(value, where, {"field": where})


class VectorItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=256)
    text: str | None = None
    vector: list[float] | None = Field(default=None, min_length=1)
    # An image for a collection of an image model: base64, or an object under tenants/<tenant>/.
    image: str | None = None
    image_ref: str | None = None
    metadata: Storable[dict[str, Any] | None] = None

    _text = field_validator("text")(classmethod(lambda cls, value: _check_text(value, "items.text")))
    _vector = field_validator("vector")(classmethod(lambda cls, value: _check_vector(value, "items.vector")))

    @model_validator(mode="after")
    def _one_source(self) -> VectorItem:
        if sum(value is not None for value in (self.text, self.vector, self.image, self.image_ref)) != 1:
            raise ValueError("give exactly one of text, vector, image or image_ref")
        return self


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[VectorItem] = Field(min_length=1, max_length=MAX_UPSERT_ITEMS)
    wait: WaitSeconds = Field(default=None, ge=0, le=60)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | None = None
    vector: list[float] | None = Field(default=None, min_length=1)
    image: str | None = None  # base64; searches a collection of an image model
    image_ref: str | None = None
    k: int = Field(default=10, ge=1, le=MAX_K)
    filter: Storable[dict[str, FilterValue] | None] = Field(default=None, max_length=16)
    include_vectors: bool = False
    # Search effort for this query: ef_search (HNSW) or probes (IVFFlat); exact: a sequential scan.
    effort: int | None = Field(default=None, ge=1, le=1000)
    exact: bool = False
    wait: WaitSeconds = Field(default=None, ge=0, le=30)

    _text = field_validator("text")(classmethod(lambda cls, value: _check_text(value, "text")))
    _vector = field_validator("vector")(classmethod(lambda cls, value: _check_vector(value, "vector")))

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if sum(value is not None for value in (self.text, self.vector, self.image, self.image_ref)) != 1:
            raise ValueError("give exactly one of text, vector, image or image_ref")
        if self.vector is None and (self.include_vectors or self.effort is not None or self.exact):
            raise ValueError("include_vectors, effort and exact apply to vector queries")
        return self


class IndexSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["hnsw", "ivfflat"] = "hnsw"
    m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None
    lists: int | None = None
    probes: int | None = None

    def as_spec(self) -> dict[str, Any]:
        return {key: value for key, value in self.model_dump().items() if value is not None}


class CreateCollectionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dimension: int | None = Field(default=None, ge=1, le=MAX_DIMENSION)
    metric: Literal["cosine", "l2", "inner_product"] = "cosine"
    index: IndexSpec = Field(default_factory=IndexSpec)
    # The embedding model for `text` items; null for a collection of given vectors only.
    model: str | None = service.DEFAULT_EMBEDDING_MODEL
    # Build the vector index later (POST .../index), after a bulk load: required for a good IVFFlat.
    defer_index: bool = False


class DeleteItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    ids: list[str] = Field(min_length=1, max_length=MAX_UPSERT_ITEMS)


class BuildIndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    wait: WaitSeconds = Field(default=None, ge=0, le=60)


REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("put", "/api/v1/vectors/{collection}"): CreateCollectionRequest,
    ("post", "/api/v1/vectors/{collection}"): UpsertRequest,
    ("post", "/api/v1/vectors/{collection}/search"): SearchRequest,
    ("post", "/api/v1/vectors/{collection}/delete"): DeleteItemsRequest,
    ("post", "/api/v1/vectors/{collection}/index"): BuildIndexRequest,
}


# The store's errors (VectorStoreError, JobInputError) reach the gateway's one error handler unchanged:
# their codes and statuses are the answer's.
def _collection_name(collection: str) -> str:
    return check_collection_name(collection)


def _body(model: type[BaseModel]) -> Any:
    return parse_body(model, get_settings().max_json_depth)


@bp.get("/vectors")
@require(READ)
def list_collections() -> Response:
    """The vector collections of the caller's tenant."""
    return jsonify({"collections": [item.as_dict() for item in service.vector_store().list_collections()]})


@bp.put("/vectors/<collection>")
@require(PREDICT)
@audited("collection.create")
def create_collection(collection: str) -> tuple[Response, int]:
    """Create a collection (idempotent for the same configuration; 409 for another one)."""
    name = _collection_name(collection)
    body = _body(CreateCollectionRequest)
    check_allowed(current_principal(), None, body.model)
    created, new = service.create_collection(name, body.dimension, body.metric, body.index.as_spec(), body.model,
                                             created_by=current_principal().key_id,
                                             build_index=not body.defer_index)
    return jsonify(created.as_dict()), 201 if new else 200


@bp.get("/vectors/<collection>")
@require(READ)
def describe_collection(collection: str) -> Response:
    """A collection's configuration, item count and sizes."""
    return jsonify(service.vector_store().describe(_collection_name(collection)))


@bp.delete("/vectors/<collection>")
@require(ADMIN)
@audited("collection.delete")
def drop_collection(collection: str) -> Response:
    """Drop a collection and all its items."""
    if not service.vector_store().drop_collection(_collection_name(collection)):
        raise ApiError(404, "collection_not_found", f"No vector collection named {collection!r}.")
    return jsonify({"collection": collection, "dropped": True})


@bp.post("/vectors/<collection>")
@accepts_images()
@require(PREDICT)
@limit_work
def upsert(collection: str) -> tuple[Response, int]:
    """Insert or replace items by id; texts are embedded by a worker."""
    name = _collection_name(collection)
    body = _body(UpsertRequest)
    items = [item.model_dump(exclude_none=True) for item in body.items]
    principal = current_principal()
    if not any("text" in item or "image" in item or "image_ref" in item for item in items):
        return jsonify(service.upsert_items(name, items, created_by=principal.key_id)), 200
    images = [index for index, item in enumerate(items) if "image" in item or "image_ref" in item]
    model = service.embedding_model(name, missing_ok=True, images=bool(images))
    check_allowed(principal, None, model)
    _check_takes_images(name, model, bool(images), any("text" in item for item in items))
    if images:
        for index in images:  # checked and stored now; the worker embeds the stored bytes
            item = items[index]
            source = {key: item.pop(key) for key in ("image", "image_ref") if key in item}
            item["image"] = stage_item(source, current_tenant(), f"items[{index}]", {"index": index})
    settings = get_settings()
    wait = settings.default_wait_seconds if body.wait is None else body.wait
    submitted = submit_and_wait(
        NewJob(owner=principal.key_id, kind="vectors", task="vectors.upsert", model=None,
               priority=priority_of("normal"), total=len(items)),
        task_names.VECTORS_UPSERT_ITEMS, GPU,
        lambda job_id, reply_to: VectorUpsertMessage(job_id=job_id, reply_to=reply_to, tenant=current_tenant(),
                                                     collection=name, items=items, created_by=principal.key_id),
        wait)
    return job_reply(submitted)


@bp.post("/vectors/<collection>/search")
@accepts_images()
@require(PREDICT)
@limit_work
def search(collection: str) -> tuple[Response, int]:
    """The k nearest items to a text or a vector, with optional metadata equality filters."""
    name = _collection_name(collection)
    body = _body(SearchRequest)
    if body.vector is not None:
        result = service.vector_store().search(name, body.vector, body.k, body.filter, exact=body.exact,
                                               effort=body.effort, include_vectors=body.include_vectors)
        return jsonify({"collection": name, "metric": result.metric, "strategy": result.strategy, "k": body.k,
                        "results": [hit.as_dict() for hit in result.hits],
                        "timings": {"search_ms": result.elapsed_ms}}), 200
    # A missing collection is a 404 before any job is queued; its model is the one the key must be allowed.
    model = service.embedding_model(name)
    check_allowed(current_principal(), None, model)
    image = None
    if body.image is not None or body.image_ref is not None:
        _check_takes_images(name, model, images=True, texts=False)
        source = {"image": body.image} if body.image is not None else {"image_ref": body.image_ref}
        image = stage_item(source, current_tenant(), "image" if body.image is not None else "image_ref")
    else:
        _check_takes_images(name, model, images=False, texts=True)
    wait = get_settings().default_wait_seconds if body.wait is None else body.wait
    submitted = submit_and_wait(
        NewJob(owner=current_principal().key_id, kind="vectors", task="vectors.search", model=None,
               priority=priority_of("high"), total=1),
        task_names.VECTORS_SEARCH_TEXT, GPU,
        lambda job_id, reply_to: VectorSearchMessage(job_id=job_id, reply_to=reply_to, tenant=current_tenant(),
                                                     collection=name, text=body.text, image=image, k=body.k,
                                                     filter=body.filter), wait)
    return job_reply(submitted)


def _check_takes_images(collection: str, model: str | None, images: bool, texts: bool) -> None:
    """Images go to collections of an image model, texts to the others: 422 before any job is queued."""
    takes_images = model is not None and model in MODELS and MODELS[model].task == "image_embed"
    if model is not None and (texts if takes_images else images):
        kind = "images" if takes_images else "texts"
        raise ApiError(422, "wrong_input_kind", f"Collection {collection!r} embeds {kind} with {model}; send "
                       f"{kind} (or vectors) to it.", {"model": model})


@bp.post("/vectors/<collection>/delete")
@require(ADMIN)
@audited("vectors.delete")
def delete_items(collection: str) -> Response:
    """Delete items by id."""
    name = _collection_name(collection)
    body = _body(DeleteItemsRequest)
    deleted = service.vector_store().delete(name, body.ids)
    return jsonify({"collection": name, "deleted": deleted})


@bp.get("/vectors/<collection>/count")
@require(READ)
def count_items(collection: str) -> Response:
    """How many items the collection holds (matching `?filter=<JSON object>` when given)."""
    name = _collection_name(collection)
    raw = request.args.get("filter")
    filters = None
    if raw:
        try:
            filters = json.loads(raw, parse_constant=lambda constant: float("nan"))
        except ValueError:
            raise ApiError(400, "invalid_filter", "filter must be a JSON object") from None
        if not isinstance(filters, dict):
            raise ApiError(400, "invalid_filter", "filter must be a JSON object")
        try:
            storable(filters, "filter")
        except ValueError as exc:
            raise ApiError(400, "invalid_filter", str(exc)) from None
    return jsonify({"collection": name, "count": service.vector_store().count(name, filters)})


@bp.post("/vectors/<collection>/index")
@require(PREDICT)
@audited("collection.index")
def build_index(collection: str) -> tuple[Response, int]:
    """(Re)build the vector index over the items the collection holds now (a job on the maintenance queue)."""
    name = _collection_name(collection)
    body = _body(BuildIndexRequest) if request.get_data(cache=True) else BuildIndexRequest()
    service.vector_store().get_collection(name)  # a missing collection is a 404 before any job is queued
    wait = get_settings().default_wait_seconds if body.wait is None else body.wait
    submitted = submit_and_wait(
        NewJob(owner=current_principal().key_id, kind="vectors", task="vectors.index", model=None,
               priority=priority_of("normal"), total=1),
        task_names.VECTORS_BUILD_INDEX, MAINTENANCE,
        lambda job_id, reply_to: VectorIndexMessage(job_id=job_id, reply_to=reply_to, tenant=current_tenant(),
                                                    collection=name), wait)
    return job_reply(submitted)
