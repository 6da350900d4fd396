"""Usage and cost: GET /api/v1/usage (the ledger of everything: OpenAI tokens and money, worker seconds of
Cortex's own models and their money, per key, tenant and model) and GET /api/v1/usage/openai (OpenAI only,
with the configured prices and the monthly budget)."""
from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request

from cortex_tasks.core.auth.administration import UnknownTenant, is_platform_admin
from cortex_tasks.core.auth.keys import tenant_exists
from cortex_tasks.core.auth.roles import READ
from cortex_tasks.core.openai import usage as usage_ledger
from cortex_tasks.core.openai.config import CHAT_MODELS, EMBEDDING_MODELS, openai_config
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.usage import ledger
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


@bp.get("/usage")
@require(READ)
def usage() -> Response:
    """The usage ledger: OpenAI tokens and cost and the worker seconds (and their cost) of Cortex's own models,
    summed from ?from= to ?to= (ISO 8601; default: this calendar month, UTC, until now), grouped by
    ?group_by= (a comma-separated subset of tenant, key, model; default all three; empty: totals only).
    A key sees its own tenant: readers and inference users their own key's usage, a model_admin every key
    of the tenant; the platform admin may ask for another tenant (?tenant=) or every tenant
    (?all_tenants=true)."""
    now = datetime.now(UTC)
    since = _moment("from", usage_ledger.month_start(now))
    until = _moment("to", now)
    if until <= since:
        raise ApiError(422, "invalid_query", "to must be later than from",
                       {"from": since.isoformat(), "to": until.isoformat()})
    raw_groups = request.args.get("group_by", ",".join(ledger.GROUPS))
    group_by = tuple(part.strip() for part in raw_groups.split(",") if part.strip())
    unknown = [name for name in group_by if name not in ledger.GROUPS]
    if unknown or len(set(group_by)) != len(group_by):
        raise ApiError(422, "invalid_query", "group_by is a comma-separated list of distinct names from: "
                       + ", ".join(ledger.GROUPS), {"group_by": raw_groups[:200], "valid": list(ledger.GROUPS)})
    principal = current_principal()
    platform = is_platform_admin(principal)
    every_tenant = request.args.get("all_tenants", "").lower() in ("1", "true", "yes")
    if every_tenant and not platform:
        raise ApiError(403, "forbidden", "Only the platform admin may read every tenant's usage.")
    tenant = request.args.get("tenant")
    if tenant is not None and tenant != principal.tenant and not (platform and tenant_exists(tenant)):
        raise UnknownTenant(tenant)  # the same answer whether it exists or not: tenants cannot be probed
    if every_tenant and tenant is not None:
        raise ApiError(422, "invalid_query", "Give tenant or all_tenants, not both.")
    owner = None if is_admin(principal) else principal.key_id
    shown_tenant = None if every_tenant else (tenant or principal.tenant)
    body = ledger.summary(ledger.UsageQuery(
        since=since, until=until, group_by=group_by, owner=owner, tenant=shown_tenant,
        every_tenant=every_tenant or shown_tenant != principal.tenant))
    body.update({
        "from": since.isoformat(), "to": until.isoformat(), "group_by": list(group_by),
        "scope": "all_tenants" if every_tenant else "tenant" if owner is None else "own_key",
        "tenant": shown_tenant,
        "prices": {"worker_second_usd": get_settings().worker_second_prices,
                   "openai_per_1k_tokens_usd": openai_config().prices},
    })
    return jsonify(body)


def _moment(name: str, default: datetime) -> datetime:
    raw = request.args.get(name)
    if not raw:
        return default
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(422, "invalid_query", f"{name} must be an ISO-8601 date or time, e.g. 2025-01-01",
                       {name: raw[:100]}) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
