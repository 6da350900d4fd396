"""Which API key an OpenAI call is billed to.

Workers see params, not callers, so the gateway writes the calling key's id into the params of every
request for an OpenAI model (`billed_params`), replacing anything a client sent under that name: a
client cannot bill another key. The backends read it back with `billing_owner`.
"""
from __future__ import annotations

from typing import Any

from cortex_tasks.core.openai.config import is_openai_model
from cortex_tasks.core.openai.usage import UNATTRIBUTED

BILLING_PARAM = "billing_key"


def billed_params(model_name: str, params: dict[str, Any], key_id: str) -> dict[str, Any]:
    if not is_openai_model(model_name):
        return params
    return {**params, BILLING_PARAM: key_id}


def billing_owner(params: dict[str, Any]) -> str:
    owner = params.get(BILLING_PARAM)
    return owner if isinstance(owner, str) and owner else UNATTRIBUTED


def without_billing(params: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in params.items() if name != BILLING_PARAM}
