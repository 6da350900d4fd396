"""Table definitions (SQLAlchemy 2 declarative). Schema changes go through Alembic migrations."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class TenantOwned:
    """A table whose rows belong to one tenant. The storage layer (core/tenancy.py, with the session
    events in storage/db.py) adds `tenant = <current tenant>` to every ORM statement on it and stamps new
    rows with the current tenant; routes and tasks never filter by tenant themselves."""

    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), index=True)


class Tenant(Base):
    """A customer of the platform: keys, jobs, collections, documents, models and usage belong to one.
    Migration 0008 creates `default`, which owns everything made before tenants existed."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # a slug, tenancy.TENANT_ID
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Job(TenantOwned, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # predict | batch | training
    task: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=4)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    result: Mapped[Any | None] = mapped_column(JSONB)
    result_ref: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public part of the key
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    # The rate-limit tier (settings.rate_limit_tiers); migration 0004.
    tier: Mapped[str] = mapped_column(String(32), default="default", server_default="default")
    # Keys are looked up before any tenant is known, so they are not TenantOwned: key administration
    # filters by tenant itself (auth/keys.py). Migration 0008.
    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), default="default",
                                        server_default="default", index=True)
    # Per-model permissions: None allows every model (task); a list allows only those.
    models: Mapped[list[str] | None] = mapped_column(JSONB)
    tasks: Mapped[list[str] | None] = mapped_column(JSONB)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TokenSigningKey(Base):
    """A key pair that signs Cortex's access tokens (auth/tokens.py; migration 0008_signing_keys). The newest
    key not retired signs; retired keys still verify the tokens they signed until those expire."""

    __tablename__ = "token_signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    private_pem: Mapped[str] = mapped_column(Text)  # PKCS#8; the database is its only copy
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --- vectors and the model registry (migration 0002) ---


class VectorCollection(TenantOwned, Base):
    """The catalogue of vector collections. Each collection's items live in their own table,
    `vectors_<id>` (see storage/vector_store.py for why), created and dropped with the row."""

    __tablename__ = "vector_collections"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_vector_collections_tenant_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # An API name (64 characters) or a reserved `<owner>:<name>` one (migration 0007).
    name: Mapped[str] = mapped_column(String(80))  # unique per tenant (migration 0008)
    dimension: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16))  # cosine | l2 | inner_product
    index_type: Mapped[str] = mapped_column(String(16))  # hnsw | ivfflat
    index_params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    index_state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | ready
    model: Mapped[str | None] = mapped_column(String(128))  # embeds `text` items; None: vectors only
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    index_built_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RegisteredModel(TenantOwned, Base):
    __tablename__ = "registry_models"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_registry_models_tenant_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))  # unique per tenant
    task: Mapped[str] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(Text)
    # Versions are numbered from this counter, never from max(version): numbers are not reused even
    # if a version row is deleted.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ModelVersion(TenantOwned, Base):
    __tablename__ = "registry_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_registry_versions_model_version"),
        # At most one production and one canary version per model, enforced by the database.
        Index("uq_registry_versions_one_production", "model_id", unique=True,
              postgresql_where=text("stage = 'production'")),
        Index("uq_registry_versions_one_canary", "model_id", unique=True,
              postgresql_where=text("stage = 'canary'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16), default="staging")  # staging|canary|production|archived
    traffic_percent: Mapped[float | None] = mapped_column(Float)  # canary only
    task: Mapped[str] = mapped_column(String(32))
    framework: Mapped[str] = mapped_column(String(64))
    artifact_uri: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    artifact_size: Mapped[int] = mapped_column(BigInteger, default=0)
    artifact_encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    data_fingerprint: Mapped[str | None] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    stage_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Deployment(TenantOwned, Base):
    """Every stage change of a model, in order: the deployment history, and what rollback reads."""

    __tablename__ = "registry_deployments"
    __table_args__ = (Index("ix_registry_deployments_model_created", "model_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))  # promote_canary|promote_production|rollback|demote
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|succeeded|failed
    traffic_percent: Mapped[float | None] = mapped_column(Float)
    previous_version: Mapped[int | None] = mapped_column(Integer)  # production before this change
    actor: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(36))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --- batch chunks, training runs, retraining schedules, metric roll-ups (migration 0003) ---


class BatchChunk(Base):
    """One slice of a batch job's inputs. Progress is counted here, chunk by chunk, in the same
    transaction that records a chunk's outcome, so a redelivered chunk can never be counted twice and a
    batch whose worker died resumes from the chunks already finished."""

    __tablename__ = "batch_chunks"
    __table_args__ = (Index("ix_batch_chunks_status_updated", "status", "updated_at"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_index: Mapped[int] = mapped_column(Integer)  # first input of the chunk (position in the batch)
    stop_index: Mapped[int] = mapped_column(Integer)  # one past the last
    inputs: Mapped[list[Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|queued|running|succeeded
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # deliveries that started the chunk
    succeeded_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[Any] | None] = mapped_column(JSONB)  # [{"index", "error": {"code", "message"}}]
    result_ref: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TrainingRun(TenantOwned, Base):
    """A training job's experiment record: config, data fingerprint, metrics per epoch, resource use,
    checkpoint and the registry version it produced. Kept after the job row expires."""

    __tablename__ = "training_runs"
    __table_args__ = (Index("ix_training_runs_model_created", "model_name", "created_at"),
                      Index("ix_training_runs_phase", "phase"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the job id
    owner: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))  # classifier | transformer | ner | forecast
    priority: Mapped[int] = mapped_column(Integer, default=4)
    # queued|validating|preparing|training|evaluating|registering|paused|cancelled|succeeded|failed
    phase: Mapped[str] = mapped_column(String(16), default="queued")
    control: Mapped[str | None] = mapped_column(String(16))  # a requested pause or cancel, not yet acted on
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    dataset: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)  # inline rows or an object reference
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    validation: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    history: Mapped[list[Any]] = mapped_column(JSONB, default=list)  # one metrics dict per epoch
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # held-out evaluation
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    checkpoint_ref: Mapped[str | None] = mapped_column(Text)
    checkpoint_epoch: Mapped[int | None] = mapped_column(Integer)
    registered_version: Mapped[int | None] = mapped_column(Integer)
    stage: Mapped[str | None] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16), default="api")  # api | schedule | metric
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TrainingSchedule(TenantOwned, Base):
    """When a model is retrained: a cron expression, and/or a tracked metric with a floor."""

    __tablename__ = "training_schedules"

    # One schedule per model of a tenant: the primary key is (tenant, model_name) since migration 0008.
    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[dict[str, Any]] = mapped_column(JSONB)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    cron: Mapped[str | None] = mapped_column(String(64))
    metric: Mapped[str | None] = mapped_column(String(64))
    threshold: Mapped[float | None] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class JobMetricsHourly(Base):
    """Hourly roll-up of finished jobs per kind, task and model (written by the maintenance task)."""

    __tablename__ = "job_metrics_hourly"

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    task: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    jobs: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    items: Mapped[int] = mapped_column(BigInteger, default=0)
    queue_ms_p50: Mapped[float | None] = mapped_column(Float)
    run_ms_p50: Mapped[float | None] = mapped_column(Float)
    run_ms_p95: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OpenAIUsage(TenantOwned, Base):
    """One OpenAI call (or a cache hit that replaced one): tokens and cost, billed to a key."""

    __tablename__ = "openai_usage"
    __table_args__ = (Index("ix_openai_usage_created", "created_at"),
                      Index("ix_openai_usage_owner_created", "owner", "created_at"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # chat | embed
    source: Mapped[str] = mapped_column(String(16), default="predict")  # predict | chat
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ChatSession(TenantOwned, Base):
    """A conversation, owned by the key that started it."""

    __tablename__ = "chat_sessions"

    # Session ids are chosen by clients: two tenants may use the same one (primary key since 0008).
    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ChatMessage(TenantOwned, Base):
    """One turn's message (user or assistant) of a chat session, in order of id."""

    __tablename__ = "chat_messages"
    __table_args__ = (
        Index("ix_chat_messages_session_id", "tenant", "session_id", "id"),
        ForeignKeyConstraint(["tenant", "session_id"], ["chat_sessions.tenant", "chat_sessions.id"],
                             ondelete="CASCADE", name="fk_chat_messages_session"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    session_id: Mapped[str] = mapped_column(String(128))
    owner: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(128))
    job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# --- the audit log (migrations 0004, 0009) ---


class AuditEvent(Base):
    """One audited event, appended and never changed (migration 0009: a trigger refuses UPDATE, DELETE
    but of the oldest rows, and TRUNCATE). model_access rows are aggregated per flush: one per (key, model,
    action, minute) a gateway saw in that flush, `count` requests; readers sum them. Every other event is
    one row. `row_hash` chains each row to the one before it in id order (core/audit/chain.py)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_type_at", "event_type", "at"),
        Index("ix_audit_events_actor_at", "actor_key_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    event_type: Mapped[str] = mapped_column(String(32))  # model_access|configuration_changes|security_violations|alerts
    action: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str | None] = mapped_column(String(64))  # the actor's; None for system events
    actor_key_id: Mapped[str | None] = mapped_column(String(64))
    actor_role: Mapped[str | None] = mapped_column(String(32))
    resource: Mapped[str | None] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(16))  # success | failure | denied | fired
    ip: Mapped[str | None] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, default=1)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class AuditChain(Base):
    """The audit log's hash chain, one row: its head (the last row appended; writers lock this row to
    append in order) and its start (the last row retention deleted, whose hash the first row left holds
    as its prev_hash)."""

    __tablename__ = "audit_chain"
    __table_args__ = (CheckConstraint("id = 1", name="ck_audit_chain_one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    head_id: Mapped[int | None] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    start_after_id: Mapped[int | None] = mapped_column(BigInteger)
    start_hash: Mapped[str] = mapped_column(String(64))
    purged_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkerUsage(TenantOwned, Base):
    """One job's model time on a worker (core/usage/worker_time.py): the seconds of the model calls that
    answered its items (a batched call's time shared out over its items), priced per worker kind when the
    job was recorded. Written in the statement that records the job's outcome; read aggregated by
    GET /api/v1/usage."""

    __tablename__ = "worker_usage"
    __table_args__ = (Index("ix_worker_usage_tenant_created", "tenant", "created_at"),
                      Index("ix_worker_usage_owner_created", "owner", "created_at"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36))
    owner: Mapped[str] = mapped_column(String(64))  # the calling key's id
    model: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(32))
    worker_kind: Mapped[str] = mapped_column(String(32))  # gpu | nlp
    items: Mapped[int] = mapped_column(Integer, default=0)
    worker_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# --- alerts and stream reports (core/alerting, runtime/alerting) ---


class AlertChannel(TenantOwned, Base):
    """Where a tenant's alerts go: a Slack-compatible webhook or e-mail recipients. `is_default` channels
    receive every alert that names no channels."""

    __tablename__ = "alert_channels"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_alert_channels_tenant_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # webhook | email
    target: Mapped[dict[str, Any]] = mapped_column(JSONB)  # {"url": ...} or {"recipients": [...]}
    is_default: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AlertGroup(TenantOwned, Base):
    """Alerts of one source, rule and group key raised within one grouping window: notified together."""

    __tablename__ = "alert_groups"
    __table_args__ = (
        Index("ix_alert_groups_key_opened", "tenant", "source", "rule", "group_key", "opened_at"),
        Index("ix_alert_groups_open", "closes_at", postgresql_where=text("NOT closed")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source: Mapped[str] = mapped_column(String(160))
    rule: Mapped[str] = mapped_column(String(160))
    group_key: Mapped[str] = mapped_column(String(512))
    severity: Mapped[str] = mapped_column(String(8))
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closes_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    alert_count: Mapped[int] = mapped_column(Integer, default=0)  # alerts kept (at most max_per_group)
    folded_count: Mapped[int] = mapped_column(Integer, default=0)  # alerts past max_per_group, counted only
    policy: Mapped[dict[str, Any]] = mapped_column(JSONB)
    channels: Mapped[list[str]] = mapped_column(JSONB, default=list)  # names; [] = the default channels
    notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # its first alert's notice
    digest_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # the notice of the rest
    closed: Mapped[bool] = mapped_column(Boolean, default=False)


class Alert(TenantOwned, Base):
    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_dedup", "tenant", "source", "rule", "dedup_key", "first_seen_at"),
        Index("ix_alerts_tenant_seen", "tenant", "first_seen_at"),
        Index("ix_alerts_group", "group_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(36), ForeignKey("alert_groups.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(160))
    rule: Mapped[str] = mapped_column(String(160))
    group_key: Mapped[str] = mapped_column(String(512))
    severity: Mapped[str] = mapped_column(String(8))
    summary: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    dedup_key: Mapped[str] = mapped_column(String(512))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    occurrences: Mapped[int] = mapped_column(Integer, default=1)  # repeats within the dedup window folded in
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | acknowledged | resolved
    notified: Mapped[bool] = mapped_column(Boolean, default=False)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(String(64))


class AlertDelivery(TenantOwned, Base):
    """One notification to one channel and how its delivery went (retries included)."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_group", "group_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(36), ForeignKey("alert_groups.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(100))  # a channel's name, or operator:webhook:<n> / operator:email
    kind: Mapped[str] = mapped_column(String(16))  # first | digest
    notification: Mapped[dict[str, Any]] = mapped_column(JSONB)  # what is sent (runtime/alerting/channels.py)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StreamReport(TenantOwned, Base):
    """A stream's report of one period: HTML with charts and the same figures as JSON, in the object store."""

    __tablename__ = "stream_reports"
    __table_args__ = (Index("ix_stream_reports_stream", "tenant", "stream", "period_end"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    stream: Mapped[str] = mapped_column(String(128))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    trigger: Mapped[str] = mapped_column(String(16))  # schedule | request
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | ready | failed
    requested_by: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    json_key: Mapped[str | None] = mapped_column(String(512))
    html_key: Mapped[str | None] = mapped_column(String(512))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --- real-time streams (migration 0011) ---


class StreamDeclaration(TenantOwned, Base):
    """A declared event stream (POST /streams): its fields, key, detectors, windows and alert rules, as the
    validated declaration (core/streams/declarations.py) in `spec`. Names are unique per tenant."""

    __tablename__ = "streams"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_streams_tenant_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StreamWindow(TenantOwned, Base):
    """The aggregates of one closed sliding window of one key of a stream, written once the stream's event
    time has passed the window's end (a rewrite of the same window replaces it: redelivery is harmless)."""

    __tablename__ = "stream_windows"
    __table_args__ = (
        UniqueConstraint("tenant", "stream", "key", "window_start", name="uq_stream_windows_window"),
        Index("ix_stream_windows_stream_start", "tenant", "stream", "window_start"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    stream: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(256))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    count: Mapped[int] = mapped_column(Integer)
    total: Mapped[float] = mapped_column(Float)
    mean: Mapped[float] = mapped_column(Float)
    minimum: Mapped[float] = mapped_column(Float)
    maximum: Mapped[float] = mapped_column(Float)
    anomalies: Mapped[int] = mapped_column(Integer, default=0)
    written_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StreamVerdict(TenantOwned, Base):
    """One detector's verdict on one event. Unique on (stream, event id, detector): a redelivered event
    (a stream worker killed before its acknowledgement) inserts nothing the second time."""

    __tablename__ = "stream_verdicts"
    __table_args__ = (
        UniqueConstraint("tenant", "stream", "event_id", "detector", name="uq_stream_verdicts_event_detector"),
        Index("ix_stream_verdicts_stream_time", "tenant", "stream", "event_time"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    stream: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))  # the Redis Stream entry id
    key: Mapped[str] = mapped_column(String(256))
    detector: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))  # anomaly | normal | warming_up
    score: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float)
    expected: Mapped[float | None] = mapped_column(Float)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # the XADD's time
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
# --- prompt templates and agents (migration 0013) ---


class Prompt(TenantOwned, Base):
    """A prompt template of a tenant: its numbered versions, one of them in production (core/prompts)."""

    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_prompts_tenant_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    # Versions are numbered from this counter, so a number is never handed out twice.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PromptVersion(TenantOwned, Base):
    """One immutable version of a prompt: its template and the input variables it declares."""

    __tablename__ = "prompt_versions"
    __table_args__ = (
        UniqueConstraint("prompt_id", "version", name="uq_prompt_versions_prompt_version"),
        Index("uq_prompt_versions_one_production", "prompt_id", unique=True,
              postgresql_where=text("stage = 'production'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16), default="staging")  # staging | production | archived
    template: Mapped[str] = mapped_column(Text)
    input_variables: Mapped[list[str]] = mapped_column(JSONB, default=list)
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    stage_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PromptDeployment(TenantOwned, Base):
    """Every change of a prompt's production version, in order: its history, and what rollback reads."""

    __tablename__ = "prompt_deployments"
    __table_args__ = (Index("ix_prompt_deployments_prompt_id", "prompt_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # create | promote | rollback
    previous_version: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Agent(TenantOwned, Base):
    """A declared agent (core/agents): its chat model, system prompt reference, tools and limits."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_agents_tenant_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(String(160))  # `name@version`, or `name` (its production version)
    tools: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    max_steps: Mapped[int] = mapped_column(Integer)
    token_budget: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
