"""alerts: channels, groups, alerts, deliveries; stream reports

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _tenant() -> sa.Column:
    return sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False, index=True)


def _now() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "alert_channels",
        sa.Column("id", sa.String(36), primary_key=True),
        _tenant(),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", JSONB, nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_by", sa.String(64)),
        _now(),
        sa.UniqueConstraint("tenant", "name", name="uq_alert_channels_tenant_name"),
    )
    op.create_table(
        "alert_groups",
        sa.Column("id", sa.String(36), primary_key=True),
        _tenant(),
        sa.Column("source", sa.String(160), nullable=False),
        sa.Column("rule", sa.String(160), nullable=False),
        sa.Column("group_key", sa.String(512), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alert_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("folded_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("policy", JSONB, nullable=False),
        sa.Column("channels", JSONB, nullable=False, server_default="[]"),
        sa.Column("notified_at", sa.DateTime(timezone=True)),
        sa.Column("digest_at", sa.DateTime(timezone=True)),
        sa.Column("closed", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_alert_groups_key_opened", "alert_groups", ["tenant", "source", "rule", "group_key", "opened_at"])
    op.create_index("ix_alert_groups_open", "alert_groups", ["closes_at"], postgresql_where=sa.text("NOT closed"))
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(36), primary_key=True),
        _tenant(),
        sa.Column("group_id", sa.String(36), sa.ForeignKey("alert_groups.id", ondelete="CASCADE"), nullable=False),
        sa.Column("source", sa.String(160), nullable=False),
        sa.Column("rule", sa.String(160), nullable=False),
        sa.Column("group_key", sa.String(512), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("details", JSONB, nullable=False, server_default="{}"),
        sa.Column("dedup_key", sa.String(512), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("occurrences", sa.Integer, nullable=False, server_default="1"),
        sa.Column("state", sa.String(16), nullable=False, server_default="open"),
        sa.Column("notified", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
        sa.Column("acknowledged_by", sa.String(64)),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("resolved_by", sa.String(64)),
    )
    op.create_index("ix_alerts_dedup", "alerts", ["tenant", "source", "rule", "dedup_key", "first_seen_at"])
    op.create_index("ix_alerts_tenant_seen", "alerts", ["tenant", "first_seen_at"])
    op.create_index("ix_alerts_group", "alerts", ["group_id"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.String(36), primary_key=True),
        _tenant(),
        sa.Column("group_id", sa.String(36), sa.ForeignKey("alert_groups.id", ondelete="CASCADE"), nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("notification", JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        _now(),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_alert_deliveries_group", "alert_deliveries", ["group_id"])
    op.create_table(
        "stream_reports",
        sa.Column("id", sa.String(36), primary_key=True),
        _tenant(),
        sa.Column("stream", sa.String(128), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("requested_by", sa.String(64)),
        sa.Column("summary", JSONB),
        sa.Column("json_key", sa.String(512)),
        sa.Column("html_key", sa.String(512)),
        sa.Column("error", sa.Text),
        _now(),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_stream_reports_stream", "stream_reports", ["tenant", "stream", "period_end"])


def downgrade() -> None:
    for table in ("stream_reports", "alert_deliveries", "alerts", "alert_groups", "alert_channels"):
        op.drop_table(table)
