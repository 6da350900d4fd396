"""Migration 0013 (prompts, their versions and history, agents) on real PostgreSQL: upgrade creates the
tables with the one-production-version rule in the database, downgrade removes them, and upgrade works again.
Runs on a database of its own."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from cortex_tasks.core.storage.migrate import MIGRATIONS_DIR
from tests.support.databases import scratch_database

TABLES = {"prompts", "prompt_versions", "prompt_deployments", "agents"}


@pytest.fixture()
def database_url() -> Iterator[str]:
    with scratch_database("cortex_prompts_migration") as url:
        yield url


def _alembic(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def test_upgrade_downgrade_upgrade(database_url):
    config = _alembic(database_url)
    command.upgrade(config, "0013")
    engine = create_engine(database_url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.begin() as conn:
            prompt = conn.execute(text("INSERT INTO prompts (tenant, name) VALUES ('default', 'p') RETURNING id")
                                  ).scalar_one()
            for version in (1, 2):
                conn.execute(text("INSERT INTO prompt_versions (tenant, prompt_id, version, template) "
                                  "VALUES ('default', :p, :v, 't')"), {"p": prompt, "v": version})
            conn.execute(text("UPDATE prompt_versions SET stage = 'production' WHERE version = 1"))
        with pytest.raises(IntegrityError), engine.begin() as conn:  # a second production version
            conn.execute(text("UPDATE prompt_versions SET stage = 'production' WHERE version = 2"))
        with pytest.raises(IntegrityError), engine.begin() as conn:  # a tenant that does not exist
            conn.execute(text("INSERT INTO agents (tenant, name, model, prompt, max_steps, token_budget) "
                              "VALUES ('nobody', 'a', 'm', 'p', 1, 100)"))
        command.downgrade(config, "0010")
        assert not TABLES & set(inspect(engine).get_table_names())
        command.upgrade(config, "0013")
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
