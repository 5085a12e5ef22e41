"""Idempotent job creation, the job list and cancellation, through the in-process API."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import func, select, update

from common.jobs import cancel_redis_key, claim_job
from common.models import Job
from common.runtime import Runtime
from common.settings import Settings
from tests.conftest import SessionMaker, create_client, load_sample_companies

BODY = {
    "query": "What are the key financial highlights?",
    "mode": "company-analysis",
    "ticker": "GOTO",
    "level": "novice",
}
SUMMARY_FIELDS = {
    "job_id",
    "status",
    "query",
    "mode",
    "ticker",
    "level",
    "created_at",
    "finished_at",
}


@pytest.fixture
def client_key(db: SessionMaker) -> str:
    load_sample_companies(db)
    return create_client(db)


def _error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def _broker_job_ids(settings: Settings) -> list[str]:
    """Job ids of the messages waiting in the broker's default queue, oldest first."""
    ids = []
    for raw in reversed(redis.Redis.from_url(settings.redis_url).lrange("celery", 0, -1)):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(args[0])
    return ids


def _job_count(db: SessionMaker) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def _set_status(db: SessionMaker, job_id: str, status: str) -> None:
    with db() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(status=status, finished_at=func.now())
        )
        session.commit()


async def _post_query(
    http: httpx.AsyncClient,
    client_key: str,
    body: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> httpx.Response:
    headers = {"X-API-Key": client_key}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return await http.post("/v1/query", json=body or BODY, headers=headers)


async def _create_jobs(http: httpx.AsyncClient, client_key: str, count: int) -> list[str]:
    """Create jobs one after another and return their ids, oldest first."""
    ids = []
    for number in range(count):
        body = {"query": f"Question {number}?", "mode": "general"}
        response = await _post_query(http, client_key, body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])
    return ids


async def _list(http: httpx.AsyncClient, client_key: str, **params: str | int) -> dict[str, Any]:
    response = await http.get("/v1/jobs", params=params, headers={"X-API-Key": client_key})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


# Idempotency-Key on POST /v1/query


async def test_idempotency_same_key_same_job(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker, settings: Settings
) -> None:
    first = await _post_query(http, client_key, idempotency_key="order-1")
    second = await _post_query(http, client_key, idempotency_key="order-1")

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == first.json()
    assert _job_count(db) == 1
    assert _broker_job_ids(settings) == [first.json()["job_id"]]


async def test_idempotency_normalized_body_same_job(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker
) -> None:
    first = await _post_query(http, client_key, idempotency_key="order-1")
    spelled_differently = BODY | {"query": f"  {BODY['query']}\n", "ticker": " goto "}
    second = await _post_query(http, client_key, spelled_differently, idempotency_key="order-1")

    assert second.status_code == 200
    assert second.json()["job_id"] == first.json()["job_id"]
    assert _job_count(db) == 1


async def test_idempotency_key_reused_other_body_409(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker, settings: Settings
) -> None:
    first = await _post_query(http, client_key, idempotency_key="order-1")
    other = await _post_query(
        http, client_key, BODY | {"level": "expert"}, idempotency_key="order-1"
    )

    assert other.status_code == 409
    assert _error(other)["code"] == "idempotency_key_reused"
    assert _error(other)["field"] == "Idempotency-Key"
    assert "use a new key for a different request" in _error(other)["message"]
    assert _job_count(db) == 1
    assert _broker_job_ids(settings) == [first.json()["job_id"]]


async def test_idempotency_key_per_client(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker, settings: Settings
) -> None:
    other_key = create_client(db, "other")

    mine = await _post_query(http, client_key, idempotency_key="order-1")
    theirs = await _post_query(http, other_key, idempotency_key="order-1")

    assert mine.status_code == 202
    assert theirs.status_code == 202
    assert mine.json()["job_id"] != theirs.json()["job_id"]
    assert _job_count(db) == 2
    assert len(_broker_job_ids(settings)) == 2


async def test_idempotency_concurrent_duplicates_one_job(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker, settings: Settings
) -> None:
    responses = await asyncio.gather(
        *(_post_query(http, client_key, idempotency_key="order-1") for _ in range(10))
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 9 + [202]
    job_ids = {response.json()["job_id"] for response in responses}
    assert len(job_ids) == 1
    assert _job_count(db) == 1
    assert _broker_job_ids(settings) == list(job_ids)


async def test_query_without_key_creates_each_time(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker
) -> None:
    first = await _post_query(http, client_key)
    second = await _post_query(http, client_key)

    assert first.status_code == 202
    assert second.status_code == 202
    assert first.json()["job_id"] != second.json()["job_id"]
    assert _job_count(db) == 2


async def test_idempotency_key_max_length_accepted(
    http: httpx.AsyncClient, client_key: str
) -> None:
    response = await _post_query(http, client_key, idempotency_key="k" * 200)

    assert response.status_code == 202


@pytest.mark.parametrize(
    ("idempotency_key", "message"),
    [
        ("k" * 201, "the Idempotency-Key header has 201 characters, more than the maximum of 200"),
        ("", "the Idempotency-Key header is empty"),
    ],
)
async def test_idempotency_key_invalid_422(
    http: httpx.AsyncClient,
    client_key: str,
    db: SessionMaker,
    idempotency_key: str,
    message: str,
) -> None:
    response = await _post_query(http, client_key, idempotency_key=idempotency_key)

    assert response.status_code == 422
    assert _error(response)["code"] == "validation_error"
    assert _error(response)["field"] == "Idempotency-Key"
    assert _error(response)["message"].startswith(message)
    assert _job_count(db) == 0


# GET /v1/jobs


async def test_list_jobs_newest_first(http: httpx.AsyncClient, client_key: str) -> None:
    created = await _create_jobs(http, client_key, 3)

    page = await _list(http, client_key)

    assert [job["job_id"] for job in page["jobs"]] == created[::-1]
    assert page["next_cursor"] is None
    newest = page["jobs"][0]
    assert set(newest) == SUMMARY_FIELDS
    assert newest["status"] == "queued"
    assert newest["query"] == "Question 2?"
    assert newest["mode"] == "general"
    assert newest["ticker"] is None
    assert newest["level"] == "intermediate"
    assert newest["finished_at"] is None


async def test_list_jobs_status_filter(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker
) -> None:
    created = await _create_jobs(http, client_key, 3)
    _set_status(db, created[1], "succeeded")

    succeeded = await _list(http, client_key, status="succeeded")
    queued = await _list(http, client_key, status="queued")
    failed = await _list(http, client_key, status="failed")

    assert [job["job_id"] for job in succeeded["jobs"]] == [created[1]]
    assert succeeded["jobs"][0]["finished_at"] is not None
    assert [job["job_id"] for job in queued["jobs"]] == [created[2], created[0]]
    assert failed == {"jobs": [], "next_cursor": None}


async def test_list_jobs_pages(http: httpx.AsyncClient, client_key: str) -> None:
    created = await _create_jobs(http, client_key, 5)

    pages = [await _list(http, client_key, limit=2)]
    while pages[-1]["next_cursor"] is not None:
        pages.append(await _list(http, client_key, limit=2, cursor=pages[-1]["next_cursor"]))

    assert [len(page["jobs"]) for page in pages] == [2, 2, 1]
    listed = [job["job_id"] for page in pages for job in page["jobs"]]
    assert listed == created[::-1]
    assert len(set(listed)) == 5


async def test_list_jobs_pages_full_last_page(http: httpx.AsyncClient, client_key: str) -> None:
    await _create_jobs(http, client_key, 4)

    first = await _list(http, client_key, limit=2)
    second = await _list(http, client_key, limit=2, cursor=first["next_cursor"])

    assert len(second["jobs"]) == 2
    assert second["next_cursor"] is None


async def test_list_jobs_ties_on_created_at(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker
) -> None:
    created = await _create_jobs(http, client_key, 3)
    with db() as session:
        session.execute(update(Job).values(created_at=func.now()))
        session.commit()

    pages = [await _list(http, client_key, limit=1)]
    while pages[-1]["next_cursor"] is not None:
        pages.append(await _list(http, client_key, limit=1, cursor=pages[-1]["next_cursor"]))

    listed = [job["job_id"] for page in pages for job in page["jobs"]]
    assert listed == sorted(created, key=uuid.UUID, reverse=True)


async def test_list_jobs_other_client_invisible(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker
) -> None:
    other_key = create_client(db, "other")
    mine = await _create_jobs(http, client_key, 2)
    theirs = await _create_jobs(http, other_key, 1)

    my_page = await _list(http, client_key)
    their_page = await _list(http, other_key)

    assert [job["job_id"] for job in my_page["jobs"]] == mine[::-1]
    assert [job["job_id"] for job in their_page["jobs"]] == theirs


def _cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "code", "field", "message"),
    [
        (
            {"status": "done"},
            "validation_error",
            "status",
            "status 'done' is not a job status; use one of: queued, running, retrying, "
            "succeeded, failed, cancelled",
        ),
        ({"limit": 0}, "validation_error", "limit", "limit is 0; use a number from 1 to 100"),
        ({"limit": 101}, "validation_error", "limit", "limit is 101; use a number from 1 to 100"),
        ({"limit": "ten"}, "validation_error", "limit", "limit is invalid"),
        ({"cursor": "not a cursor!"}, "invalid_cursor", "cursor", "cursor is not one this API"),
        ({"cursor": _cursor_of("nothing here")}, "invalid_cursor", "cursor", "cursor is not"),
        (
            {"cursor": _cursor_of(f"2026-01-01T00:00:00|{uuid.uuid4()}")},
            "invalid_cursor",
            "cursor",
            "cursor is not",
        ),
        (
            {"cursor": _cursor_of("2026-01-01T00:00:00+00:00|not-a-uuid")},
            "invalid_cursor",
            "cursor",
            "cursor is not",
        ),
    ],
)
async def test_list_jobs_invalid_params_422(
    http: httpx.AsyncClient,
    client_key: str,
    params: dict[str, str | int],
    code: str,
    field: str,
    message: str,
) -> None:
    response = await http.get("/v1/jobs", params=params, headers={"X-API-Key": client_key})

    assert response.status_code == 422
    assert _error(response)["code"] == code
    assert _error(response)["field"] == field
    assert _error(response)["message"].startswith(message)


async def test_list_jobs_without_key_401(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/jobs")

    assert response.status_code == 401
    assert _error(response)["code"] == "missing_api_key"


# POST /v1/jobs/{job_id}/cancel


async def test_cancel_queued_job(
    http: httpx.AsyncClient, client_key: str, app: FastAPI, settings: Settings
) -> None:
    [job_id] = await _create_jobs(http, client_key, 1)

    response = await http.post(f"/v1/jobs/{job_id}/cancel", headers={"X-API-Key": client_key})

    assert response.status_code == 200
    job = response.json()
    assert job["job_id"] == job_id
    assert job["status"] == "cancelled"
    assert job["finished_at"] is not None
    assert job["error"]["code"] == "cancelled"
    assert job["attempts"] == []
    flag = redis.Redis.from_url(settings.redis_url).get(cancel_redis_key(uuid.UUID(job_id)))
    assert flag is not None

    runtime: Runtime = app.state.runtime
    async with runtime.session_factory() as session:
        assert await claim_job(session, uuid.UUID(job_id)) is None
    status = await http.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": client_key})
    assert status.json()["status"] == "cancelled"


@pytest.mark.parametrize("finished_status", ["succeeded", "failed", "cancelled"])
async def test_cancel_finished_job_409(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker, finished_status: str
) -> None:
    [job_id] = await _create_jobs(http, client_key, 1)
    _set_status(db, job_id, finished_status)

    response = await http.post(f"/v1/jobs/{job_id}/cancel", headers={"X-API-Key": client_key})

    assert response.status_code == 409
    assert _error(response)["code"] == "job_finished"
    assert f"status '{finished_status}'" in _error(response)["message"]


async def test_cancel_twice_409(http: httpx.AsyncClient, client_key: str) -> None:
    [job_id] = await _create_jobs(http, client_key, 1)
    headers = {"X-API-Key": client_key}

    first = await http.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    second = await http.post(f"/v1/jobs/{job_id}/cancel", headers=headers)

    assert first.status_code == 200
    assert second.status_code == 409
    assert _error(second)["code"] == "job_finished"


async def test_cancel_unknown_job_404(http: httpx.AsyncClient, client_key: str) -> None:
    for job_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = await http.post(f"/v1/jobs/{job_id}/cancel", headers={"X-API-Key": client_key})

        assert response.status_code == 404
        assert _error(response)["code"] == "job_not_found"
        assert job_id in _error(response)["message"]


async def test_cancel_other_clients_job_404(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker, settings: Settings
) -> None:
    [job_id] = await _create_jobs(http, client_key, 1)
    other_key = create_client(db, "other")

    response = await http.post(f"/v1/jobs/{job_id}/cancel", headers={"X-API-Key": other_key})

    assert response.status_code == 404
    assert _error(response)["code"] == "job_not_found"
    status = await http.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": client_key})
    assert status.json()["status"] == "queued"
    flag = redis.Redis.from_url(settings.redis_url).get(cancel_redis_key(uuid.UUID(job_id)))
    assert flag is None
