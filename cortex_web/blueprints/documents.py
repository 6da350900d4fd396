"""Documents and question answering over the Haystack document store.

Per tenant: a key lists, deletes and retrieves from its own tenant's documents only (the vector store
scopes every collection to the tenant; another tenant's document answers 404 like a missing one).
Listing needs `read`; indexing and asking `predict`; deleting a document `admin` (model_admin), as for
vector collections. A key limited to named models must be allowed MiniLM (and SmolLM2 when the answer is
generated).

Indexing and answering need MiniLM (and SmolLM2), which only the gpu worker loads: they become jobs
on the gpu queue (`cortex.documents.index_documents`, `cortex.documents.answer_question`), answered
within the wait budget like a prediction (200 with the result, or 202 with the job to poll at
GET /jobs/{id}). Listing and deleting need no model and read the passage table directly.

- `POST   /api/v1/documents`         `{"documents": [{"id"?, "content", "meta"?}], "collection"?}` index (replace by id)
- `GET    /api/v1/documents`         `?collection=&limit=&offset=` the indexed documents with passage counts
- `DELETE /api/v1/documents/{id}`    `?collection=` remove a document's passages
- `POST   /api/v1/qa`                `{"question", "top_k"?, "collection"?, "filters"?, "generate"?}` answer
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel

from cortex_tasks.core.auth.permissions import check_allowed
from cortex_tasks.core.auth.roles import ADMIN, PREDICT, READ
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.job_messages import DocumentIndexMessage, QuestionMessage
from cortex_tasks.core.documents import catalog
from cortex_tasks.core.documents.requests import (
    COLLECTION_NAME,
    DEFAULT_COLLECTION,
    MAX_DOCUMENT_ID_CHARS,
    IndexRequest,
    QuestionRequest,
)
from cortex_tasks.core.jobs.store import NewJob
from cortex_tasks.core.queues import GPU, priority_of
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import current_tenant
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.dispatch import job_reply, submit_and_wait
from cortex_web.errors import ApiError
from cortex_web.limits import limit_work
from cortex_web.request_body import parse_body

bp = Blueprint("documents", __name__, url_prefix="/api/v1")

REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/api/v1/documents"): IndexRequest,
    ("post", "/api/v1/qa"): QuestionRequest,
}


def _wait(requested: float | None) -> float:
    return get_settings().default_wait_seconds if requested is None else requested


def _collection_arg(required: bool = False) -> str | None:
    value = request.args.get("collection")
    if value is None:
        return DEFAULT_COLLECTION if required else None
    if not COLLECTION_NAME.match(value):
        raise ApiError(422, "invalid_collection_name", "A collection name is 1-64 characters: letters, digits, "
                       "'_', '-', '.', starting with a letter or digit.", {"collection": value[:80]})
    return value


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(422, "invalid_query", f"{name} must be an integer from {low} to {high}", {name: raw[:40]})
    return value


@bp.post("/documents")
@require(PREDICT)
@limit_work
def index_documents() -> tuple[Response, int]:
    """Index documents into the Haystack store: split into passages, embed, write (an existing id is replaced)."""
    body = parse_body(IndexRequest, get_settings().max_json_depth)
    principal = current_principal()
    check_allowed(principal, None, catalog.EMBEDDING_MODEL)
    documents = [document.model_dump(exclude_none=True) for document in body.documents]
    submitted = submit_and_wait(
        NewJob(owner=principal.key_id, kind="documents", task="documents.index", model=None,
               priority=priority_of("normal"), total=len(documents)),
        task_names.DOCUMENTS_INDEX, GPU,
        lambda job_id, reply_to: DocumentIndexMessage(job_id=job_id, reply_to=reply_to, tenant=current_tenant(),
                                                      collection=body.collection, documents=documents,
                                                      indexed_by=principal.key_id),
        _wait(body.wait))
    return job_reply(submitted)


@bp.get("/documents")
@require(READ)
def list_documents() -> Response:
    """The indexed documents (all collections, or `?collection=`), newest first, with passage counts."""
    collection = _collection_arg()
    limit = _int_arg("limit", 100, 1, catalog.MAX_LIST_LIMIT)
    offset = _int_arg("offset", 0, 0, 10_000_000)
    documents, total = catalog.list_documents(collection, limit, offset)
    return jsonify({"documents": [document.as_dict() for document in documents], "total": total,
                    "limit": limit, "offset": offset, "collections": catalog.collection_counts()})


@bp.delete("/documents/<path:document_id>")
@require(ADMIN)
@audited("document.delete")
def delete_document(document_id: str) -> Response:
    """Delete a document and its passages from a collection (`?collection=`, default "default")."""
    collection = _collection_arg(required=True)
    if len(document_id) > MAX_DOCUMENT_ID_CHARS:
        raise ApiError(422, "invalid_document_id", f"A document id is at most {MAX_DOCUMENT_ID_CHARS} characters.")
    deleted = catalog.delete_document(collection or DEFAULT_COLLECTION, document_id)
    if not deleted:
        raise ApiError(404, "document_not_found", f"No document {document_id!r} in collection {collection!r}.",
                       {"collection": collection, "document_id": document_id})
    return jsonify({"collection": collection, "document_id": document_id, "deleted": True,
                    "passages_deleted": deleted})


@bp.post("/qa")
@require(PREDICT)
@limit_work
def answer_question() -> tuple[Response, int]:
    """Answer a question from the indexed documents: the answer, an extractive answer and the sources."""
    body = parse_body(QuestionRequest, get_settings().max_json_depth)
    check_allowed(current_principal(), None, catalog.EMBEDDING_MODEL)
    if body.generate:
        check_allowed(current_principal(), None, catalog.GENERATOR_MODEL)
    arguments: dict[str, Any] = body.model_dump(exclude={"wait"})
    submitted = submit_and_wait(
        NewJob(owner=current_principal().key_id, kind="documents", task="documents.qa", model=None,
               priority=priority_of("normal"), total=1),
        task_names.DOCUMENTS_ANSWER, GPU,
        lambda job_id, reply_to: QuestionMessage(job_id=job_id, reply_to=reply_to, tenant=current_tenant(),
                                                 **arguments), _wait(body.wait))
    return job_reply(submitted)
