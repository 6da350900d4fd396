"""document passages move into Cortex's vector store

Revision ID: 0007
Revises: 0005

The document pipelines now keep their passages in vector collections (core/documents/catalog.py): one
collection `documents:<collection>` per document collection, in the layout VectorStore.create_collection
makes (table `vectors_<id>`: id, embedding, metadata, updated_at; a GIN index on metadata; an HNSW
cosine index with the default parameters). Each row of `document_passages` becomes one item: same id,
same vector, and as metadata its `meta` plus its text under "passage:content". Rows without an embedding
(none that Cortex wrote) cannot be searched in either store and are left out. Then `document_passages`
is dropped. `vector_collections.name` grows to 80 characters for the `documents:` prefix on a 64-character
collection name.

Downgrade moves the passages back into a `document_passages` table as 0005 made it.
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

# Must match cortex_tasks.core.documents.catalog (OWNER, CONTENT_KEY, EMBEDDING_DIMENSION) and the
# default HnswIndex of cortex_tasks.core.storage.vector_store.
PREFIX = "documents:"
CONTENT_KEY = "passage:content"
DIMENSION = 384
MODEL = "all-MiniLM-L6-v2"
HNSW = '{"m": 16, "ef_construction": 200, "ef_search": 64}'
OLD_TABLE = "document_passages"
# sa.text() reads ":word" as a bind parameter; a backslash keeps the colon a colon.
SQL_PREFIX, SQL_CONTENT_KEY = PREFIX.replace(":", "\\:"), CONTENT_KEY.replace(":", "\\:")


def upgrade() -> None:
    op.alter_column("vector_collections", "name", type_=sa.String(80), existing_type=sa.String(64))
    # Names and identifiers are built inside PostgreSQL with format('%I'), from the catalogue's integer key.
    op.execute(sa.text(f"""
        DO $$
        DECLARE
            source_collection text;
            collection_id integer;
            item_table text;
        BEGIN
            FOR source_collection IN
                SELECT DISTINCT meta->>'collection' FROM {OLD_TABLE}
                WHERE embedding IS NOT NULL AND meta->>'collection' IS NOT NULL
            LOOP
                INSERT INTO vector_collections (name, dimension, metric, index_type, index_params, index_state,
                                                model, created_by)
                VALUES ('{SQL_PREFIX}' || source_collection, {DIMENSION}, 'cosine', 'hnsw', '{HNSW}'::jsonb,
                        'pending', '{MODEL}', NULL)
                RETURNING id INTO collection_id;
                item_table := format('vectors_%s', collection_id);
                EXECUTE format('CREATE TABLE %I (id text PRIMARY KEY, embedding vector({DIMENSION}) NOT NULL, '
                               'metadata jsonb NOT NULL DEFAULT ''{{}}''::jsonb, '
                               'updated_at timestamptz NOT NULL DEFAULT now())', item_table);
                EXECUTE format('INSERT INTO %I (id, embedding, metadata) '
                               'SELECT id, embedding, coalesce(meta, ''{{}}''::jsonb) '
                               '|| jsonb_build_object(%L, coalesce(content, '''')) '
                               'FROM {OLD_TABLE} WHERE embedding IS NOT NULL AND meta->>''collection'' = %L',
                               item_table, '{SQL_CONTENT_KEY}', source_collection);
                EXECUTE format('CREATE INDEX %I ON %I USING gin (metadata jsonb_path_ops)',
                               item_table || '_metadata_idx', item_table);
                EXECUTE format('CREATE INDEX %I ON %I USING hnsw (embedding vector_cosine_ops) '
                               'WITH (m = 16, ef_construction = 200)', item_table || '_embedding_idx', item_table);
                UPDATE vector_collections SET index_state = 'ready', index_built_at = now()
                WHERE id = collection_id;
            END LOOP;
        END $$;
    """))  # nosec B608 - module constants only; no data enters the SQL text
    op.execute(sa.text(f"DROP TABLE {OLD_TABLE}"))


def downgrade() -> None:
    op.execute(sa.text(
        f"CREATE TABLE {OLD_TABLE} (id VARCHAR(128) PRIMARY KEY, embedding vector({DIMENSION}), content TEXT, "
        "blob_data BYTEA, blob_meta JSONB, blob_mime_type VARCHAR(255), meta JSONB)"))
    op.execute(sa.text(f"CREATE INDEX {OLD_TABLE}_keyword_idx ON {OLD_TABLE} "
                       "USING GIN (to_tsvector('english', content))"))
    op.execute(sa.text(f"CREATE INDEX {OLD_TABLE}_collection_document_idx ON {OLD_TABLE} "
                       "((meta->>'collection'), (meta->>'document_id'))"))
    op.execute(sa.text(f"""
        DO $$
        DECLARE
            collection_id integer;
        BEGIN
            FOR collection_id IN SELECT id FROM vector_collections WHERE starts_with(name, '{SQL_PREFIX}') LOOP
                EXECUTE format('INSERT INTO {OLD_TABLE} (id, embedding, content, meta) '
                               'SELECT id, embedding, metadata->>%L, metadata - %L FROM %I',
                               '{SQL_CONTENT_KEY}', '{SQL_CONTENT_KEY}', format('vectors_%s', collection_id));
                EXECUTE format('DROP TABLE %I', format('vectors_%s', collection_id));
                DELETE FROM vector_collections WHERE id = collection_id;
            END LOOP;
        END $$;
    """))  # nosec B608 - module constants only; no data enters the SQL text
    op.alter_column("vector_collections", "name", type_=sa.String(64), existing_type=sa.String(80))
