"""Run Alembic migrations programmatically (used by `cortex migrate`, `cortex up` and the tests)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from cortex_tasks.core.storage.db import sqlalchemy_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def upgrade_to_head(database_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser treats % as interpolation.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    # "heads": features add their tables on branches from a common base until a merge revision joins them.
    command.upgrade(config, "heads")
