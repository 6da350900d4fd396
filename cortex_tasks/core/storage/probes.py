"""Probes for the readiness checks: can this process reach its stores now."""
from __future__ import annotations

from sqlalchemy import text

from cortex_tasks.core.storage.db import get_engine


def ping_database() -> None:
    """One round trip to the database; raises when it cannot be reached."""
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
