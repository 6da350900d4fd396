"""usage ledger: worker seconds of Cortex's own models, per job (GET /api/v1/usage)

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_usage",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("worker_kind", sa.String(32), nullable=False),
        sa.Column("items", sa.Integer, nullable=False, server_default="0"),
        sa.Column("worker_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_worker_usage_tenant", "worker_usage", ["tenant"])
    op.create_index("ix_worker_usage_tenant_created", "worker_usage", ["tenant", "created_at"])
    op.create_index("ix_worker_usage_owner_created", "worker_usage", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_table("worker_usage")
