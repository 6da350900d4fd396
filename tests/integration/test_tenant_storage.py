"""The storage layer keeps tenants apart by itself (core/tenancy.py, storage/db.py): every ORM statement on a
tenant-owned table sees only the tenant in scope, new rows take it, and no scope at all is refused."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete, func, select, update

from cortex_tasks.core.auth.keys import create_key, create_tenant, verify_key
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import ChatSession
from cortex_tasks.core.tenancy import TenantScopeMissing, all_tenants, current_tenant, tenant_scope


@pytest.fixture(scope="module")
def two_tenants() -> tuple[str, str]:
    first, second = f"ta-{uuid.uuid4().hex[:8]}", f"tb-{uuid.uuid4().hex[:8]}"
    assert create_tenant(first) and create_tenant(second)
    assert not create_tenant(first)  # exists already
    return first, second


def _add_session(tenant: str, session_id: str) -> None:
    with tenant_scope(tenant), session_scope() as session:
        session.add(ChatSession(id=session_id, owner="k"))


def test_rows_are_stamped_and_read_only_within_their_tenant(two_tenants):
    first, second = two_tenants
    # Two tenants may use the same client-chosen id.
    _add_session(first, "shared-id")
    _add_session(second, "shared-id")
    _add_session(first, "only-first")

    with tenant_scope(second), session_scope() as session:
        rows = session.scalars(select(ChatSession)).all()
        assert {(row.tenant, row.id) for row in rows} == {(second, "shared-id")}
        assert session.get(ChatSession, (first, "only-first")) is None
        assert session.scalar(select(func.count()).select_from(ChatSession)) == 1

    with all_tenants(), session_scope() as session:
        tenants = set(session.scalars(select(ChatSession.tenant).where(ChatSession.id == "shared-id")))
        assert tenants == {first, second}


def test_updates_and_deletes_touch_only_the_current_tenant(two_tenants):
    first, second = two_tenants
    _add_session(first, "to-delete")
    _add_session(second, "to-delete")
    with tenant_scope(second), session_scope() as session:
        changed = session.execute(update(ChatSession).where(ChatSession.id == "to-delete")
                                  .values(owner="changed")).rowcount
        assert changed == 1
        removed = session.execute(delete(ChatSession).where(ChatSession.id == "to-delete")).rowcount
        assert removed == 1
    with tenant_scope(first), session_scope() as session:
        row = session.get(ChatSession, (first, "to-delete"))
        assert row is not None and row.owner == "k"


def test_no_tenant_in_scope_is_refused_not_answered_with_every_row():
    with pytest.raises(TenantScopeMissing):
        with session_scope() as session:
            session.scalars(select(ChatSession)).all()
    with pytest.raises(TenantScopeMissing):
        with session_scope() as session:
            session.add(ChatSession(id="nobody", owner="k"))
    with pytest.raises(TenantScopeMissing):
        current_tenant()


def test_a_row_naming_another_tenant_cannot_be_written_from_a_scope(two_tenants):
    first, second = two_tenants
    with pytest.raises(TenantScopeMissing):
        with tenant_scope(first), session_scope() as session:
            session.add(ChatSession(id="smuggled", owner="k", tenant=second))


def test_keys_belong_to_a_tenant_and_carry_their_limits(two_tenants):
    first, _ = two_tenants
    issued = create_key("inference_user", tenant=first, models=["all-MiniLM-L6-v2"], tasks=["embed"])
    principal = verify_key(issued.key)
    assert principal is not None
    assert principal.tenant == first
    assert principal.models == frozenset({"all-MiniLM-L6-v2"}) and principal.tasks == frozenset({"embed"})
    with pytest.raises(ValueError, match="no tenant"):
        create_key("reader", tenant="no-such-tenant")
