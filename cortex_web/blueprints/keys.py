"""API key and tenant administration: keys (model_admin, within its tenant; the platform admin in any
tenant) and tenants (platform admin). The rules live in cortex_tasks/core/auth/administration.py."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from cortex_tasks.core.auth import administration
from cortex_tasks.core.auth.keys import list_tenants
from cortex_tasks.core.auth.roles import ADMIN, PLATFORM
from cortex_tasks.core.settings import get_settings
from cortex_web.audit import audited
from cortex_web.auth import current_principal, require
from cortex_web.errors import ApiError
from cortex_web.request_body import parse_body
from cortex_web.schemas import CreateKeyRequest, CreateTenantRequest

bp = Blueprint("keys", __name__, url_prefix="/api/v1")


@bp.post("/keys")
@require(ADMIN)
@audited("key.create")
def create() -> tuple[Response, int]:
    """A new key of the caller's tenant (or, for the platform admin, of the tenant named)."""
    body = parse_body(CreateKeyRequest, get_settings().max_json_depth)
    tiers = get_settings().rate_limit_tiers
    if body.tier not in tiers:
        raise ApiError(422, "unknown_tier", f"Unknown rate-limit tier {body.tier!r}.", {"valid": list(tiers)})
    issued = administration.issue_key(current_principal(), body.role, body.name, body.expires_in_days,
                                      tier=body.tier, tenant=body.tenant, models=body.models, tasks=body.tasks)
    return jsonify({"key_id": issued.key_id, "key": issued.key, "role": issued.role, "tier": issued.tier,
                    "tenant": issued.tenant,
                    "models": list(issued.models) if issued.models is not None else None,
                    "tasks": list(issued.tasks) if issued.tasks is not None else None,
                    "expires_at": issued.expires_at.isoformat() if issued.expires_at else None}), 201


@bp.get("/keys")
@require(ADMIN)
def index() -> Response:
    """The caller's tenant's keys; the platform admin sees every tenant's (or one: ?tenant=)."""
    return jsonify({"keys": administration.visible_keys(current_principal(), request.args.get("tenant"))})


@bp.delete("/keys/<key_id>")
@require(ADMIN)
@audited("key.revoke")
def revoke(key_id: str) -> Response:
    administration.revoke_visible_key(current_principal(), key_id)
    return jsonify({"key_id": key_id, "revoked": True})


@bp.post("/tenants")
@require(PLATFORM)
@audited("tenant.create")
def create_tenant() -> tuple[Response, int]:
    body = parse_body(CreateTenantRequest, get_settings().max_json_depth)
    return jsonify(administration.add_tenant(body.tenant, body.name)), 201


@bp.get("/tenants")
@require(PLATFORM)
def tenants() -> Response:
    return jsonify({"tenants": list_tenants()})
