"""Which API key, and which tenant, an OpenAI call is billed to.

Workers see params, not callers, so the gateway writes the calling key's id and its tenant into the params
of every request for an OpenAI model (`billed_params`), replacing anything a client sent under those
names: a client cannot bill another key or tenant. The backends read them back with `billing_owner` and
`billing_tenant`. The tenant travels in the params, not only in the worker's scope, because the calls are
made on the batcher's and the client's own threads, where no tenant is in scope.
"""
from __future__ import annotations

from typing import Any

from cortex_tasks.core.openai.config import is_openai_model
from cortex_tasks.core.openai.usage import UNATTRIBUTED
from cortex_tasks.core.tenancy import TENANT_ID, current_tenant

BILLING_PARAM = "billing_key"
BILLING_TENANT_PARAM = "billing_tenant"


def billed_params(model_name: str, params: dict[str, Any], key_id: str, tenant: str | None = None) -> dict[str, Any]:
    """`tenant`: the caller's (default: the tenant in scope, the request's)."""
    if not is_openai_model(model_name):
        return params
    return {**params, BILLING_PARAM: key_id, BILLING_TENANT_PARAM: tenant if tenant is not None else current_tenant()}


def billing_tenant(params: dict[str, Any]) -> str | None:
    """None for params of a release before tenants (the usage ledger then records the default tenant)."""
    tenant = params.get(BILLING_TENANT_PARAM)
    return tenant if isinstance(tenant, str) and TENANT_ID.fullmatch(tenant) else None


def billing_owner(params: dict[str, Any]) -> str:
    owner = params.get(BILLING_PARAM)
    return owner if isinstance(owner, str) and owner else UNATTRIBUTED


def without_billing(params: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in params.items() if name not in (BILLING_PARAM, BILLING_TENANT_PARAM)}
