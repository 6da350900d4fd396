"""API keys: `ctx_<id>_<secret>`. Only sha256(secret) is stored; the id finds the row in one lookup.

The secret is 32 random bytes, so a fast hash is enough (no password stretching is needed against
brute force of a 256-bit value); the comparison is constant-time.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from cortex_tasks.core.auth.roles import ROLES
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import ApiKey, Tenant
from cortex_tasks.core.tenancy import DEFAULT_TENANT, TENANT_ID, all_tenants

PREFIX = "ctx"
ADMIN_KEY_ID = "env-admin"


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    tier: str = "default"  # rate-limit tier (settings.rate_limit_tiers)
    tenant: str = DEFAULT_TENANT  # every key belongs to a tenant
    models: frozenset[str] | None = None  # None: any model; else only these model names
    tasks: frozenset[str] | None = None  # None: any task; else only these tasks


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    key: str
    role: str
    expires_at: datetime | None
    tier: str = "default"
    tenant: str = DEFAULT_TENANT
    models: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None


# Ids are token_hex(6); anything else (a NUL, which PostgreSQL refuses, a path) names no key: answered
# as unknown without a query.
KEY_ID = re.compile(r"[0-9a-f]{12}")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class UnknownTenant(ValueError):
    pass


def create_key(role: str, name: str | None = None, expires_in_days: float | None = None,
               tier: str = "default", tenant: str = DEFAULT_TENANT,
               models: list[str] | None = None, tasks: list[str] | None = None) -> IssuedKey:
    """Make a key of `tenant` (which must exist). `models`/`tasks`, when given, are the only model
    names / tasks the key may use."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    tiers = get_settings().rate_limit_tiers
    if tier not in tiers:
        raise ValueError(f"unknown tier {tier!r}; tiers are {', '.join(tiers)}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    expires_at = (datetime.now(UTC) + timedelta(days=expires_in_days)) if expires_in_days else None
    allowed_models = sorted(set(models)) if models is not None else None
    allowed_tasks = sorted(set(tasks)) if tasks is not None else None
    with session_scope() as session:
        if not TENANT_ID.fullmatch(tenant) or session.get(Tenant, tenant) is None:
            raise UnknownTenant(f"no tenant {tenant!r}")
        session.add(ApiKey(id=key_id, secret_hash=_hash(secret), role=role, tier=tier, name=name,
                           expires_at=expires_at, tenant=tenant, models=allowed_models, tasks=allowed_tasks))
    return IssuedKey(key_id, f"{PREFIX}_{key_id}_{secret}", role, expires_at, tier, tenant,
                     tuple(allowed_models) if allowed_models is not None else None,
                     tuple(allowed_tasks) if allowed_tasks is not None else None)


def create_tenant(tenant: str, name: str | None = None) -> bool:
    """Create a tenant; False when it exists already."""
    if not TENANT_ID.fullmatch(tenant):
        raise ValueError(f"a tenant id is 1-64 lower-case letters, digits, '-' or '_', starting with a "
                         f"letter or digit: {tenant!r}")
    with session_scope() as session:
        if session.get(Tenant, tenant) is not None:
            return False
        session.add(Tenant(id=tenant, name=name))
    return True


def tenant_exists(tenant: str) -> bool:
    if not TENANT_ID.fullmatch(tenant):
        return False
    with session_scope() as session:
        return session.get(Tenant, tenant) is not None


def tenant_ids() -> list[str]:
    """Every tenant's id, in order: what platform jobs (retention) walk through, one tenant at a time."""
    with all_tenants(), session_scope() as session:
        return list(session.scalars(select(Tenant.id).order_by(Tenant.id)))


def list_tenants() -> list[dict[str, str | None]]:
    with session_scope() as session:
        rows = session.scalars(select(Tenant).order_by(Tenant.id)).all()
    return [{"tenant": row.id, "name": row.name, "created_at": row.created_at.isoformat()} for row in rows]


def verify_key(presented: str, admin_key: str | None = None) -> Principal | None:
    """Return who holds the key, or None if it is unknown, malformed, expired or revoked."""
    if admin_key and hmac.compare_digest(presented.encode(), admin_key.encode()):
        # CORTEX_ADMIN_KEY is the operator's: it administers the platform, acting in the default tenant.
        return Principal(ADMIN_KEY_ID, "platform_admin", get_settings().admin_key_tier)
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    _, key_id, secret = parts
    if not KEY_ID.fullmatch(key_id):
        return None
    with session_scope() as session:
        row = session.get(ApiKey, key_id)
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
        return None
    return _active(row)


def active_principal(key_id: str) -> Principal | None:
    """Who holds the key `key_id` while it is active (no secret: for access tokens issued to the key,
    which stop working when the key is revoked or expires); None otherwise."""
    if not KEY_ID.fullmatch(key_id):
        return None
    with session_scope() as session:
        row = session.get(ApiKey, key_id)
    return None if row is None else _active(row)


def _active(row: ApiKey) -> Principal | None:
    now = datetime.now(UTC)
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return Principal(row.id, row.role, row.tier, row.tenant,
                     frozenset(row.models) if row.models is not None else None,
                     frozenset(row.tasks) if row.tasks is not None else None)


def revoke_key(key_id: str, tenant: str | None = None) -> bool:
    """Revoke a key; with `tenant`, only a key of that tenant (None: any, for the platform admin)."""
    if not KEY_ID.fullmatch(key_id):
        return False
    with session_scope() as session:
        statement = update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        if tenant is not None:
            statement = statement.where(ApiKey.tenant == tenant)
        changed = session.execute(statement.values(revoked_at=datetime.now(UTC))).rowcount
    return bool(changed)


def list_keys(tenant: str | None = None) -> list[dict[str, Any]]:
    """The keys of `tenant` (None: of every tenant, for the platform admin)."""
    with session_scope() as session:
        statement = select(ApiKey).order_by(ApiKey.created_at)
        if tenant is not None:
            statement = statement.where(ApiKey.tenant == tenant)
        rows = session.scalars(statement).all()
    return [
        {
            "key_id": row.id, "role": row.role, "tier": row.tier, "name": row.name, "tenant": row.tenant,
            "models": row.models, "tasks": row.tasks,
            "created_at": row.created_at.isoformat(),
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        }
        for row in rows
    ]
