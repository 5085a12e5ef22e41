"""The API while PostgreSQL or Redis is down: 503 with a clear message, never 500.

Each outage is an app whose DATABASE_URL or REDIS_URL points to 127.0.0.1:1, where
nothing listens. The real servers keep running for the rest of the suite.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.engine import make_url

from api.main import create_app
from common.models import ApiClient, Job
from common.settings import Settings
from tests.conftest import TEST_DATABASE_URL, SessionMaker, create_client

CLOSED_DATABASE_URL = (
    make_url(TEST_DATABASE_URL).set(host="127.0.0.1", port=1).render_as_string(hide_password=False)
)
CLOSED_REDIS_URL = "redis://127.0.0.1:1/0"
BODY = {"query": "What are the key financial highlights?", "mode": "general"}


def _error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def _serve(
    settings: Settings, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://modcus.test") as client:
            yield client


@pytest.fixture
async def without_database(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process API whose PostgreSQL refuses connections."""
    monkeypatch.setenv("DATABASE_URL", CLOSED_DATABASE_URL)
    async for client in _serve(Settings()):
        yield client


@pytest.fixture
async def without_redis(
    db: SessionMaker, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process API on the test database whose Redis refuses connections."""
    monkeypatch.setenv("REDIS_URL", CLOSED_REDIS_URL)
    async for client in _serve(Settings()):
        yield client


@pytest.fixture
async def lenient_http(db: SessionMaker, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process API on the real servers that returns 500 instead of raising."""
    async for client in _serve(settings, raise_app_exceptions=False):
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/query"),
        ("GET", f"/v1/jobs/{uuid.uuid4()}"),
        ("GET", "/v1/jobs"),
        ("POST", f"/v1/jobs/{uuid.uuid4()}/cancel"),
    ],
)
async def test_database_down_503(
    without_database: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await without_database.request(
        method, path, json=BODY, headers={"X-API-Key": "mk_any"}
    )

    assert response.status_code == 503
    assert _error(response) == {
        "code": "dependency_unavailable",
        "message": "PostgreSQL is unavailable; retry shortly",
    }
    assert response.headers["Retry-After"] == "5"


async def test_readyz_database_down(without_database: httpx.AsyncClient) -> None:
    response = await without_database.get("/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["postgresql"].startswith("unavailable")
    assert response.json()["redis"] == "ok"


async def test_query_redis_down_503_job_failed(
    without_redis: httpx.AsyncClient, db: SessionMaker
) -> None:
    client_key = create_client(db)

    response = await without_redis.post(
        "/v1/query", json=BODY, headers={"X-API-Key": client_key, "Idempotency-Key": "order-1"}
    )

    assert response.status_code == 503
    assert _error(response)["code"] == "queue_unavailable"
    assert response.headers["Retry-After"] == "5"
    with db() as session:
        [job] = session.scalars(select(Job)).all()
    assert job.status == "failed"
    assert job.error_code == "enqueue_failed"
    assert job.idempotency_key is None


async def test_cancel_redis_down_503(without_redis: httpx.AsyncClient, db: SessionMaker) -> None:
    client_key = create_client(db, "canceller")
    job_id = uuid.uuid4()
    with db() as session:
        client_id = session.scalar(select(ApiClient.id).where(ApiClient.name == "canceller"))
        session.add(
            Job(
                id=job_id,
                client_id=client_id,
                status="queued",
                query="What?",
                mode="general",
                level="novice",
            )
        )
        session.commit()

    response = await without_redis.post(
        f"/v1/jobs/{job_id}/cancel", headers={"X-API-Key": client_key}
    )

    assert response.status_code == 503
    assert _error(response) == {
        "code": "dependency_unavailable",
        "message": "Redis is unavailable; retry shortly",
    }
    assert response.headers["Retry-After"] == "5"


async def test_readyz_redis_down(without_redis: httpx.AsyncClient) -> None:
    response = await without_redis.get("/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["postgresql"] == "ok"
    assert response.json()["redis"].startswith("unavailable")


@pytest.mark.parametrize("error", [RuntimeError("secret detail"), OSError("secret detail")])
async def test_unexpected_error_500(
    lenient_http: httpx.AsyncClient,
    db: SessionMaker,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    async def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("api.routes.jobs.get_job", fail)
    client_key = create_client(db)

    response = await lenient_http.get(f"/v1/jobs/{uuid.uuid4()}", headers={"X-API-Key": client_key})

    assert response.status_code == 500
    assert _error(response)["code"] == "internal_error"
    assert "secret detail" not in response.text
