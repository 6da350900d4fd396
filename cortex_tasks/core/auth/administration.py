"""Who may administer which keys and tenants (the rules behind /api/v1/keys and /api/v1/tenants).

A model_admin manages the keys of its own tenant; the platform admin (role platform_admin, and
CORTEX_ADMIN_KEY) creates tenants and manages keys in any of them. Another tenant's key or tenant is
answered exactly like a missing one (404), so ids cannot be probed across tenants. Only the platform admin
mints platform_admin keys: a tenant's admin cannot raise itself above its tenant.
"""
from __future__ import annotations

from typing import Any

from cortex_tasks.core.auth import keys
from cortex_tasks.core.auth.keys import IssuedKey, Principal
from cortex_tasks.core.auth.roles import PLATFORM, ROLE_PERMISSIONS
from cortex_tasks.core.errors import CortexError


class UnknownTenant(CortexError):
    status = 404

    def __init__(self, tenant: str) -> None:
        super().__init__("unknown_tenant", f"No tenant {tenant[:64]!r} is visible to this key.",
                         {"tenant": tenant[:64]})


class TenantExists(CortexError):
    status = 409


class KeyNotFound(CortexError):
    status = 404


class RoleNotAllowed(CortexError):
    status = 403


def is_platform_admin(principal: Principal) -> bool:
    return PLATFORM in ROLE_PERMISSIONS.get(principal.role, frozenset())


def _administered_tenant(actor: Principal, tenant: str | None) -> str:
    """The tenant a key-administration call acts on: the actor's own when none is named; another one only
    for the platform admin, and only if it exists."""
    if tenant is None or tenant == actor.tenant:
        return actor.tenant
    if not is_platform_admin(actor) or not keys.tenant_exists(tenant):
        raise UnknownTenant(tenant)
    return tenant


def readable_tenants(actor: Principal, tenant: str | None = None) -> str | None:
    """Whose records a platform-wide log (the audit log) shows the actor: its own tenant's; the platform
    admin's, every tenant's (None), events without a tenant included (refused logins, CLI changes), or one
    named tenant's. Naming another tenant is answered as an unknown one whether it exists or not."""
    if is_platform_admin(actor):
        if tenant is not None and not keys.tenant_exists(tenant):
            raise UnknownTenant(tenant)
        return tenant
    if tenant is not None and tenant != actor.tenant:
        raise UnknownTenant(tenant)
    return actor.tenant


def issue_key(actor: Principal, role: str, name: str | None = None, expires_in_days: float | None = None,
              tier: str = "default", tenant: str | None = None, models: list[str] | None = None,
              tasks: list[str] | None = None) -> IssuedKey:
    target = _administered_tenant(actor, tenant)
    if PLATFORM in ROLE_PERMISSIONS.get(role, frozenset()) and not is_platform_admin(actor):
        raise RoleNotAllowed("role_not_allowed", f"Only the platform admin can create {role!r} keys.",
                             {"role": role})
    return keys.create_key(role, name, expires_in_days, tier=tier, tenant=target, models=models, tasks=tasks)


def visible_keys(actor: Principal, tenant: str | None = None) -> list[dict[str, Any]]:
    """The actor's tenant's keys; the platform admin's view is every tenant's unless it names one."""
    if is_platform_admin(actor) and tenant is None:
        return keys.list_keys()
    return keys.list_keys(_administered_tenant(actor, tenant))


def revoke_visible_key(actor: Principal, key_id: str) -> None:
    """Revoke a key of the actor's tenant (any tenant's for the platform admin); a key of another tenant
    is not found. A tenant's admin cannot revoke the platform admin's keys that live in its tenant."""
    if is_platform_admin(actor):
        revoked = keys.revoke_key(key_id)
    else:
        holder = next((key for key in keys.list_keys(actor.tenant) if key["key_id"] == key_id), None)
        if holder is not None and PLATFORM in ROLE_PERMISSIONS.get(holder["role"], frozenset()):
            raise RoleNotAllowed("role_not_allowed", "Only the platform admin can revoke a platform_admin key.",
                                 {"key_id": key_id})
        revoked = keys.revoke_key(key_id, tenant=actor.tenant)
    if not revoked:
        raise KeyNotFound("key_not_found", f"No active key {key_id[:64]!r}.")


def add_tenant(tenant: str, name: str | None = None) -> dict[str, Any]:
    try:
        created = keys.create_tenant(tenant, name)
    except ValueError as exc:
        raise CortexError("invalid_tenant", str(exc), {"tenant": tenant[:64]}) from None
    if not created:
        raise TenantExists("tenant_exists", f"The tenant {tenant!r} exists already.", {"tenant": tenant})
    return next(row for row in keys.list_tenants() if row["tenant"] == tenant)
