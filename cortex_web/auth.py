"""Authentication (Bearer or X-API-Key) and per-route permission checks.

A bearer credential shaped like a JWT is verified as an access token (cortex_tasks/core/auth/tokens.py:
Cortex's own, or the configured identity provider's); anything else as an API key.

Verified keys and tokens are remembered for a short time so that a busy client costs one database lookup
every few seconds, not one per request; a revoked key (and the tokens issued to it) therefore stops working
within that window, and a token is never remembered past its expiry. When a remembered credential expires,
one of its waiting requests looks it up and the others use that answer (64 concurrent requests of one
client used to make 64 lookups at once).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from cortex_tasks.core import redis_clock
from cortex_tasks.core.auth.keys import Principal, verify_key
from cortex_tasks.core.auth.roles import ROLE_PERMISSIONS
from cortex_tasks.core.auth.tokens import looks_like_jwt, verify_token
from cortex_tasks.core.dependencies import DATABASE, DependencyUnavailable, failed_dependency
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import enter_tenant, leave_tenant, tenant_scope
from cortex_web.errors import ApiError

CACHE_SECONDS = 2.0
# How long a verified credential is still accepted while the database is away (see _known_while_database_away).
STALE_SECONDS = 300.0
MAX_CACHED_KEYS = 10_000
_cache: dict[str, tuple[float, Principal]] = {}
_cache_lock = threading.Lock()
_lookups: dict[str, threading.Lock] = {}  # one lookup at a time per presented key

View = TypeVar("View", bound=Callable[..., Any])
T = TypeVar("T")


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("X-API-Key", "").strip() or None


def _remembered(key: str) -> Principal | None:
    cached = _cache.get(key)
    return cached[1] if cached and cached[0] > time.monotonic() else None


def _principal_for(key: str) -> Principal | None:
    principal = _remembered(key)
    if principal is not None:
        return principal
    with _cache_lock:
        lookup = _lookups.setdefault(key, threading.Lock())
    with lookup:
        principal = _remembered(key)  # another request may have looked it up while this one waited
        if principal is not None:
            return principal
        remember_for = CACHE_SECONDS
        try:
            if looks_like_jwt(key):
                verified = verify_token(key)  # raises TokenError (401) with the reason
                principal = verified.principal
                remember_for = min(CACHE_SECONDS, verified.expires_at - redis_clock.shared_now())  # exp's clock
            else:
                principal = verify_key(key, get_settings().admin_key)
        except Exception as exc:
            known = _known_while_database_away(key, exc)
            if known is None:
                raise
            return known
        finally:
            with _cache_lock:
                _lookups.pop(key, None)
        if principal is not None and remember_for > 0:
            with _cache_lock:
                if len(_cache) >= MAX_CACHED_KEYS:
                    _cache.clear()
                _cache[key] = (time.monotonic() + remember_for, principal)
    return principal


def _known_while_database_away(key: str, error: Exception) -> Principal | None:
    """A key verified within STALE_SECONDS still works while the database cannot be asked: the requests
    that need no database (a cached prediction) are then still answered. Nothing can revoke a key while
    the database is away, so this grants little a working database would refuse (a key that expired in
    the meantime). Access tokens are left out: their expiry is their own and is always checked."""
    if looks_like_jwt(key):
        return None
    if not isinstance(error, DependencyUnavailable) and failed_dependency(error) != DATABASE:
        return None
    cached = _cache.get(key)
    return cached[1] if cached is not None and cached[0] + STALE_SECONDS > time.monotonic() else None


def authenticate() -> None:
    """before_request for /api/v1: every route there needs a valid key."""
    if optional_principal() is None:
        raise ApiError(401, "missing_api_key", "Send an API key as 'Authorization: Bearer <key>' or 'X-API-Key'.",
                       headers={"WWW-Authenticate": "Bearer"})


def optional_principal() -> Principal | None:
    """For a public route that tells a caller with a key more (GET /ready): who holds the key sent, or None
    when none was sent. A key that is sent but unknown, expired or revoked is refused (401) as on
    /api/v1, rather than quietly answered as if anonymous."""
    key = _presented_key()
    if key is None:
        return None
    principal = _principal_for(key)
    if principal is None:
        raise ApiError(401, "invalid_api_key", "The API key is unknown, expired or revoked.",
                       headers={"WWW-Authenticate": "Bearer"})
    g.principal = principal
    # Every storage call of this request now sees only the key's tenant (core/tenancy.py).
    g.tenant_token = enter_tenant(principal.tenant)
    return principal


def leave_request_tenant() -> None:
    """teardown_request: a pooled thread must not carry one request's tenant into the next."""
    token = g.pop("tenant_token", None)
    if token is not None:
        leave_tenant(token)


def in_request_tenant(body: Iterator[T]) -> Iterator[T]:
    """A streamed response body, iterated in the request's tenant: the scope authenticate() entered does
    not reach the generator, which runs after the view has returned (Flask's stream_with_context brings
    back the request, not this context variable)."""
    tenant = current_principal().tenant

    def scoped() -> Iterator[T]:
        with tenant_scope(tenant):
            yield from body

    return scoped()


def current_principal() -> Principal:
    return g.principal


def is_admin(principal: Principal) -> bool:
    return "admin" in ROLE_PERMISSIONS[principal.role]


def require(permission: str) -> Callable[[View], View]:
    def decorate(view: View) -> View:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal()
            if permission not in ROLE_PERMISSIONS.get(principal.role, ()):
                raise ApiError(403, "forbidden",
                               f"The role {principal.role!r} does not allow this ({permission!r} is needed).")
            return view(*args, **kwargs)

        guarded.required_permission = permission  # type: ignore[attr-defined]
        return guarded  # type: ignore[return-value]

    return decorate
