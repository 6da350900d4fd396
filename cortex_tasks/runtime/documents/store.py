"""A Haystack DocumentStore over Cortex's vector store, and the retriever that searches it by embedding.

The store holds the passages of every document collection; each collection's passages live in their
own vector collection (`core/documents/catalog.py`), chosen by the passage's `meta["collection"]` on
writes and by the filter's `meta.collection` condition on reads. A Haystack Document maps to a vector
item as: id -> id, embedding -> vector, meta and content -> JSONB metadata (the content under
`catalog.CONTENT_KEY`), score -> cosine similarity (1 - the store's cosine distance, the score the
Haystack pgvector store gave before).

Filters: the vector store filters by equality and by any-of on metadata, so this store takes Haystack
filters that are one comparison, or an AND of comparisons, with `==` (a scalar) or `in` (a list) on
`meta.<key>` fields. Any other filter raises FilterError rather than being answered wrongly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.document_stores.errors import DuplicateDocumentError
from haystack.document_stores.types import DuplicatePolicy
from haystack.errors import FilterError

from cortex_tasks.core.documents import catalog
from cortex_tasks.core.storage.vector_store import MAX_K, CollectionConflict, CollectionNotFound, Hit


@dataclass(frozen=True)
class Scope:
    """A Haystack filter as the vector store takes it. `collections` None: every document collection."""

    collections: list[str] | None = None
    equals: dict[str, Any] = field(default_factory=dict)
    any_of: dict[str, list[Any]] = field(default_factory=dict)
    empty: bool = False  # an `in` with no values: nothing matches


def scope(filters: dict[str, Any] | None) -> Scope:
    if not filters:
        return Scope()
    if "conditions" in filters:
        if filters.get("operator") != "AND":
            raise FilterError("the passage store takes only AND of comparisons")
        conditions = filters["conditions"]
    else:
        conditions = [filters]
    equals: dict[str, Any] = {}
    any_of: dict[str, list[Any]] = {}
    for condition in conditions:
        name, operator, value = condition.get("field"), condition.get("operator"), condition.get("value")
        if "conditions" in condition or not isinstance(name, str) or not name.startswith("meta."):
            raise FilterError("the passage store filters only on meta.<key> fields, without nesting")
        key = name.removeprefix("meta.")
        if key in equals or key in any_of:
            raise FilterError(f"the passage store takes one condition per field ({name!r} repeats)")
        if operator == "==":
            equals[key] = value
        elif operator == "in" and isinstance(value, list):
            any_of[key] = value
        else:
            raise FilterError(f"the passage store takes only '==' and 'in' (a list); not {operator!r}")
    empty = any(not values for values in any_of.values())
    collections: list[str] | None = None
    if "collection" in equals:
        collections = [equals.pop("collection")]
    elif "collection" in any_of:
        collections = any_of.pop("collection")
    return Scope(collections, equals, any_of, empty)


def _document(hit: Hit, score: float | None = None) -> Document:
    meta = dict(hit.metadata)
    content = meta.pop(catalog.CONTENT_KEY, None)
    return Document(id=hit.id, content=content, meta=meta, embedding=hit.vector, score=score)


class CortexPassageStore:
    """Haystack's DocumentStore protocol over Cortex's vector store (safe to share between threads:
    each call takes its own pooled connection)."""

    def __init__(self) -> None:
        self.vectors = catalog.passage_store()

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CortexPassageStore:
        return default_from_dict(cls, data)

    def _collections(self, selected: Scope) -> list[str]:
        return catalog.document_collections() if selected.collections is None else selected.collections

    def count_documents(self) -> int:
        return self.count_documents_by_filter({})

    def count_documents_by_filter(self, filters: dict[str, Any]) -> int:
        selected = scope(filters)
        if selected.empty:
            return 0
        total = 0
        for collection in self._collections(selected):
            name = catalog.passage_collection(collection)
            try:
                if selected.any_of:
                    total += len(self.vectors.items(name, selected.equals or None, selected.any_of))
                else:
                    total += self.vectors.count(name, selected.equals or None)
            except CollectionNotFound:
                continue
        return total

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        selected = scope(filters)
        if selected.empty:
            return []
        documents: list[Document] = []
        for collection in self._collections(selected):
            try:
                hits = self.vectors.items(catalog.passage_collection(collection), selected.equals or None,
                                          selected.any_of or None, include_vectors=True)
            except CollectionNotFound:
                continue
            documents.extend(_document(hit) for hit in hits)
        return documents

    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Passages by collection; NONE means FAIL, as in Haystack's pgvector store."""
        batches: dict[str, list[Document]] = {}
        for document in documents:
            collection = document.meta.get("collection")
            if not isinstance(collection, str) or document.embedding is None:
                raise ValueError(f"passage {document.id} needs meta['collection'] and an embedding")
            batches.setdefault(collection, []).append(document)
        written = 0
        for collection, batch in batches.items():
            name = catalog.passage_collection(collection)
            self.vectors.ensure_collection(name, catalog.EMBEDDING_DIMENSION, model=catalog.EMBEDDING_MODEL)
            if policy == DuplicatePolicy.SKIP:
                existing = {hit.id for hit in self.vectors.get(name, [document.id for document in batch])}
                batch = [document for document in batch if document.id not in existing]
            if not batch:
                continue
            ids = [document.id for document in batch]
            vectors = [document.embedding for document in batch]
            metadata = [{**document.meta, catalog.CONTENT_KEY: document.content or ""} for document in batch]
            if policy == DuplicatePolicy.OVERWRITE:
                self.vectors.upsert(name, ids, vectors, metadata)
            else:
                try:
                    self.vectors.insert(name, ids, vectors, metadata)
                except CollectionConflict as exc:
                    raise DuplicateDocumentError(str(exc)) from exc
            written += len(batch)
        return written

    def delete_documents(self, document_ids: list[str]) -> None:
        # Passage ids hash their collection in (components.passage_id): an id is in one collection only.
        for collection in catalog.document_collections():
            try:
                self.vectors.delete(catalog.passage_collection(collection), document_ids)
            except CollectionNotFound:
                continue

    def delete_passages_from(self, collection: str, document_id: str, first_index: int) -> int:
        """Delete a document's passages from `first_index` on (left by a longer earlier version)."""
        name = catalog.passage_collection(collection)
        try:
            passages = self.vectors.items(name, {"document_id": document_id})
        except CollectionNotFound:
            return 0
        stale = [hit.id for hit in passages if int(hit.metadata.get("passage_index", 0)) >= first_index]
        return self.vectors.delete(name, stale) if stale else 0

    def embedding_retrieval(self, query_embedding: list[float], filters: dict[str, Any] | None = None,
                            top_k: int = 10) -> list[Document]:
        """The top_k passages nearest the query, best first, across the collections the filter names.

        Through each collection's HNSW index; when metadata filters leave fewer than top_k of the index
        scan's candidates, the vector store completes the answer with an exact scan, so a filter never
        hides passages that match it."""
        selected = scope(filters)
        if selected.empty:
            return []
        hits: list[Hit] = []
        for collection in self._collections(selected):
            try:
                result = self.vectors.search(catalog.passage_collection(collection), query_embedding,
                                             min(top_k, MAX_K), selected.equals or None,
                                             any_of=selected.any_of or None)
            except CollectionNotFound:
                continue
            hits.extend(result.hits)
        hits.sort(key=lambda hit: hit.distance)
        return [_document(hit, score=1.0 - hit.distance) for hit in hits[:top_k]]


@component
class CortexEmbeddingRetriever:
    """The passages nearest a query embedding, from a CortexPassageStore."""

    def __init__(self, document_store: CortexPassageStore, top_k: int = 10,
                 filters: dict[str, Any] | None = None) -> None:
        self.document_store, self.top_k, self.filters = document_store, top_k, filters

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, document_store=self.document_store.to_dict(), top_k=self.top_k,
                               filters=self.filters)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CortexEmbeddingRetriever:
        parameters = data["init_parameters"]
        parameters["document_store"] = CortexPassageStore.from_dict(parameters["document_store"])
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, query_embedding: list[float], filters: dict[str, Any] | None = None,
            top_k: int | None = None) -> dict[str, list[Document]]:
        documents = self.document_store.embedding_retrieval(
            query_embedding, filters if filters is not None else self.filters, top_k or self.top_k)
        return {"documents": documents}
