"""OpenAI usage and cost: GET /api/v1/usage/openai."""
from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request

from cortex_tasks.core.auth.administration import UnknownTenant, is_platform_admin
from cortex_tasks.core.auth.keys import tenant_exists
from cortex_tasks.core.auth.roles import READ
from cortex_tasks.core.openai import usage as usage_ledger
from cortex_tasks.core.openai.config import CHAT_MODELS, EMBEDDING_MODELS, openai_config
from cortex_web.auth import current_principal, is_admin, require
from cortex_web.errors import ApiError
from cortex_web.metrics import register_shared_collector

bp = Blueprint("usage", __name__, url_prefix="/api/v1")
register_shared_collector(usage_ledger.OpenAIUsageCollector())


@bp.get("/usage/openai")
@require(READ)
def openai_usage() -> Response:
    """Tokens and cost per tenant, key and model, with totals per tenant, this calendar month (UTC) or since
    ?since=ISO-8601. Readers and inference users see their own key's usage, a model_admin every key of its
    tenant, the platform admin every tenant (or one, with ?tenant=)."""
    since = usage_ledger.month_start()
    raw_since = request.args.get("since")
    if raw_since:
        try:
            since = datetime.fromisoformat(raw_since)
        except ValueError:
            raise ApiError(422, "invalid_request", "since must be an ISO-8601 date or time, e.g. 2025-01-01",
                           {"since": raw_since}) from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    principal = current_principal()
    platform = is_platform_admin(principal)
    tenant = request.args.get("tenant")
    if tenant is not None and tenant != principal.tenant and not (platform and tenant_exists(tenant)):
        raise UnknownTenant(tenant)  # the same answer whether it exists or not: tenants cannot be probed
    owner = None if is_admin(principal) else principal.key_id
    config = openai_config()
    body = usage_ledger.summary(owner, since, every_tenant=platform, tenant=tenant)
    body.update({
        "scope": ("all_tenants" if platform and tenant is None else "tenant" if owner is None else "own_key"),
        "tenant": tenant if tenant is not None else (None if platform else principal.tenant),
        "configured": config.configured,
        "models": {"generate": list(CHAT_MODELS), "embed": list(EMBEDDING_MODELS)},
        "prices_per_1k_tokens_usd": config.prices,
        "budget": {"monthly_budget_usd": config.monthly_budget_usd,
                   "month_to_date_usd": round(usage_ledger.month_spend(), 8)},
    })
    return jsonify(body)
