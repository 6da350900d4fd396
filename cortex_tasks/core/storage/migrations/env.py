"""Alembic environment: the URL comes from Cortex settings, the metadata from storage.tables."""
from alembic import context
from sqlalchemy import create_engine, pool

from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import sqlalchemy_url
from cortex_tasks.core.storage.tables import Base

url = context.config.get_main_option("sqlalchemy.url") or sqlalchemy_url(get_settings().database_url)
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
