"""Async resources of one event loop: database pool, Redis client, HTTP client, rotator."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from common.crypto import SecretBox
from common.db import create_async_db_engine
from common.rotator import KeyRotator
from common.settings import Settings

logger = logging.getLogger(__name__)

# Connections kept open to LLM providers by one process.
_HTTP_MAX_CONNECTIONS = 200


@dataclass
class Runtime:
    """The async resources one event loop uses. Created and closed on that loop.

    asyncpg connections, the redis.asyncio connection pool and httpx connections
    belong to the loop they were opened on. Used from another loop, they fail with
    "attached to a different loop" or "Event loop is closed".
    """

    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    redis: Redis
    http_client: httpx.AsyncClient
    rotator: KeyRotator
    loop: asyncio.AbstractEventLoop

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        """Create the resources on the running loop. Nothing connects until first use."""
        engine = create_async_db_engine(settings)
        session_factory = async_sessionmaker(engine, expire_on_commit=False)
        redis = Redis.from_url(settings.redis_url)
        http_client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=_HTTP_MAX_CONNECTIONS,
                max_keepalive_connections=_HTTP_MAX_CONNECTIONS,
            ),
            timeout=httpx.Timeout(settings.llm_timeout_s),
        )
        rotator = KeyRotator(
            settings,
            SecretBox.from_settings(settings),
            session_factory=session_factory,
            redis=redis,
            http_client=http_client,
        )
        return cls(
            settings=settings,
            engine=engine,
            session_factory=session_factory,
            redis=redis,
            http_client=http_client,
            rotator=rotator,
            loop=asyncio.get_running_loop(),
        )

    async def aclose(self) -> None:
        """Close every resource. Must run on the loop that created them."""
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("Runtime.aclose() must run on the event loop that created it")
        await self.rotator.aclose()
        await self.http_client.aclose()
        await self.redis.aclose()
        await self.engine.dispose()
