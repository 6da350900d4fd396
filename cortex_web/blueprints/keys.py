"""API key administration (model_admin): create, list, revoke."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from cortex_tasks.core.auth.keys import create_key, list_keys, revoke_key
from cortex_tasks.core.auth.roles import ADMIN
from cortex_tasks.core.settings import get_settings
from cortex_web.audit import audited
from cortex_web.auth import require
from cortex_web.errors import ApiError
from cortex_web.request_body import parse_body
from cortex_web.schemas import CreateKeyRequest

bp = Blueprint("keys", __name__, url_prefix="/api/v1")


@bp.post("/keys")
@require(ADMIN)
@audited("key.create")
def create() -> tuple[Response, int]:
    body = parse_body(CreateKeyRequest, get_settings().max_json_depth)
    tiers = get_settings().rate_limit_tiers
    if body.tier not in tiers:
        raise ApiError(422, "unknown_tier", f"Unknown rate-limit tier {body.tier!r}.", {"valid": list(tiers)})
    issued = create_key(body.role, body.name, body.expires_in_days, tier=body.tier)
    return jsonify({"key_id": issued.key_id, "key": issued.key, "role": issued.role, "tier": issued.tier,
                    "expires_at": issued.expires_at.isoformat() if issued.expires_at else None}), 201


@bp.get("/keys")
@require(ADMIN)
def index() -> Response:
    return jsonify({"keys": list_keys()})


@bp.delete("/keys/<key_id>")
@require(ADMIN)
@audited("key.revoke")
def revoke(key_id: str) -> Response:
    if not revoke_key(key_id):
        raise ApiError(404, "key_not_found", f"No active key {key_id!r}.")
    return jsonify({"key_id": key_id, "revoked": True})
