"""The SQLAlchemy engine and sessions, one engine per process.

Prefork children must not share their parent's connections: `reset_engine()` is called after fork
(worker_process_init) so each child opens its own pool.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from cortex_tasks.core.settings import get_settings


def sqlalchemy_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return create_engine(
        sqlalchemy_url(get_settings().database_url),
        pool_size=20,
        max_overflow=10,
        pool_timeout=30,
        pool_recycle=3600,
        # No ping round trip per checkout: on the prediction path it cost as much as the statement itself.
        # A connection broken by a database restart raises an OperationalError once (the pool is then
        # invalidated); tasks retry those as transient and the gateway answers 503.
        pool_pre_ping=False,
    )


@lru_cache(maxsize=1)
def quick_write_engine() -> Engine:
    """For the job-state writes on every prediction's path (one statement each): autocommit, so a write
    is one round trip instead of three (BEGIN with the statement, then COMMIT), and no wait for the WAL
    flush. What a database crash loses is recovered: a lost start by the message's redelivery, a lost
    finish by the stale-job sweep."""
    return create_engine(
        sqlalchemy_url(get_settings().database_url),
        isolation_level="AUTOCOMMIT",
        connect_args={"options": "-c synchronous_commit=off"},
        pool_size=10,
        max_overflow=10,
        pool_timeout=30,
        pool_recycle=3600,
    )


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


def reset_engine() -> None:
    for factory in (get_engine, quick_write_engine):
        if factory.cache_info().currsize:
            factory().dispose(close=False)
        factory.cache_clear()
    _session_factory.cache_clear()
