"""tenants: every key and every stored resource belongs to one

Revision ID: 0008
Revises: 0004, 0006, 0007 (it joins the three branches: it changes tables of each)

Creates `tenants` with the tenant `default`, which receives every existing key and resource, so an
upgraded installation behaves as before for its existing keys. Adds `tenant` (not null, default
'default', indexed) to jobs, vector collections, registered models, their versions and deployments,
training runs and schedules, OpenAI usage and chat sessions and messages; and to api_keys with the
per-model permission lists `models` and `tasks` (null: all). The default fills existing rows only: a
new resource row must name its tenant. Names unique before become unique per
tenant: vector collections and registered models by (tenant, name), training schedules and chat
sessions by their primary key (tenant, id).

Downgrade refuses when a tenant other than `default` owns anything (it would merge their names).
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = ("0004", "0006", "0007")
branch_labels = None
depends_on = None

DEFAULT = "default"
OWNED_TABLES = ("jobs", "vector_collections", "registry_models", "registry_versions", "registry_deployments",
                "training_runs", "training_schedules", "openai_usage", "chat_sessions", "chat_messages")


def _add_tenant(table: str, keep_default: bool = False) -> None:
    op.add_column(table, sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False,
                                   server_default=DEFAULT))
    if not keep_default:
        # The default only fills the existing rows: a new row that names no tenant is refused (NOT NULL)
        # rather than silently given to `default`.
        op.alter_column(table, "tenant", server_default=None)
    op.create_index(f"ix_{table}_tenant", table, ["tenant"])


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.execute(sa.text("INSERT INTO tenants (id, name) VALUES (:id, 'Default tenant')").bindparams(id=DEFAULT))

    _add_tenant("api_keys", keep_default=True)
    op.add_column("api_keys", sa.Column("models", postgresql.JSONB()))
    op.add_column("api_keys", sa.Column("tasks", postgresql.JSONB()))
    for table in OWNED_TABLES:
        _add_tenant(table)

    op.drop_constraint("vector_collections_name_key", "vector_collections", type_="unique")
    op.create_unique_constraint("uq_vector_collections_tenant_name", "vector_collections", ["tenant", "name"])
    op.drop_constraint("registry_models_name_key", "registry_models", type_="unique")
    op.create_unique_constraint("uq_registry_models_tenant_name", "registry_models", ["tenant", "name"])

    op.drop_constraint("training_schedules_pkey", "training_schedules", type_="primary")
    op.create_primary_key("training_schedules_pkey", "training_schedules", ["tenant", "model_name"])

    op.drop_constraint("chat_messages_session_id_fkey", "chat_messages", type_="foreignkey")
    op.drop_index("ix_chat_messages_session_id", "chat_messages")
    op.drop_constraint("chat_sessions_pkey", "chat_sessions", type_="primary")
    op.create_primary_key("chat_sessions_pkey", "chat_sessions", ["tenant", "id"])
    op.create_foreign_key("fk_chat_messages_session", "chat_messages", "chat_sessions",
                          ["tenant", "session_id"], ["tenant", "id"], ondelete="CASCADE")
    op.create_index("ix_chat_messages_session_id", "chat_messages", ["tenant", "session_id", "id"])


def downgrade() -> None:
    bind = op.get_bind()
    for table in ("api_keys", *OWNED_TABLES):
        foreign = bind.execute(sa.text(f"SELECT count(*) FROM {table} WHERE tenant <> :d"), {"d": DEFAULT})
        if foreign.scalar():
            raise RuntimeError(f"{table} holds rows of tenants other than {DEFAULT!r}: refusing to merge them")

    op.drop_index("ix_chat_messages_session_id", "chat_messages")
    op.drop_constraint("fk_chat_messages_session", "chat_messages", type_="foreignkey")
    op.drop_constraint("chat_sessions_pkey", "chat_sessions", type_="primary")
    op.create_primary_key("chat_sessions_pkey", "chat_sessions", ["id"])
    op.create_foreign_key("chat_messages_session_id_fkey", "chat_messages", "chat_sessions",
                          ["session_id"], ["id"], ondelete="CASCADE")
    op.create_index("ix_chat_messages_session_id", "chat_messages", ["session_id", "id"])

    op.drop_constraint("training_schedules_pkey", "training_schedules", type_="primary")
    op.create_primary_key("training_schedules_pkey", "training_schedules", ["model_name"])

    op.drop_constraint("uq_registry_models_tenant_name", "registry_models", type_="unique")
    op.create_unique_constraint("registry_models_name_key", "registry_models", ["name"])
    op.drop_constraint("uq_vector_collections_tenant_name", "vector_collections", type_="unique")
    op.create_unique_constraint("vector_collections_name_key", "vector_collections", ["name"])

    for table in ("api_keys", *OWNED_TABLES):
        op.drop_index(f"ix_{table}_tenant", table)
        op.drop_column(table, "tenant")
    op.drop_column("api_keys", "tasks")
    op.drop_column("api_keys", "models")
    op.drop_table("tenants")
