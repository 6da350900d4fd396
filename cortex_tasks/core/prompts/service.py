"""The prompt registry: prompts, their numbered immutable versions, the production version and its history.

Like registered models (core/registry/service.py): versions are numbered from a per-prompt counter, so
numbers only increase; the database allows one production version per prompt; a promotion archives the
production version it replaces, and `rollback` returns to the version that was in production before the
current one (or to a named one). A prompt's first version goes to production at once, since a prompt
with no production version could not be named without a version; later versions start in `staging`.

Prompts belong to a tenant: every ORM statement here is scoped to the tenant in scope by the storage layer
(storage/db.py), so another tenant's prompt is PromptNotFound (404), exactly like a missing one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.prompts.templates import check_template, render
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Prompt, PromptDeployment, PromptVersion

PROMPT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STAGING, PRODUCTION, ARCHIVED = "staging", "production", "archived"
MAX_VERSION = 2**31 - 1


class PromptError(CortexError):
    status = 422


class PromptNotFound(CortexError):
    status = 404

    def __init__(self, reference: str) -> None:
        super().__init__("prompt_not_found", f"No prompt {reference!r}.", {"prompt": reference})


class PromptConflict(CortexError):
    status = 409


@dataclass(frozen=True)
class ResolvedPrompt:
    """One exact version: what a job records and renders."""

    name: str
    version: int
    template: str
    input_variables: tuple[str, ...]

    @property
    def reference(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, values: dict[str, Any]) -> str:
        return render(self.template, list(self.input_variables), values, self.reference)

    def as_record(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "reference": self.reference}


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not PROMPT_NAME.match(name) or ".." in name:
        raise PromptError("invalid_prompt_name", "A prompt name is 1-128 letters, digits, '.', '-', '_', "
                                                 "starting with a letter or digit.")
    return name


def parse_reference(reference: Any) -> tuple[str, int | None]:
    """`name@version` -> (name, version); `name` -> (name, None), meaning its production version."""
    if not isinstance(reference, str):
        raise PromptError("invalid_prompt_reference", "A prompt is named `name@version` or `name`.")
    name, separator, version = reference.partition("@")
    check_name(name)
    if not separator:
        return name, None
    if not version.isdigit() or not 1 <= int(version) <= MAX_VERSION:
        raise PromptError("invalid_prompt_reference", f"{reference!r}: the version after '@' is a number "
                                                      "from 1.", {"prompt": reference})
    return name, int(version)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _version_dict(name: str, row: PromptVersion) -> dict[str, Any]:
    return {"name": name, "version": row.version, "reference": f"{name}@{row.version}", "stage": row.stage,
            "template": row.template, "input_variables": list(row.input_variables or []),
            "description": row.description, "created_by": row.created_by, "created_at": _iso(row.created_at),
            "stage_changed_at": _iso(row.stage_changed_at)}


def _deployment_dict(row: PromptDeployment) -> dict[str, Any]:
    return {"id": row.id, "version": row.version, "action": row.action, "previous_version": row.previous_version,
            "actor": row.actor, "at": _iso(row.created_at)}


def _prompt_row(session: Session, name: str, lock: bool = False) -> Prompt:
    query = select(Prompt).where(Prompt.name == check_name(name))
    row = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise PromptNotFound(name)
    return row


def _version_row(session: Session, prompt: Prompt, version: int) -> PromptVersion:
    row = None
    if 1 <= version <= MAX_VERSION:
        row = session.scalars(select(PromptVersion).where(PromptVersion.prompt_id == prompt.id,
                                                          PromptVersion.version == version)).one_or_none()
    if row is None:
        raise PromptNotFound(f"{prompt.name}@{version}")
    return row


def _production(session: Session, prompt: Prompt) -> PromptVersion | None:
    return session.scalars(select(PromptVersion).where(PromptVersion.prompt_id == prompt.id,
                                                       PromptVersion.stage == PRODUCTION)).one_or_none()


def _set_stage(row: PromptVersion, stage: str) -> None:
    row.stage = stage
    row.stage_changed_at = datetime.now(UTC)


def create_prompt(name: str, template: str, input_variables: list[str], description: str | None,
                  actor: str | None) -> dict[str, Any]:
    """A new prompt with its version 1, in production."""
    check_name(name)
    checked = check_template(template, input_variables)
    try:
        with session_scope() as session:
            prompt = Prompt(name=name, description=description, last_version=1, created_by=actor)
            session.add(prompt)
            session.flush()
            row = PromptVersion(prompt_id=prompt.id, version=1, stage=PRODUCTION, template=checked.template,
                                input_variables=list(checked.input_variables), description=description,
                                created_by=actor, stage_changed_at=datetime.now(UTC))
            session.add(row)
            session.add(PromptDeployment(prompt_id=prompt.id, version=1, action="create", actor=actor))
            session.flush()
            session.refresh(row)
            return _version_dict(name, row)
    except IntegrityError:
        raise PromptConflict("prompt_exists", f"A prompt named {name!r} exists: add a version to it "
                             f"(POST /api/v1/prompts/{name}/versions).", {"prompt": name}) from None


def add_version(name: str, template: str, input_variables: list[str], description: str | None,
                actor: str | None) -> dict[str, Any]:
    """A new staging version (the production version keeps serving until this one is promoted)."""
    checked = check_template(template, input_variables)
    with session_scope() as session:
        prompt = _prompt_row(session, name, lock=True)  # the lock serialises version numbers
        prompt.last_version += 1
        prompt.updated_at = datetime.now(UTC)
        row = PromptVersion(prompt_id=prompt.id, version=prompt.last_version, stage=STAGING,
                            template=checked.template, input_variables=list(checked.input_variables),
                            description=description, created_by=actor)
        session.add(row)
        session.flush()
        session.refresh(row)
        return _version_dict(name, row)


def promote(name: str, version: int, actor: str | None) -> dict[str, Any]:
    """Make `version` the production version; the one it replaces is archived."""
    with session_scope() as session:
        prompt = _prompt_row(session, name, lock=True)
        target = _version_row(session, prompt, version)
        current = _production(session, prompt)
        if current is not None and current.id == target.id:
            raise PromptConflict("already_production", f"{name}@{version} is already in production.",
                                 {"prompt": name, "version": version})
        return _switch(session, prompt, target, current, "promote", actor)


def rollback(name: str, to_version: int | None, actor: str | None) -> dict[str, Any]:
    """Return production to the version it had before the current one (or to `to_version`)."""
    with session_scope() as session:
        prompt = _prompt_row(session, name, lock=True)
        current = _production(session, prompt)
        if to_version is None:
            made_current = None
            if current is not None:
                made_current = session.scalars(select(PromptDeployment).where(
                    PromptDeployment.prompt_id == prompt.id, PromptDeployment.version == current.version)
                    .order_by(PromptDeployment.id.desc()).limit(1)).one_or_none()
            to_version = made_current.previous_version if made_current else None
            if to_version is None:
                raise PromptConflict("no_previous_production", f"Prompt {name!r} has no earlier production "
                                     "version to return to.", {"prompt": name})
        target = _version_row(session, prompt, to_version)
        if current is not None and current.id == target.id:
            raise PromptConflict("already_production", f"{name}@{to_version} is already in production.",
                                 {"prompt": name, "version": to_version})
        return _switch(session, prompt, target, current, "rollback", actor)


def _switch(session: Session, prompt: Prompt, target: PromptVersion, current: PromptVersion | None, action: str,
            actor: str | None) -> dict[str, Any]:
    if current is not None:
        _set_stage(current, ARCHIVED)
        session.flush()  # the one-production index is checked per statement
    _set_stage(target, PRODUCTION)
    previous = current.version if current is not None else None
    deployment = PromptDeployment(prompt_id=prompt.id, version=target.version, action=action,
                                  previous_version=previous, actor=actor)
    session.add(deployment)
    prompt.updated_at = datetime.now(UTC)
    session.flush()
    session.refresh(deployment)
    return {"prompt": prompt.name, "version": target.version, "stage": PRODUCTION, "previous_version": previous,
            "deployment": _deployment_dict(deployment)}


def list_prompts() -> list[dict[str, Any]]:
    with session_scope() as session:
        rows = session.execute(
            select(Prompt, PromptVersion.version)
            .outerjoin(PromptVersion, (PromptVersion.prompt_id == Prompt.id) & (PromptVersion.stage == PRODUCTION))
            .order_by(Prompt.name)).all()
        return [{"name": prompt.name, "description": prompt.description, "latest_version": prompt.last_version,
                 "production_version": production, "updated_at": _iso(prompt.updated_at)}
                for prompt, production in rows]


def describe(name: str) -> dict[str, Any]:
    with session_scope() as session:
        prompt = _prompt_row(session, name)
        versions = session.scalars(select(PromptVersion).where(PromptVersion.prompt_id == prompt.id)
                                   .order_by(PromptVersion.version)).all()
        history = session.scalars(select(PromptDeployment).where(PromptDeployment.prompt_id == prompt.id)
                                  .order_by(PromptDeployment.id.desc()).limit(50)).all()
        production = next((row.version for row in versions if row.stage == PRODUCTION), None)
        return {"name": prompt.name, "description": prompt.description, "latest_version": prompt.last_version,
                "production_version": production, "created_by": prompt.created_by,
                "created_at": _iso(prompt.created_at), "updated_at": _iso(prompt.updated_at),
                "versions": [_version_dict(prompt.name, row) for row in versions],
                "deployments": [_deployment_dict(row) for row in history]}


def get_version(name: str, version: int) -> dict[str, Any]:
    with session_scope() as session:
        prompt = _prompt_row(session, name)
        return _version_dict(prompt.name, _version_row(session, prompt, version))


def resolve(reference: str) -> ResolvedPrompt:
    """The exact version a reference names: `name@version`, or `name`'s production version now."""
    name, version = parse_reference(reference)
    with session_scope() as session:
        prompt = _prompt_row(session, name)
        if version is None:
            row = _production(session, prompt)
            if row is None:
                raise PromptConflict("no_production", f"Prompt {name!r} has no production version: name one "
                                     f"(`{name}@<version>`).", {"prompt": name})
        else:
            row = _version_row(session, prompt, version)
        return ResolvedPrompt(prompt.name, row.version, row.template, tuple(row.input_variables or ()))
