"""real-time streams: declarations, closed window aggregates, per-event detector verdicts

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _tenant() -> sa.Column:
    return sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "streams",
        sa.Column("id", sa.String(36), primary_key=True),
        _tenant(),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("tenant", "name", name="uq_streams_tenant_name"),
    )
    op.create_index("ix_streams_tenant", "streams", ["tenant"])
    op.create_table(
        "stream_windows",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        _tenant(),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("total", sa.Float, nullable=False),
        sa.Column("mean", sa.Float, nullable=False),
        sa.Column("minimum", sa.Float, nullable=False),
        sa.Column("maximum", sa.Float, nullable=False),
        sa.Column("anomalies", sa.Integer, nullable=False, server_default="0"),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("tenant", "stream", "key", "window_start", name="uq_stream_windows_window"),
    )
    op.create_index("ix_stream_windows_tenant", "stream_windows", ["tenant"])
    op.create_index("ix_stream_windows_stream_start", "stream_windows", ["tenant", "stream", "window_start"])
    op.create_table(
        "stream_verdicts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        _tenant(),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("detector", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("value", sa.Float),
        sa.Column("expected", sa.Float),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "stream", "event_id", "detector", name="uq_stream_verdicts_event_detector"),
        sa.CheckConstraint("outcome IN ('anomaly', 'normal', 'warming_up')", name="ck_stream_verdicts_outcome"),
    )
    op.create_index("ix_stream_verdicts_tenant", "stream_verdicts", ["tenant"])
    op.create_index("ix_stream_verdicts_stream_time", "stream_verdicts", ["tenant", "stream", "event_time"])


def downgrade() -> None:
    op.drop_table("stream_verdicts")
    op.drop_table("stream_windows")
    op.drop_table("streams")
