"""batch chunks, training runs, retraining schedules, hourly job metrics

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _timestamp(name: str, nullable: bool = True, default: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable,
                     server_default=sa.func.now() if default else None)


def upgrade() -> None:
    op.create_table(
        "batch_chunks",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("chunk_index", sa.Integer, primary_key=True),
        sa.Column("start_index", sa.Integer, nullable=False),
        sa.Column("stop_index", sa.Integer, nullable=False),
        sa.Column("inputs", JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("succeeded_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("errors", JSONB),
        sa.Column("result_ref", sa.Text),
        _timestamp("queued_at"),
        _timestamp("started_at"),
        _timestamp("finished_at"),
        _timestamp("updated_at", nullable=False, default=True),
        sa.CheckConstraint("status IN ('pending', 'queued', 'running', 'succeeded')",
                           name="ck_batch_chunks_status"),
    )
    op.create_index("ix_batch_chunks_status_updated", "batch_chunks", ["status", "updated_at"])
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="4"),
        sa.Column("phase", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("control", sa.String(16)),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("epochs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("config", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("dataset", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("data_fingerprint", sa.String(64)),
        sa.Column("validation", JSONB),
        sa.Column("history", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("metrics", JSONB),
        sa.Column("resources", JSONB),
        sa.Column("checkpoint_ref", sa.Text),
        sa.Column("checkpoint_epoch", sa.Integer),
        sa.Column("registered_version", sa.Integer),
        sa.Column("stage", sa.String(16)),
        sa.Column("trigger", sa.String(16), nullable=False, server_default="api"),
        sa.Column("error", JSONB),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("started_at"),
        _timestamp("finished_at"),
        _timestamp("updated_at", nullable=False, default=True),
    )
    op.create_index("ix_training_runs_model_created", "training_runs", ["model_name", "created_at"])
    op.create_index("ix_training_runs_phase", "training_runs", ["phase"])
    op.create_table(
        "training_schedules",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("dataset", JSONB, nullable=False),
        sa.Column("params", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("cron", sa.String(64)),
        sa.Column("metric", sa.String(64)),
        sa.Column("threshold", sa.Float),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        _timestamp("last_run_at"),
        sa.Column("last_job_id", sa.String(36)),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("updated_at", nullable=False, default=True),
    )
    op.create_table(
        "job_metrics_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("task", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("jobs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("items", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("queue_ms_p50", sa.Float),
        sa.Column("run_ms_p50", sa.Float),
        sa.Column("run_ms_p95", sa.Float),
        _timestamp("updated_at", nullable=False, default=True),
    )
    # The finished-jobs sweeps (roll-ups, result expiry) scan by kind and finish time.
    op.create_index("ix_jobs_kind_finished", "jobs", ["kind", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_kind_finished", "jobs")
    op.drop_table("job_metrics_hourly")
    op.drop_table("training_schedules")
    op.drop_index("ix_training_runs_phase", "training_runs")
    op.drop_index("ix_training_runs_model_created", "training_runs")
    op.drop_table("training_runs")
    op.drop_index("ix_batch_chunks_status_updated", "batch_chunks")
    op.drop_table("batch_chunks")
