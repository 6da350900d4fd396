"""The model registry: models, their numbered versions, stages, and the deployment history.

A version carries its artifact (URI in the object store + sha256), framework, task, metrics, parameters,
the fingerprint of its training data, who made it and when. Version numbers come from a per-model
counter, so they only ever increase. Stages: `staging` (new), `canary` (a share of traffic),
`production`, `archived`; the database allows one production and one canary per model.

Deploying is two-phase (blue-green): `request_promotion` records a pending deployment; a worker checks
that the version is ready (its artifact loads and verifies: `tasks.activate_version`) and only then
`complete_deployment` switches stages in one transaction. Until that moment the old production version
keeps serving; after it, the old version is archived but its artifact stays, so `rollback` can bring it
back at once. Every committed change bumps a generation number in Redis, which routing caches in every
process check, so gateways and workers follow a promotion without a restart.

Models, versions and deployments belong to a tenant (two tenants may both register `sentiment-custom`).
Every ORM statement here is scoped to the tenant in scope by the storage layer (storage/db.py), so a
name always means the caller's tenant's model and another tenant's is ModelNotFound (404); only the
upsert that reserves a version number names the tenant itself, as Core inserts are not stamped.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from cortex_tasks.core.registry import artifacts, routing, stats
from cortex_tasks.core.registry.records import (  # noqa: F401  (the registry's names, in one place)
    ARCHIVED,
    CANARY,
    DEFAULT_CANARY_TRAFFIC,
    GENERATION_KEY,
    MAX_VERSION,
    MODEL_NAME,
    PENDING_DEPLOYMENT_EXPIRY,
    PRODUCTION,
    STAGES,
    STAGING,
    ModelNotFound,
    RegistryConflict,
    RegistryError,
    Serving,
    VersionNotFound,
    VersionRecord,
    check_model_name,
    deployment_as_dict,
    iso_or_none,
    serving,
    version_record,
)
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Deployment, ModelVersion, RegisteredModel
from cortex_tasks.core.tenancy import current_tenant

log = logging.getLogger(__name__)

# --- generation: how other processes learn that something changed ---


def bump_generation() -> None:
    import redis

    routing.serving_cache().clear()  # this process sees its own change at once; others via the generation
    try:
        routing.redis_client().incr(GENERATION_KEY)
    except redis.RedisError as exc:  # routing caches still expire on their TTL
        log.warning("registry generation not bumped: %s", exc)


# --- fingerprints ---


def fingerprint_rows(rows: Iterable[Any]) -> str:
    """A stable fingerprint of a training dataset: sha256 over its rows as canonical JSON lines."""
    digest = hashlib.sha256()
    count = 0
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode())
        digest.update(b"\n")
        count += 1
    return f"sha256:{digest.hexdigest()}:rows={count}"


# --- registering ---


def _model_row(session: Session, name: str, lock: bool = False) -> RegisteredModel:
    query = select(RegisteredModel).where(RegisteredModel.name == check_model_name(name))
    row = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise ModelNotFound(name)
    return row


def _version_row(session: Session, model: RegisteredModel, version: int) -> ModelVersion:
    if not 1 <= version <= MAX_VERSION:  # a number the column cannot hold names no version (not a 500)
        raise VersionNotFound(model.name, version)
    row = session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                     ModelVersion.version == version)).one_or_none()
    if row is None:
        raise VersionNotFound(model.name, version)
    return row


def reserve_version(name: str, task: str, description: str | None = None) -> int:
    """The next version number of `name` (creating the model), committed at once: a number is never
    handed out twice, even if the registration that took it fails later."""
    check_model_name(name)
    with session_scope() as session:
        existing = session.scalars(select(RegisteredModel.task).where(RegisteredModel.name == name)).one_or_none()
        if existing is not None and existing != task:
            raise RegistryConflict("task_mismatch", f"Model {name!r} serves task {existing!r}, not {task!r}.")
        statement = pg_insert(RegisteredModel).values(tenant=current_tenant(), name=name, task=task,
                                                      description=description, last_version=1)
        statement = statement.on_conflict_do_update(
            index_elements=[RegisteredModel.tenant, RegisteredModel.name],
            set_={"last_version": RegisteredModel.last_version + 1, "updated_at": func.now()},
        ).returning(RegisteredModel.last_version)
        return int(session.execute(statement).scalar_one())


def register_version(name: str, *, task: str, framework: str, artifact: bytes | str | Path | None = None,
                     artifact_uri: str | None = None, artifact_sha256: str | None = None,
                     artifact_filename: str | None = None, metrics: Mapping[str, Any] | None = None,
                     parameters: Mapping[str, Any] | None = None, data_fingerprint: str | None = None,
                     created_by: str | None = None, description: str | None = None) -> VersionRecord:
    """Add a new `staging` version. Give the artifact's content (`bytes`, a file or a directory path),
    which is uploaded to `models/<tenant>/<name>/<version>/...`, or the URI of an artifact already stored (its
    digest is read from the store and must match `artifact_sha256` when given)."""
    if (artifact is None) == (artifact_uri is None):
        raise RegistryError("invalid_artifact", "give exactly one of artifact or artifact_uri")
    for label, document in (("metrics", metrics), ("parameters", parameters)):
        try:
            json.dumps(dict(document or {}), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RegistryError("invalid_metadata", f"{label} must be JSON with finite numbers: {exc}") from None
    version = reserve_version(name, task, description)
    if artifact is not None:
        stored = artifacts.store_artifact(name, version, artifact, artifact_filename, tenant=current_tenant())
    else:
        stored = artifacts.existing_artifact(artifact_uri or "", artifact_sha256)
    with session_scope() as session:
        model = _model_row(session, name)
        row = ModelVersion(
            model_id=model.id, version=version, stage=STAGING, task=task, framework=framework,
            artifact_uri=stored.uri, artifact_sha256=stored.sha256, artifact_size=stored.size,
            artifact_encrypted=stored.encrypted, metrics=dict(metrics or {}), parameters=dict(parameters or {}),
            data_fingerprint=data_fingerprint, description=description, created_by=created_by,
        )
        session.add(row)
        session.flush()
        session.refresh(row)
        record = version_record(name, row)
    bump_generation()
    return record


# --- reading ---


def get_version(name: str, version: int) -> VersionRecord:
    with session_scope() as session:
        model = _model_row(session, name)
        return version_record(model.name, _version_row(session, model, version))


def list_versions(name: str) -> list[VersionRecord]:
    with session_scope() as session:
        model = _model_row(session, name)
        rows = session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                               .order_by(ModelVersion.version)).all()
        return [version_record(model.name, row) for row in rows]


def deployments(name: str, limit: int = 50, version: int | None = None) -> list[dict[str, Any]]:
    with session_scope() as session:
        model = _model_row(session, name)
        query = select(Deployment).where(Deployment.model_id == model.id)
        if version is not None:
            query = query.where(Deployment.version == version)
        rows = session.scalars(query.order_by(Deployment.id.desc()).limit(limit)).all()
        return [deployment_as_dict(row) for row in rows]


def model_summary(name: str) -> dict[str, Any]:
    with session_scope() as session:
        model = _model_row(session, name)
        return {"name": model.name, "task": model.task, "description": model.description,
                "latest_version": model.last_version, "created_at": iso_or_none(model.created_at),
                "updated_at": iso_or_none(model.updated_at)}


def registered_task(name: str) -> str | None:
    """The task a registered model serves; None while no version of it has been registered."""
    with session_scope() as session:
        return session.scalar(select(RegisteredModel.task).where(RegisteredModel.name == name))


def list_models() -> list[dict[str, Any]]:
    with session_scope() as session:
        models = session.scalars(select(RegisteredModel).order_by(RegisteredModel.name)).all()
        serving_rows = session.execute(
            select(ModelVersion.model_id, ModelVersion.version, ModelVersion.stage, ModelVersion.traffic_percent)
            .where(ModelVersion.stage.in_((PRODUCTION, CANARY)))).all()
        counts = dict(session.execute(select(ModelVersion.model_id, func.count())
                                      .group_by(ModelVersion.model_id)).all())
    serving_by_model: dict[int, dict[str, Any]] = {}
    for model_id, version, stage, traffic in serving_rows:
        serving_by_model.setdefault(model_id, {})[stage] = {"version": version, **(
            {"traffic_percent": traffic} if stage == CANARY else {})}
    return [{"name": model.name, "task": model.task, "description": model.description,
             "latest_version": model.last_version, "versions": counts.get(model.id, 0),
             "production": serving_by_model.get(model.id, {}).get(PRODUCTION),
             "canary": serving_by_model.get(model.id, {}).get(CANARY), "updated_at": iso_or_none(model.updated_at)}
            for model in models]


# --- deploying ---


def _pending(session: Session, model: RegisteredModel) -> Deployment | None:
    # The database's clock, which wrote created_at: this host's may be minutes off (a 15-minute expiry).
    cutoff = func.now() - PENDING_DEPLOYMENT_EXPIRY
    return session.scalars(select(Deployment).where(
        Deployment.model_id == model.id, Deployment.status == "pending", Deployment.created_at > cutoff,
    ).order_by(Deployment.id.desc()).limit(1)).one_or_none()


def _current(session: Session, model: RegisteredModel, stage: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                      ModelVersion.stage == stage)).one_or_none()


def request_promotion(name: str, version: int, stage: str, traffic: float | None = None,
                      actor: str | None = None, job_id: str | None = None) -> dict[str, Any]:
    """Record a pending deployment of `name@version` to canary (with a traffic share) or production.
    Nothing changes for callers until `complete_deployment`. `job_id`: the job that will activate it, named
    from the start so that the stale-job sweep can settle the deployment as soon as that job is known
    failed or lost (runtime/maintenance/service.py), rather than when the pending deployment expires."""
    if stage not in (CANARY, PRODUCTION):
        raise RegistryError("invalid_stage", "promote to 'canary' or 'production'")
    if stage == PRODUCTION and traffic is not None:
        raise RegistryError("invalid_traffic", "traffic applies to canary only; production takes the rest")
    if stage == CANARY:
        traffic = DEFAULT_CANARY_TRAFFIC if traffic is None else float(traffic)
        if not 0 <= traffic <= 100:
            raise RegistryError("invalid_traffic", "traffic is a percentage from 0 to 100")
    with session_scope() as session:
        model = _model_row(session, name, lock=True)
        target = _version_row(session, model, version)
        production = _current(session, model, PRODUCTION)
        if target.stage == PRODUCTION:
            raise RegistryConflict("already_production", f"{name}@{version} is already in production.")
        pending = _pending(session, model)
        if pending is not None:
            raise RegistryConflict("deployment_in_progress",
                                   f"Deployment {pending.id} of {name}@{pending.version} is still pending.",
                                   {"deployment": deployment_as_dict(pending)})
        row = Deployment(model_id=model.id, version=version,
                         action="promote_canary" if stage == CANARY else "promote_production",
                         status="pending", traffic_percent=traffic if stage == CANARY else None,
                         previous_version=production.version if production else None, actor=actor,
                         job_id=job_id)
        session.add(row)
        session.flush()
        session.refresh(row)
        return deployment_as_dict(row)


def deployment(deployment_id: int) -> tuple[str, dict[str, Any]]:
    """(model name, deployment) for a deployment id."""
    with session_scope() as session:
        row = session.get(Deployment, deployment_id)
        if row is None:
            raise RegistryError("deployment_not_found", f"No deployment {deployment_id}.")
        model = session.get(RegisteredModel, row.model_id)
        return model.name, deployment_as_dict(row)


def _set_stage(row: ModelVersion, stage: str, traffic: float | None = None) -> None:
    row.stage, row.traffic_percent = stage, traffic
    row.stage_changed_at = datetime.now(UTC)


def _stats_snapshot(name: str, versions: Iterable[int | None]) -> dict[str, Any]:
    return {str(version): stats.read(name, version) for version in versions if version is not None}


def complete_deployment(deployment_id: int, job_id: str | None = None) -> VersionRecord:
    """The version reported ready: switch stages in one transaction. Idempotent for a redelivered job."""
    with session_scope() as session:
        row = session.get(Deployment, deployment_id)
        if row is None:
            raise RegistryError("deployment_not_found", f"No deployment {deployment_id}.")
        model = _model_row(session, session.get(RegisteredModel, row.model_id).name, lock=True)
        session.refresh(row)  # re-read under the model lock
        target = _version_row(session, model, row.version)
        if row.status != "pending":
            if row.status == "succeeded":
                return version_record(model.name, target)
            raise RegistryConflict("deployment_finished", f"Deployment {deployment_id} already {row.status}.")
        now = datetime.now(UTC)
        if row.action == "promote_canary":
            current = _current(session, model, CANARY)
            if current is not None and current.id != target.id:
                _set_stage(current, STAGING)
                session.flush()  # the one-canary index is checked per statement
            _set_stage(target, CANARY, row.traffic_percent)
        else:
            current = _current(session, model, PRODUCTION)
            if current is not None:
                _set_stage(current, ARCHIVED)
                session.flush()
            row.previous_version = current.version if current else None
            _set_stage(target, PRODUCTION)
        target.ready_at = now
        row.status, row.finished_at, row.job_id = "succeeded", now, job_id or row.job_id
        row.details = {"stats_at_switch": _stats_snapshot(model.name, {row.version, row.previous_version})}
        model.updated_at = now
        session.flush()
        record = version_record(model.name, target)
    bump_generation()
    return record


def fail_deployment(deployment_id: int, error: dict[str, Any], job_id: str | None = None) -> None:
    with session_scope() as session:
        session.execute(update(Deployment).where(Deployment.id == deployment_id, Deployment.status == "pending")
                        .values(status="failed", error=error, finished_at=func.now(),
                                job_id=func.coalesce(job_id, Deployment.job_id)))


def rollback(name: str, to_version: int | None = None, actor: str | None = None) -> dict[str, Any]:
    """Return to the previous production version at once (no readiness wait: it served until it was
    replaced, and its artifact is kept). The current production version is archived."""
    with session_scope() as session:
        model = _model_row(session, name, lock=True)
        current = _current(session, model, PRODUCTION)
        if to_version is None:
            if current is None:
                raise RegistryConflict("no_production", f"Model {name!r} has no production version to roll back.")
            made_current = session.scalars(select(Deployment).where(
                Deployment.model_id == model.id, Deployment.version == current.version,
                Deployment.status == "succeeded",
                Deployment.action.in_(("promote_production", "rollback")),
            ).order_by(Deployment.id.desc()).limit(1)).one_or_none()
            to_version = made_current.previous_version if made_current else None
            if to_version is None:
                raise RegistryConflict("no_previous_production",
                                       f"{name}@{current.version} has no earlier production version to return to.")
        target = _version_row(session, model, to_version)
        if current is not None and current.id == target.id:
            raise RegistryConflict("already_production", f"{name}@{to_version} is already in production.")
        if not artifacts.artifact_exists(target.artifact_uri):
            raise RegistryConflict("artifact_missing",
                                   f"The artifact of {name}@{to_version} is gone; it cannot serve again.")
        now = datetime.now(UTC)
        if current is not None:
            _set_stage(current, ARCHIVED)
            session.flush()
        _set_stage(target, PRODUCTION)
        previous = current.version if current else None
        row = Deployment(model_id=model.id, version=target.version, action="rollback", status="succeeded",
                         previous_version=previous, actor=actor, finished_at=now,
                         details={"stats_at_switch": _stats_snapshot(name, {target.version, previous})})
        session.add(row)
        model.updated_at = now
        session.flush()
        session.refresh(row)
        result = {"version": version_record(name, target).as_dict(), "rolled_back_from": previous,
                  "deployment": deployment_as_dict(row)}
    bump_generation()
    return result


def demote(name: str, version: int, stage: str, actor: str | None = None) -> VersionRecord:
    """Move a version back to staging or into the archive (ending a canary, retiring a version).
    The production version leaves production only through a promotion or a rollback."""
    if stage not in (STAGING, ARCHIVED):
        raise RegistryError("invalid_stage", "demote to 'staging' or 'archived'")
    with session_scope() as session:
        model = _model_row(session, name, lock=True)
        target = _version_row(session, model, version)
        if target.stage == PRODUCTION:
            raise RegistryConflict("is_production", f"{name}@{version} is in production: promote another "
                                                    "version or roll back instead.")
        _set_stage(target, stage)
        session.add(Deployment(model_id=model.id, version=version, action="demote", status="succeeded",
                               actor=actor, finished_at=datetime.now(UTC), details={"stage": stage}))
        record = version_record(name, target)
    bump_generation()
    return record


# --- resolving references ---


def parse_reference(reference: str) -> tuple[str, str | None]:
    """`name`, `name@3`, `name@production`, `name@canary`, `name@latest` -> (name, selector)."""
    name, _, selector = reference.partition("@")
    check_model_name(name)
    if selector and not (selector.isdigit() or selector in (PRODUCTION, CANARY, STAGING, "latest")):
        raise RegistryError("invalid_reference", f"{reference!r}: after '@' comes a version number, "
                                                 "'production', 'canary', 'staging' or 'latest'")
    return name, selector or None


def resolve(reference: str, caller_id: str | None = None) -> VersionRecord:
    """The version a reference names. A bare name routes like a request: the caller's canary bucket
    decides between canary and production (see routing.choose_version)."""
    name, selector = parse_reference(reference)
    if selector is None:
        choice = routing.choose_version(name, caller_id or "")
        if choice is None:
            raise RegistryConflict("not_deployed", f"Model {name!r} has no production or canary version; "
                                                   f"pin one as {name}@<version>.")
        return get_version(name, choice.version)
    if selector.isdigit():
        return get_version(name, int(selector))
    with session_scope() as session:
        model = _model_row(session, name)
        query = select(ModelVersion).where(ModelVersion.model_id == model.id)
        if selector != "latest":
            query = query.where(ModelVersion.stage == selector)
        row = session.scalars(query.order_by(ModelVersion.version.desc()).limit(1)).one_or_none()
        if row is None:
            raise VersionNotFound(name, selector)
        return version_record(name, row)
