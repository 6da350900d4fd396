"""Probes for the readiness checks: can this process reach its stores now."""
from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text

from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import BoundedConnection, get_engine


def ping_database() -> None:
    """One round trip to the database; raises when it cannot be reached."""
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def database_probe() -> Callable[[], None]:
    """A round trip on a connection of its own, outside the engine's pool and its dependency gate (the
    gate is what the probe decides about); its waits are bounded like every connection's of the process."""

    def probe() -> None:
        settings = get_settings()
        with BoundedConnection.connect(settings.database_url, autocommit=True,
                                       connect_timeout=max(2, settings.database_connect_timeout_seconds)) as conn:
            conn.execute("SELECT 1")

    return probe
