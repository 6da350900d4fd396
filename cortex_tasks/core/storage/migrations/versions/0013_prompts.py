"""prompt templates as versioned assets; declared agents

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _tenant() -> sa.Column:
    return sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False)


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer, primary_key=True),
        _tenant(),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("last_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_by", sa.String(64)),
        _created_at(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("tenant", "name", name="uq_prompts_tenant_name"),
    )
    op.create_index("ix_prompts_tenant", "prompts", ["tenant"])
    op.create_table(
        "prompt_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        _tenant(),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False, server_default="staging"),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("input_variables", JSONB, nullable=False, server_default="[]"),
        sa.Column("description", sa.Text),
        sa.Column("created_by", sa.String(64)),
        _created_at(),
        sa.Column("stage_changed_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("prompt_id", "version", name="uq_prompt_versions_prompt_version"),
    )
    op.create_index("ix_prompt_versions_tenant", "prompt_versions", ["tenant"])
    # One production version per prompt, enforced by the database.
    op.create_index("uq_prompt_versions_one_production", "prompt_versions", ["prompt_id"], unique=True,
                    postgresql_where=sa.text("stage = 'production'"))
    op.create_table(
        "prompt_deployments",
        sa.Column("id", sa.Integer, primary_key=True),
        _tenant(),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("previous_version", sa.Integer),
        sa.Column("actor", sa.String(64)),
        _created_at(),
    )
    op.create_index("ix_prompt_deployments_tenant", "prompt_deployments", ["tenant"])
    op.create_index("ix_prompt_deployments_prompt_id", "prompt_deployments", ["prompt_id", "id"])
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer, primary_key=True),
        _tenant(),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("prompt", sa.String(160), nullable=False),
        sa.Column("tools", JSONB, nullable=False, server_default="[]"),
        sa.Column("max_steps", sa.Integer, nullable=False),
        sa.Column("token_budget", sa.Integer, nullable=False),
        sa.Column("params", JSONB, nullable=False, server_default="{}"),
        sa.Column("created_by", sa.String(64)),
        _created_at(),
        sa.UniqueConstraint("tenant", "name", name="uq_agents_tenant_name"),
    )
    op.create_index("ix_agents_tenant", "agents", ["tenant"])


def downgrade() -> None:
    op.drop_table("agents")
    op.drop_table("prompt_deployments")
    op.drop_table("prompt_versions")
    op.drop_table("prompts")
