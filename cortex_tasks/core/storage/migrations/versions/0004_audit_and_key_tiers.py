"""audit events; a rate-limit tier on every API key

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("tier", sa.String(32), nullable=False, server_default="default"))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        # When it happened; for aggregated model_access rows, the start of the minute they count.
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("actor_key_id", sa.String(64)),
        sa.Column("actor_role", sa.String(32)),
        sa.Column("resource", sa.String(256)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("ip", sa.String(64)),
        sa.Column("count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("details", JSONB),
        sa.CheckConstraint(
            "event_type IN ('model_access', 'configuration_changes', 'security_violations', 'alerts')",
            name="ck_audit_events_type"),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_type_at", "audit_events", ["event_type", "at"])
    op.create_index("ix_audit_events_actor_at", "audit_events", ["actor_key_id", "at"])
    # model_access is one row per (key, model, action, minute) with a count: gateways add to it.
    op.create_index("uq_audit_events_model_access", "audit_events", ["actor_key_id", "resource", "action", "at"],
                    unique=True, postgresql_where=sa.text("event_type = 'model_access'"))


def downgrade() -> None:
    op.drop_index("uq_audit_events_model_access", "audit_events")
    op.drop_index("ix_audit_events_actor_at", "audit_events")
    op.drop_index("ix_audit_events_type_at", "audit_events")
    op.drop_index("ix_audit_events_at", "audit_events")
    op.drop_table("audit_events")
    op.drop_column("api_keys", "tier")
