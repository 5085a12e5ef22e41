"""Engine factories for the async (asyncpg) and sync (psycopg) drivers."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from common.settings import Settings


def create_async_db_engine(settings: Settings) -> AsyncEngine:
    """Create an asyncpg engine. Call it on the event loop that will use the engine."""
    return create_async_engine(
        settings.async_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
    )


def create_sync_db_engine(settings: Settings) -> Engine:
    """Create a psycopg engine for the CLI and other sync entry points."""
    return create_engine(settings.sync_database_url, pool_pre_ping=True)


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)


def sync_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
