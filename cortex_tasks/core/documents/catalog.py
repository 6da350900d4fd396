"""The indexed documents as the gateway sees them: list, count, delete, health, in plain SQL over the
passage table that the Haystack store writes (migration 0005).

Why not through Haystack here: importing haystack imports torch, and the gateway never imports torch.
Listing and deleting need no model, so they run in the gateway like vector-by-number operations do;
indexing and question answering need MiniLM (and SmolLM2) and run in the gpu worker.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from cortex_tasks.core.documents.requests import RESERVED_META_KEYS
from cortex_tasks.core.storage.db import get_engine

TABLE = "document_passages"
KEYWORD_INDEX = f"{TABLE}_keyword_idx"
EMBEDDING_DIMENSION = 384
MAX_LIST_LIMIT = 500


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


def list_documents(collection: str | None, limit: int = 100, offset: int = 0) -> tuple[list[DocumentSummary], int]:
    """One summary per document (passage count, size, the user's metadata), newest first, and the total."""
    scope = "WHERE meta->>'collection' = :collection" if collection is not None else ""
    params: dict[str, Any] = {"collection": collection, "limit": limit, "offset": offset}
    # The user's metadata is the same on every passage of a document: read it from the first passage.
    query = text(f"""
        SELECT meta->>'collection' AS collection, meta->>'document_id' AS document_id,
               count(*) AS passages,
               coalesce(max((meta->>'document_chars')::int), 0) AS chars,
               (array_agg(meta ORDER BY (meta->>'passage_index')::int))[1] AS first_meta,
               max(meta->>'indexed_at') AS indexed_at
        FROM {TABLE} {scope}
        GROUP BY 1, 2
        ORDER BY max(meta->>'indexed_at') DESC, 1, 2
        LIMIT :limit OFFSET :offset""")
    total_query = text(f"SELECT count(DISTINCT (meta->>'collection', meta->>'document_id')) FROM {TABLE} {scope}")
    with get_engine().connect() as conn:
        rows = conn.execute(query, params).all()
        total = int(conn.execute(total_query, params).scalar_one())
    return [DocumentSummary(row.collection, row.document_id, int(row.passages), int(row.chars),
                            user_meta(row.first_meta or {}), row.indexed_at) for row in rows], total


def user_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata the user gave, without Cortex's and Haystack's bookkeeping keys."""
    return {key: value for key, value in meta.items() if key not in RESERVED_META_KEYS}


def delete_document(collection: str, document_id: str) -> int:
    """Delete a document's passages; returns how many were deleted (0: no such document)."""
    with get_engine().begin() as conn:
        result = conn.execute(text(f"DELETE FROM {TABLE} WHERE meta->>'collection' = :collection "
                                   "AND meta->>'document_id' = :document_id"),
                              {"collection": collection, "document_id": document_id})
    return int(result.rowcount or 0)


def collection_counts() -> dict[str, dict[str, int]]:
    """Per collection: documents and passages."""
    with get_engine().connect() as conn:
        rows = conn.execute(text(f"SELECT meta->>'collection', count(DISTINCT meta->>'document_id'), count(*) "
                                 f"FROM {TABLE} GROUP BY 1 ORDER BY 1")).all()
    return {row[0]: {"documents": int(row[1]), "passages": int(row[2])} for row in rows}


def table_ready() -> dict[str, Any]:
    """Whether the passage table and its keyword index exist (the migration ran) and its vector width."""
    with get_engine().connect() as conn:
        dimension = conn.execute(text(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(:table) AND attname = 'embedding'"),
            {"table": TABLE}).scalar()
        keyword_index = conn.execute(text("SELECT to_regclass(:index) IS NOT NULL"),
                                     {"index": KEYWORD_INDEX}).scalar()
    return {"table": TABLE, "exists": dimension is not None, "embedding_dimension": dimension,
            "keyword_index": bool(keyword_index)}
