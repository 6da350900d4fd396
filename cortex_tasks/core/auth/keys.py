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
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update

from cortex_tasks.core.auth.roles import ROLES
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import ApiKey

PREFIX = "ctx"
ADMIN_KEY_ID = "env-admin"


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    tier: str = "default"  # rate-limit tier (settings.rate_limit_tiers)
    tenant: str = "default"


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    key: str
    role: str
    expires_at: datetime | None
    tier: str = "default"


# Ids are token_hex(6); anything else (a NUL, which PostgreSQL refuses, a path) names no key: answered
# as unknown without a query.
KEY_ID = re.compile(r"[0-9a-f]{12}")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(role: str, name: str | None = None, expires_in_days: float | None = None,
               tier: str = "default") -> IssuedKey:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    tiers = get_settings().rate_limit_tiers
    if tier not in tiers:
        raise ValueError(f"unknown tier {tier!r}; tiers are {', '.join(tiers)}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    expires_at = (datetime.now(timezone.utc) + timedelta(days=expires_in_days)) if expires_in_days else None
    with session_scope() as session:
        session.add(ApiKey(id=key_id, secret_hash=_hash(secret), role=role, tier=tier, name=name,
                           expires_at=expires_at))
    return IssuedKey(key_id, f"{PREFIX}_{key_id}_{secret}", role, expires_at, tier)


def verify_key(presented: str, admin_key: str | None = None) -> Principal | None:
    """Return who holds the key, or None if it is unknown, malformed, expired or revoked."""
    if admin_key and hmac.compare_digest(presented.encode(), admin_key.encode()):
        return Principal(ADMIN_KEY_ID, "model_admin", get_settings().admin_key_tier)
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
    now = datetime.now(timezone.utc)
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return Principal(row.id, row.role, row.tier)


def revoke_key(key_id: str) -> bool:
    if not KEY_ID.fullmatch(key_id):
        return False
    with session_scope() as session:
        changed = session.execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=datetime.now(timezone.utc))
        ).rowcount
    return bool(changed)


def list_keys() -> list[dict[str, str | None]]:
    with session_scope() as session:
        rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
    return [
        {
            "key_id": row.id, "role": row.role, "tier": row.tier, "name": row.name,
            "created_at": row.created_at.isoformat(),
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        }
        for row in rows
    ]
