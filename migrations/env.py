"""Alembic environment: runs migrations with the sync psycopg driver."""

from __future__ import annotations

from alembic import context

from common.db import create_sync_db_engine
from common.models import Base
from common.settings import get_settings

target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = create_sync_db_engine(get_settings())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=get_settings().sync_database_url.render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
