"""document passages: the Haystack document store of POST /documents and POST /qa

Revision ID: 0005
Revises: 0003

The table has exactly the layout haystack's `PgvectorDocumentStore` (pgvector-haystack) creates for
itself, so the store finds it ready and never issues DDL at run time: schema changes stay in
migrations. One row per passage; `meta` holds the user's metadata beside Cortex's own keys
(`collection`, `document_id`, `passage_index`, ...), see cortex_tasks/core/documents/requests.py.
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

# The MiniLM dimension. (Migration 0007 moves these passages into the vector store and drops the table.)
TABLE = "document_passages"
EMBEDDING_DIMENSION = 384


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(sa.text(
        f"CREATE TABLE {TABLE} ("
        "id VARCHAR(128) PRIMARY KEY, "
        f"embedding vector({EMBEDDING_DIMENSION}), "
        "content TEXT, "
        "blob_data BYTEA, blob_meta JSONB, blob_mime_type VARCHAR(255), "
        "meta JSONB)"))
    # Keyword retrieval (PgvectorKeywordRetriever) ranks with to_tsvector('english', content).
    op.execute(sa.text(f"CREATE INDEX {TABLE}_keyword_idx ON {TABLE} USING GIN (to_tsvector('english', content))"))
    # Every query is scoped to a collection, and re-indexing, listing and deleting go by document.
    op.execute(sa.text(f"CREATE INDEX {TABLE}_collection_document_idx ON {TABLE} "
                       "((meta->>'collection'), (meta->>'document_id'))"))


def downgrade() -> None:
    op.execute(sa.text(f"DROP TABLE IF EXISTS {TABLE}"))
