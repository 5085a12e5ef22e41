"""The FastAPI application, served with `uvicorn api.main:app`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes import admin_keys, health, jobs, queries
from common.queue import create_celery_app
from common.runtime import Runtime
from common.settings import Settings, get_settings

logger = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _lifespan(settings: Settings | None) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Resources are created here, on uvicorn's loop, never at import time.
        app_settings = settings if settings is not None else get_settings()
        runtime = await Runtime.start(app_settings)
        publisher = create_celery_app(app_settings)
        app.state.runtime = runtime
        app.state.publisher = publisher
        logger.info("API started")
        try:
            yield
        finally:
            await asyncio.to_thread(publisher.close)
            await runtime.aclose()
            logger.info("API stopped")

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application. Without `settings`, the lifespan reads them from the environment."""
    app = FastAPI(
        title="Modcus",
        summary="LLM analysis of listed companies, run as background jobs.",
        version="0.1.0",
        lifespan=_lifespan(settings),
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(queries.router)
    app.include_router(jobs.router)
    app.include_router(admin_keys.router)
    return app


app = create_app()
