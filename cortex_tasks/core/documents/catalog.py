"""The indexed documents as the gateway sees them: list, count, delete, health, through Cortex's vector
store, where the document pipelines keep their passages.

Each document collection is one vector collection named `documents:<collection>` (a reserved name: the
/vectors API can neither see nor touch it). One item per passage: its stable id, its MiniLM vector, and
as metadata the passage's text (under CONTENT_KEY) beside the user's metadata and Cortex's keys
(`collection`, `document_id`, `passage_index`, `passage_count`, `document_chars`, `indexed_by`,
`indexed_at`).

Tenants: the passage collections live in the vector store, which finds every collection within the tenant
in scope (storage/vector_store.py), so each tenant has its own `documents:<collection>` and a listing,
a deletion or a retrieval for POST /qa never reaches another tenant's passages.

Why not through Haystack here: importing haystack imports torch, and the gateway never imports torch.
Listing and deleting need no model, so they run in the gateway like vector-by-number operations do;
indexing and question answering need MiniLM (and SmolLM2) and run in the gpu worker.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cortex_tasks.core.documents.requests import RESERVED_META_KEYS
from cortex_tasks.core.storage.vector_store import CollectionNotFound, VectorStore

OWNER = "documents"
EMBEDDING_DIMENSION = 384
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# The model POST /qa writes its answer with (runtime/documents/components.py uses the same), for per-model
# key limits: a key limited to other models may still ask with `generate: false`.
GENERATOR_MODEL = "SmolLM2-135M-Instruct"
# The passage's text, under a key no user metadata key can take (they are identifiers, without ':').
CONTENT_KEY = "passage:content"
MAX_LIST_LIMIT = 500
# A passage item holds its text (a document is at most 50,000 characters) and up to 32 metadata values
# of 1,000 characters; both are checked when the request comes in. This bound only keeps an item
# within reason, JSON escapes included.
MAX_PASSAGE_BYTES = 1_048_576

_store = VectorStore(max_metadata_bytes=MAX_PASSAGE_BYTES, owner=OWNER)


def passage_store() -> VectorStore:
    return _store


def passage_collection(collection: str) -> str:
    """The vector collection that holds a document collection's passages."""
    return f"{OWNER}:{collection}"


def document_collections() -> list[str]:
    """The document collections that hold passages, by name."""
    prefix = f"{OWNER}:"
    return [item.name.removeprefix(prefix) for item in _store.list_collections(reserved=True)]


@dataclass(frozen=True)
class DocumentSummary:
    collection: str
    document_id: str
    passages: int
    characters: int
    meta: dict[str, Any]
    indexed_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.document_id, "collection": self.collection, "passages": self.passages,
                "characters": self.characters, "meta": self.meta, "indexed_at": self.indexed_at}


def _summaries(collection: str) -> list[DocumentSummary]:
    try:
        # The user's metadata is the same on every passage of a document: read it from the first passage
        # (its text left out: a listing does not show it).
        groups = _store.groups(passage_collection(collection), "document_id", first_by="passage_index",
                               omit=[CONTENT_KEY])
    except CollectionNotFound:
        return []
    return [DocumentSummary(collection, group.value or "", group.count, int(group.first.get("document_chars") or 0),
                            user_meta(group.first), group.first.get("indexed_at")) for group in groups]


def list_documents(collection: str | None, limit: int = 100, offset: int = 0) -> tuple[list[DocumentSummary], int]:
    """One summary per document (passage count, size, the user's metadata), newest first, and the total."""
    collections = [collection] if collection is not None else document_collections()
    summaries = [summary for name in collections for summary in _summaries(name)]
    # Newest first, then by collection and id: two stable sorts (ISO timestamps sort as text).
    summaries.sort(key=lambda summary: (summary.collection, summary.document_id))
    summaries.sort(key=lambda summary: summary.indexed_at or "", reverse=True)
    return summaries[offset:offset + limit], len(summaries)


def user_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata the user gave, without Cortex's and Haystack's bookkeeping keys (nor the text)."""
    return {key: value for key, value in meta.items() if key not in RESERVED_META_KEYS and key != CONTENT_KEY}


def delete_document(collection: str, document_id: str) -> int:
    """Delete a document's passages; returns how many were deleted (0: no such document)."""
    try:
        return _store.delete_where(passage_collection(collection), {"document_id": document_id})
    except CollectionNotFound:
        return 0


def collection_counts() -> dict[str, dict[str, int]]:
    """Per collection: documents and passages (a collection whose documents were all deleted is left out)."""
    counts: dict[str, dict[str, int]] = {}
    for name in document_collections():
        try:
            groups = _store.groups(passage_collection(name), "document_id", first_by="passage_index",
                                   omit=[CONTENT_KEY])
        except CollectionNotFound:  # dropped meanwhile
            continue
        if groups:
            counts[name] = {"documents": len(groups), "passages": sum(group.count for group in groups)}
    return counts


def store_ready() -> dict[str, Any]:
    """Whether the vector store answers, and the passage collections' vector width (MiniLM's 384)."""
    collections = _store.list_collections(reserved=True)
    other = sorted(item.name for item in collections if item.dimension != EMBEDDING_DIMENSION)
    return {"store": "cortex vector store", "exists": True, "embedding_dimension": EMBEDDING_DIMENSION,
            "collections_of_another_dimension": other}
