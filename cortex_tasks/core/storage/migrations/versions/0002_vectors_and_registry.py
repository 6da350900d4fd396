"""vector collections and the model registry

Revision ID: 0002
Revises: 0001

Each vector collection's items live in a table of their own (`vectors_<id>`), created at run time by
storage/vector_store.py; this migration only creates the catalogue that names them.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _timestamp(name: str, nullable: bool = True, default: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable,
                     server_default=sa.func.now() if default else None)


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "vector_collections",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("dimension", sa.Integer, nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("index_type", sa.String(16), nullable=False),
        sa.Column("index_params", JSONB, nullable=False),
        sa.Column("index_state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("model", sa.String(128)),
        sa.Column("created_by", sa.String(64)),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("index_built_at"),
        sa.CheckConstraint("dimension BETWEEN 1 AND 16000", name="ck_vector_collections_dimension"),
        sa.CheckConstraint("metric IN ('cosine', 'l2', 'inner_product')", name="ck_vector_collections_metric"),
        sa.CheckConstraint("index_type IN ('hnsw', 'ivfflat')", name="ck_vector_collections_index_type"),
    )
    op.create_table(
        "registry_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("last_version", sa.Integer, nullable=False, server_default="0"),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("updated_at", nullable=False, default=True),
    )
    op.create_table(
        "registry_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("registry_models.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False, server_default="staging"),
        sa.Column("traffic_percent", sa.Float),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("framework", sa.String(64), nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("artifact_size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("artifact_encrypted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("metrics", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("parameters", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("data_fingerprint", sa.String(128)),
        sa.Column("description", sa.Text),
        sa.Column("created_by", sa.String(64)),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("stage_changed_at"),
        _timestamp("ready_at"),
        sa.UniqueConstraint("model_id", "version", name="uq_registry_versions_model_version"),
        sa.CheckConstraint("stage IN ('staging', 'canary', 'production', 'archived')",
                           name="ck_registry_versions_stage"),
        sa.CheckConstraint("traffic_percent IS NULL OR traffic_percent BETWEEN 0 AND 100",
                           name="ck_registry_versions_traffic"),
    )
    op.create_index("uq_registry_versions_one_production", "registry_versions", ["model_id"], unique=True,
                    postgresql_where=sa.text("stage = 'production'"))
    op.create_index("uq_registry_versions_one_canary", "registry_versions", ["model_id"], unique=True,
                    postgresql_where=sa.text("stage = 'canary'"))
    op.create_table(
        "registry_deployments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("registry_models.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("traffic_percent", sa.Float),
        sa.Column("previous_version", sa.Integer),
        sa.Column("actor", sa.String(64)),
        sa.Column("job_id", sa.String(36)),
        sa.Column("error", JSONB),
        sa.Column("details", JSONB),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("finished_at"),
    )
    op.create_index("ix_registry_deployments_model_created", "registry_deployments", ["model_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_registry_deployments_model_created", "registry_deployments")
    op.drop_table("registry_deployments")
    op.drop_index("uq_registry_versions_one_canary", "registry_versions")
    op.drop_index("uq_registry_versions_one_production", "registry_versions")
    op.drop_table("registry_versions")
    op.drop_table("registry_models")
    # The per-collection item tables go with their catalogue.
    op.execute("""
        DO $$
        DECLARE item_table text;
        BEGIN
            FOR item_table IN SELECT format('vectors_%s', id) FROM vector_collections LOOP
                EXECUTE format('DROP TABLE IF EXISTS %I', item_table);
            END LOOP;
        END $$;
    """)
    op.drop_table("vector_collections")
