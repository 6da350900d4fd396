"""A database of its own for a test that must not touch the suite's (a migration run, a tampered audit log)."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, make_url, text

from cortex_tasks.core.storage.db import sqlalchemy_url


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new empty database on the suite's server, dropped afterwards; yields its URL."""
    server = sqlalchemy_url(os.environ["DATABASE_URL"])
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
