"""Tenants for integration tests.

Storage calls made by a test itself (not through the app, which enters the key's tenant per request) need a
tenant in scope, as every caller does (core/tenancy.py: no scope is refused). The suite's session keys
belong to the default tenant, so direct calls act for it too and see what the HTTP calls made.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cortex_tasks.core.auth.keys import create_key, create_tenant
from cortex_tasks.core.tenancy import DEFAULT_TENANT, tenant_scope


@pytest.fixture()
def default_tenant() -> Iterator[str]:
    """Use with `pytestmark = pytest.mark.usefixtures("default_tenant")` in a module that calls stores."""
    with tenant_scope(DEFAULT_TENANT):
        yield DEFAULT_TENANT


def new_tenant(prefix: str = "t") -> str:
    tenant = f"{prefix}-{uuid.uuid4().hex[:10]}"
    assert create_tenant(tenant)
    return tenant


def tenant_keys(tenant: str) -> dict[str, str]:
    """One unlimited key per role of `tenant`."""
    return {role: create_key(role, name=f"test {role} of {tenant}", tier="unlimited", tenant=tenant).key
            for role in ("reader", "inference_user", "model_admin")}
