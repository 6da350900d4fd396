"""Tenant-qualified references to registered models: `<tenant>/<name>@<version>`.

Registered models belong to a tenant, and two tenants may both register `sentiment-custom`: their
`sentiment-custom@1` are different models. A request names its model as the user knows it (`name@1`,
resolved within the caller's tenant); everything after resolution that outlives the request or is shared
between tenants names it qualified: the prediction message, the worker's loaded-model registry, the
coalescer's groups, the answer cache's keys and the cache-warming query log. So no process-wide table can
hand one tenant's model, or its answers, to another.

`/` is in neither a tenant id (tenancy.TENANT_ID) nor a model name (records.MODEL_NAME): a qualified
reference cannot be mistaken for a plain one. Bundled catalogue models are shared by every tenant and
are never qualified. The qualified form is internal: answers show the plain name.
"""
from __future__ import annotations

from cortex_tasks.core.tenancy import TENANT_ID

SEPARATOR = "/"


def qualify(tenant: str, reference: str) -> str:
    return f"{tenant}{SEPARATOR}{reference}"


def split_qualified(reference: str) -> tuple[str | None, str]:
    """(tenant, plain reference); tenant None for a plain reference. A prefix that is not a tenant id
    is left in place (and then names no model)."""
    tenant, separator, plain = reference.partition(SEPARATOR)
    if not separator or not TENANT_ID.fullmatch(tenant):
        return None, reference
    return tenant, plain


def plain(reference: str) -> str:
    """The reference as its tenant's users write it."""
    return split_qualified(reference)[1]


def plain_model_name(reference: str) -> str:
    """The model's name alone (`<tenant>/m@3` -> `m`): for answers and per-model key limits."""
    return plain(reference).partition("@")[0]
