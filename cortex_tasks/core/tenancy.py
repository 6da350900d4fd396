"""Which tenant the code running now acts for, and the storage layer's check of it.

Every stored resource carries its tenant (tables.TenantOwned). The check is made here, once, rather than
in each route, so a new route or task cannot forget it: every ORM statement on a tenant-owned table gets
`tenant = <the current tenant>` added (SQLAlchemy's `with_loader_criteria`, in `do_orm_execute`), and
every new tenant-owned row gets the current tenant. A statement on a tenant-owned table with no tenant
in scope raises TenantScopeMissing instead of reading everyone's rows (fail closed).

Who sets the scope:
- the gateway, per request, from the authenticated key (cortex_web.auth);
- a worker, per task, from the `tenant` of the task's message (runtime.worker_signals);
- code that works across tenants on purpose (maintenance, the stale-job sweep, migrations, the CLI's
  platform commands) enters `all_tenants()`, which says so where it happens.

Raw SQL (jobs.store, the per-collection vector tables) is not seen by the ORM events: those statements
name their tenant themselves.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

DEFAULT_TENANT: Final = "default"
# Tenant ids appear in URLs, object-store paths and log lines: lower-case slugs only.
TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class _AllTenants:
    """The scope of code that works across tenants on purpose."""

    def __repr__(self) -> str:
        return "<all tenants>"


ALL_TENANTS: Final = _AllTenants()
_scope: ContextVar[str | _AllTenants | None] = ContextVar("cortex_tenant_scope", default=None)


class TenantScopeMissing(RuntimeError):
    """A tenant-owned table was used with no tenant in scope: a bug, never a client's fault (so not a
    CortexError: the gateway answers it as any other internal error)."""


def current_scope() -> str | _AllTenants | None:
    return _scope.get()


def current_tenant() -> str:
    """The tenant acted for; raises where none is set or where the code acts for all tenants."""
    scope = _scope.get()
    if not isinstance(scope, str):
        raise TenantScopeMissing(f"no single tenant in scope (scope is {scope!r})")
    return scope


@contextmanager
def tenant_scope(tenant: str) -> Iterator[str]:
    if not TENANT_ID.fullmatch(tenant):
        raise ValueError(f"not a tenant id: {tenant!r}")
    token = _scope.set(tenant)
    try:
        yield tenant
    finally:
        _scope.reset(token)


@contextmanager
def all_tenants() -> Iterator[None]:
    token = _scope.set(ALL_TENANTS)
    try:
        yield
    finally:
        _scope.reset(token)


def enter_tenant(tenant: str | None) -> object:
    """For hooks that cannot use a with-block (a request's before/teardown, a task's prerun/postrun):
    set the scope and return the token `leave_tenant` takes. None enters no tenant (fail closed)."""
    if tenant is not None and not TENANT_ID.fullmatch(tenant):
        raise ValueError(f"not a tenant id: {tenant!r}")
    return _scope.set(tenant)


def leave_tenant(token: object) -> None:
    _scope.reset(token)  # type: ignore[arg-type]
