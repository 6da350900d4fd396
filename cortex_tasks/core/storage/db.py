"""The SQLAlchemy engine and sessions, one engine per process.

Prefork children must not share their parent's connections: `reset_engine()` is called after fork
(worker_process_init) so each child opens its own pool.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.errors import _WaitTimeout
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker, with_loader_criteria
from sqlalchemy.sql.util import find_tables

from cortex_tasks.core import dependencies
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.tables import Base, TenantOwned
from cortex_tasks.core.tenancy import ALL_TENANTS, TenantScopeMissing, current_scope


def sqlalchemy_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


# Seconds one database answer may take in this process (None: no bound). The gateway sets it
# (use_answer_deadline) so that a stalled server costs a request a bounded wait, not the whole outage; a
# worker leaves it unset, its statements (a vector index build, a long batch write) may run long.
_answer_deadline: float | None = None
# A longer bound for one piece of work that reads much by design (answer_deadline()).
LONG_READ_SECONDS = 120.0
_deadline_here: ContextVar[float | None] = ContextVar("cortex_answer_deadline", default=None)


class BoundedConnection(psycopg.Connection):  # type: ignore[type-arg]
    """A psycopg connection that waits at most `_answer_deadline` seconds for each answer.

    A server-side `statement_timeout` does not help here: a stalled server runs nothing, and the kernel
    still accepts what the client sends, so TCP keepalives stay quiet too. The wait is the client's own.
    When it runs out the connection is closed (its state is unknown): SQLAlchemy then sees a lost
    connection and drops it from the pool."""

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        # answer_deadline() lengthens this process's bound; where there is none (a worker, the CLI) it adds none.
        deadline = _answer_deadline and (_deadline_here.get() or _answer_deadline)
        if timeout is None and deadline is not None:
            timeout = deadline
        try:
            return super().wait(gen, interval, timeout)
        except _WaitTimeout:
            self.pgconn.finish()
            raise psycopg.OperationalError(f"the database did not answer within {timeout:g}s") from None


@contextmanager
def answer_deadline(seconds: float) -> Iterator[None]:
    """Within this block, database answers may take up to `seconds` (a view that reads a whole table by
    design: the audit chain's verification, an exact vector search). While the database is known to be
    away such a view still fails at once (the process's gate is checked before every statement)."""
    token = _deadline_here.set(seconds)
    try:
        yield
    finally:
        _deadline_here.reset(token)


def use_answer_deadline(seconds: float | None) -> None:
    """Bound every database answer in this process (the gateway calls it before its first query)."""
    global _answer_deadline
    _answer_deadline = seconds if seconds and seconds > 0 else None


def _connect_args() -> dict[str, Any]:
    settings = get_settings()
    # Keepalives find a peer that vanished (a host gone, a cable pulled); connect_timeout bounds the
    # handshake (libpq's floor is 2 s).
    return {"connect_timeout": max(2, settings.database_connect_timeout_seconds), "keepalives": 1,
            "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def _bounded(engine: Engine) -> Engine:
    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        # While this process knows the database is down, no request waits on a new connection.
        dependencies.check(dependencies.DATABASE)
        try:
            return BoundedConnection.connect(*cargs, **cparams)
        except psycopg.OperationalError as exc:
            dependencies.trip(dependencies.DATABASE, exc)
            raise

    @event.listens_for(engine, "before_cursor_execute")
    def _before_statement(*_args: Any) -> None:
        # A pooled connection to a server this process knows is away would wait out the whole deadline.
        dependencies.check(dependencies.DATABASE)

    @event.listens_for(engine, "handle_error")
    def _failed(context: Any) -> None:
        if dependencies.failed_dependency(context.original_exception) == dependencies.DATABASE:
            dependencies.trip(dependencies.DATABASE, context.original_exception)

    return engine


def _pool_timeout() -> float:
    # How long a request waits for a pooled connection: within the gateway's answer budget when it has one.
    return 30 if _answer_deadline is None else _answer_deadline


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return _bounded(create_engine(
        sqlalchemy_url(get_settings().database_url),
        connect_args=_connect_args(),
        pool_size=20,
        max_overflow=10,
        pool_timeout=_pool_timeout(),
        pool_recycle=3600,
        # No ping round trip per checkout: on the prediction path it cost as much as the statement itself.
        # A connection broken by a database restart raises an OperationalError once (the pool is then
        # invalidated); tasks retry those as transient and the gateway answers 503.
        pool_pre_ping=False,
    ))


@lru_cache(maxsize=1)
def quick_write_engine() -> Engine:
    """For the job-state writes on every prediction's path (one statement each): autocommit, so a write
    is one round trip instead of three (BEGIN with the statement, then COMMIT), and no wait for the WAL
    flush. What a database crash loses is recovered: a lost start by the message's redelivery, a lost
    finish by the stale-job sweep."""
    return _bounded(create_engine(
        sqlalchemy_url(get_settings().database_url),
        isolation_level="AUTOCOMMIT",
        connect_args={**_connect_args(), "options": "-c synchronous_commit=off"},
        pool_size=10,
        max_overflow=10,
        pool_timeout=_pool_timeout(),
        pool_recycle=3600,
    ))


@lru_cache(maxsize=1)
def durable_autocommit_engine() -> Engine:
    """For single-statement writes that must be durable before the caller goes on (a stream's verdicts,
    acknowledged only once stored): autocommit, so the statement is its own transaction and one round trip
    instead of three, with the WAL flushed before it returns (synchronous_commit left on)."""
    return _bounded(create_engine(
        sqlalchemy_url(get_settings().database_url),
        isolation_level="AUTOCOMMIT",
        connect_args=_connect_args(),
        pool_size=5,
        max_overflow=5,
        pool_timeout=_pool_timeout(),
        pool_recycle=3600,
    ))


@lru_cache(maxsize=1)
def _session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    session = _session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- tenant isolation (core/tenancy.py says why it lives here) ---


@event.listens_for(Session, "do_orm_execute")
def _only_the_current_tenant(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return  # loads of an object already read through a filtered statement
    scope = current_scope()
    if scope is ALL_TENANTS:
        return
    if isinstance(scope, str):
        # Added to every statement, not only to those whose entities look tenant-owned: the criteria
        # reach tables named only in select_from() or a join, which the statement's mappers do not list.
        state.statement = state.statement.options(
            with_loader_criteria(TenantOwned, lambda cls: cls.tenant == scope, include_aliases=True))
        return
    touched = {table.name for table in find_tables(state.statement, include_crud=True, include_joins=True)}
    if touched & _tenant_owned_tables():
        raise TenantScopeMissing(f"a statement on a tenant-owned table ran with no tenant in scope: "
                                 f"{str(state.statement)[:200]}")


@event.listens_for(Session, "before_flush")
def _stamp_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    for row in session.new:
        if not _is_tenant_owned(type(row)):
            continue
        scope = current_scope()
        if getattr(row, "tenant", None) is None:
            if not isinstance(scope, str):
                raise TenantScopeMissing(f"a new {type(row).__name__} has no tenant and none is in scope")
            row.tenant = scope
        elif isinstance(scope, str) and row.tenant != scope:
            raise TenantScopeMissing(f"a new {type(row).__name__} names tenant {row.tenant!r} "
                                     f"while acting for {scope!r}")


def _is_tenant_owned(cls: type) -> bool:
    return issubclass(cls, TenantOwned)


@lru_cache(maxsize=1)
def _tenant_owned_tables() -> frozenset[str]:
    return frozenset(mapper.local_table.name for mapper in Base.registry.mappers
                     if _is_tenant_owned(mapper.class_))


def reset_engine() -> None:
    for factory in (get_engine, quick_write_engine, durable_autocommit_engine):
        if factory.cache_info().currsize:
            factory().dispose(close=False)
        factory.cache_clear()
    _session_factory.cache_clear()
