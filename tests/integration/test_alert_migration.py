"""Migration 0012 (alerts, alert groups and deliveries, alert channels, stream reports) upgrades and
downgrades on real PostgreSQL, on a database of its own."""
from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from cortex_tasks.core.storage.db import sqlalchemy_url
from cortex_tasks.core.storage.migrate import MIGRATIONS_DIR
from tests.support.databases import scratch_database

TABLES = ("alert_channels", "alert_groups", "alerts", "alert_deliveries", "stream_reports")


def test_0012_upgrades_and_downgrades():
    with scratch_database("alerts_migration") as url:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
        engine = create_engine(sqlalchemy_url(url))

        def present() -> list[str]:
            with engine.connect() as conn:
                return [table for table in TABLES if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar()]

        command.upgrade(config, "heads")
        assert present() == list(TABLES)
        command.downgrade(config, "0012-1")
        assert present() == []
        command.upgrade(config, "heads")
        assert present() == list(TABLES)
        engine.dispose()
