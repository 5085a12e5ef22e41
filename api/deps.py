"""Dependencies of the route handlers, as Annotated aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request, status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import ApiError
from common.crypto import hash_client_key
from common.models import ApiClient
from common.runtime import Runtime
from common.settings import Settings


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings_dep(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_publisher(request: Request) -> Celery:
    publisher: Celery = request.app.state.publisher
    return publisher


PublisherDep = Annotated[Celery, Depends(get_publisher)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.session_factory() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


@dataclass(frozen=True)
class Client:
    """The authenticated API client of a request."""

    id: int
    name: str
    is_admin: bool


async def get_client(
    session: SessionDep,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
) -> Client:
    if not x_api_key:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "missing_api_key",
            "the X-API-Key header is missing; send your client key in X-API-Key",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    row = await session.scalar(
        select(ApiClient).where(ApiClient.key_hash == hash_client_key(x_api_key))
    )
    if row is None:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "invalid_api_key",
            "the X-API-Key is not a valid client key; ask an operator for one "
            "(modcus clients create NAME)",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    return Client(id=row.id, name=row.name, is_admin=row.is_admin)


ClientDep = Annotated[Client, Depends(get_client)]


async def get_admin(client: ClientDep) -> Client:
    if not client.is_admin:
        raise ApiError(
            status.HTTP_403_FORBIDDEN,
            "admin_required",
            "this endpoint needs an admin client key; ask an operator for one "
            "(modcus clients create NAME --admin)",
        )
    return client


AdminDep = Annotated[Client, Depends(get_admin)]
