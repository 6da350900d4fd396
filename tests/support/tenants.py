"""Tenants for integration tests: a new tenant, and a key of each role in it. (Storage calls a test makes
itself act for the default tenant through the `in_default_tenant` fixture of tests/integration/conftest.py.)
"""
from __future__ import annotations

import uuid

from cortex_tasks.core.auth.keys import create_key, create_tenant


def new_tenant(prefix: str = "t") -> str:
    tenant = f"{prefix}-{uuid.uuid4().hex[:10]}"
    assert create_tenant(tenant)
    return tenant


def tenant_keys(tenant: str) -> dict[str, str]:
    """One unlimited key per role of `tenant`."""
    return {role: create_key(role, name=f"test {role} of {tenant}", tier="unlimited", tenant=tenant).key
            for role in ("reader", "inference_user", "model_admin")}
