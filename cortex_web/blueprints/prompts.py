"""Prompt templates as versioned assets: /api/v1/prompts (create, list, read, add a version, promote,
roll back, render).

Reading and rendering need `read`; creating, versioning, promoting and rolling back need `deploy`
(model_admin), as for registered models. Prompts belong to the caller's tenant: another tenant's prompt
answers 404 like a missing one. Chat (`prompt` in POST /api/v1/chat/{id}) and agents name a prompt
`name@version`, or `name` for its production version; their jobs record the exact version they used.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cortex_tasks.core.auth.roles import DEPLOY, READ
from cortex_tasks.core.prompts import service
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.storable import first_unstorable
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.request_body import parse_body

bp = Blueprint("prompts", __name__, url_prefix="/api/v1")


class StorableBody(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _storable(cls, body: Any) -> Any:
        where = first_unstorable(body) if isinstance(body, dict) else None
        if where is not None:  # PostgreSQL refuses NUL and unpaired surrogates: a 422, not a 500
            raise ValueError(f"{where} holds a NUL character or an unpaired surrogate, which cannot be stored")
        return body


class NewVersionRequest(StorableBody):
    model_config = ConfigDict(extra="forbid", strict=True)

    template: str = Field(min_length=1, max_length=20_000)
    input_variables: list[str] = Field(default_factory=list, max_length=50)
    description: str | None = Field(default=None, max_length=2000)


class CreatePromptRequest(NewVersionRequest):
    name: str = Field(min_length=1, max_length=128)


class RollbackPromptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    to_version: int | None = Field(default=None, ge=1)


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: int | None = Field(default=None, ge=1)
    variables: dict[str, Any] = Field(default_factory=dict)


REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/api/v1/prompts"): CreatePromptRequest,
    ("post", "/api/v1/prompts/{name}/versions"): NewVersionRequest,
    ("post", "/api/v1/prompts/{name}/rollback"): RollbackPromptRequest,
    ("post", "/api/v1/prompts/{name}/render"): RenderRequest,
}


def _body(model: type[BaseModel]) -> Any:
    return parse_body(model, get_settings().max_json_depth)


@bp.post("/prompts")
@require(DEPLOY)
@audited("prompt.create")
def create_prompt() -> tuple[Response, int]:
    """A new prompt; its version 1 is in production at once."""
    body = _body(CreatePromptRequest)
    created = service.create_prompt(body.name, body.template, body.input_variables, body.description,
                                    current_principal().key_id)
    return jsonify(created), 201


@bp.get("/prompts")
@require(READ)
def list_prompts() -> Response:
    """The tenant's prompts with their latest and production versions."""
    return jsonify({"prompts": service.list_prompts()})


@bp.get("/prompts/<name>")
@require(READ)
def show_prompt(name: str) -> Response:
    """Every version of the prompt, its production version and its deployment history."""
    return jsonify(service.describe(name))


@bp.get("/prompts/<name>/versions/<int:version>")
@require(READ)
def show_version(name: str, version: int) -> Response:
    return jsonify(service.get_version(name, version))


@bp.post("/prompts/<name>/versions")
@require(DEPLOY)
@audited("prompt.version")
def add_version(name: str) -> tuple[Response, int]:
    """A new version, in staging: production keeps its version until this one is promoted."""
    body = _body(NewVersionRequest)
    added = service.add_version(name, body.template, body.input_variables, body.description,
                                current_principal().key_id)
    return jsonify(added), 201


@bp.post("/prompts/<name>/versions/<int:version>/promote")
@require(DEPLOY)
@audited("prompt.promote")
def promote(name: str, version: int) -> Response:
    """Make the version the production one (what `name` alone means from now on)."""
    return jsonify(service.promote(name, version, current_principal().key_id))


@bp.post("/prompts/<name>/rollback")
@require(DEPLOY)
@audited("prompt.rollback")
def rollback(name: str) -> Response:
    """Return production to the version before the current one (or `to_version`)."""
    body = _body(RollbackPromptRequest) if request.get_data(cache=True) else RollbackPromptRequest()
    return jsonify(service.rollback(name, body.to_version, current_principal().key_id))


@bp.post("/prompts/<name>/render")
@require(READ)
def render(name: str) -> Response:
    """The prompt (its production version, or `version`) with `variables` filled in; changes nothing."""
    body = _body(RenderRequest)
    resolved = service.resolve(f"{name}@{body.version}" if body.version is not None else name)
    return jsonify({**resolved.as_record(), "text": resolved.render(body.variables)})
