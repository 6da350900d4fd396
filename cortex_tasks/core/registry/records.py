"""The registry's records, stages and errors, and the one read routing needs (which versions of a model
take traffic). Plain data and one query: the registry service, routing and artifacts all build on it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Deployment, ModelVersion, RegisteredModel

STAGING, CANARY, PRODUCTION, ARCHIVED = "staging", "canary", "production", "archived"
STAGES = (STAGING, CANARY, PRODUCTION, ARCHIVED)
# The share of traffic a canary takes when a promotion names none.
DEFAULT_CANARY_TRAFFIC = 10.0
# A deployment still pending after this long lost its activation job; a new promotion may proceed.
PENDING_DEPLOYMENT_EXPIRY = timedelta(minutes=15)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
GENERATION_KEY = "cortex:registry:generation"
# Version numbers are PostgreSQL integers.
MAX_VERSION = 2**31 - 1


class RegistryError(CortexError):
    status = 422


class ModelNotFound(RegistryError):
    status = 404

    def __init__(self, name: str):
        super().__init__("model_not_found", f"No registered model named {name!r}.")


class VersionNotFound(RegistryError):
    status = 404

    def __init__(self, name: str, version: Any):
        super().__init__("version_not_found", f"Model {name!r} has no version {version}.")


class RegistryConflict(RegistryError):
    status = 409


def check_model_name(name: Any) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name) or ".." in name:
        raise RegistryError("invalid_model_name", "A model name is 1-128 letters, digits, '.', '-', '_', "
                                                  "starting with a letter or digit.")
    return name


def iso_or_none(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: int
    stage: str
    traffic_percent: float | None
    task: str
    framework: str
    artifact_uri: str
    artifact_sha256: str
    artifact_size: int
    artifact_encrypted: bool
    metrics: dict[str, Any]
    parameters: dict[str, Any]
    data_fingerprint: str | None
    description: str | None
    created_by: str | None
    created_at: datetime | None
    stage_changed_at: datetime | None
    ready_at: datetime | None

    @property
    def reference(self) -> str:
        return f"{self.model}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "reference": self.reference, "stage": self.stage,
            "traffic_percent": self.traffic_percent, "task": self.task, "framework": self.framework,
            "artifact": {"uri": self.artifact_uri, "sha256": self.artifact_sha256, "size": self.artifact_size,
                         "encrypted": self.artifact_encrypted},
            "metrics": self.metrics, "parameters": self.parameters, "data_fingerprint": self.data_fingerprint,
            "description": self.description, "created_by": self.created_by,
            "created_at": iso_or_none(self.created_at), "stage_changed_at": iso_or_none(self.stage_changed_at),
            "ready_at": iso_or_none(self.ready_at),
        }


def version_record(model_name: str, row: ModelVersion) -> VersionRecord:
    return VersionRecord(
        model=model_name, version=row.version, stage=row.stage, traffic_percent=row.traffic_percent,
        task=row.task, framework=row.framework, artifact_uri=row.artifact_uri,
        artifact_sha256=row.artifact_sha256, artifact_size=row.artifact_size,
        artifact_encrypted=row.artifact_encrypted, metrics=row.metrics or {}, parameters=row.parameters or {},
        data_fingerprint=row.data_fingerprint, description=row.description, created_by=row.created_by,
        created_at=row.created_at, stage_changed_at=row.stage_changed_at, ready_at=row.ready_at,
    )


def deployment_as_dict(row: Deployment) -> dict[str, Any]:
    return {"id": row.id, "version": row.version, "action": row.action, "status": row.status,
            "traffic_percent": row.traffic_percent, "previous_version": row.previous_version,
            "actor": row.actor, "job_id": row.job_id, "error": row.error, "details": row.details,
            "created_at": iso_or_none(row.created_at), "finished_at": iso_or_none(row.finished_at)}


@dataclass(frozen=True)
class Serving:
    """Which versions of a model take traffic."""

    production: int | None
    canary: int | None
    canary_traffic: float


def serving(name: str) -> Serving | None:
    """None when the model is not registered."""
    with session_scope() as session:
        model = session.scalars(select(RegisteredModel).where(RegisteredModel.name == name)).one_or_none()
        if model is None:
            return None
        rows = session.execute(select(ModelVersion.version, ModelVersion.stage, ModelVersion.traffic_percent)
                               .where(ModelVersion.model_id == model.id,
                                      ModelVersion.stage.in_((PRODUCTION, CANARY)))).all()
    production = next((version for version, stage, _ in rows if stage == PRODUCTION), None)
    canary = next(((version, traffic) for version, stage, traffic in rows if stage == CANARY), None)
    return Serving(production, canary[0] if canary else None, float(canary[1] or 0.0) if canary else 0.0)
