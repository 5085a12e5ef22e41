"""The HTTP API in this process, on the test's event loop, with real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis
from asgiref.sync import AsyncToSync

from common.fake_provider import Behaviour, FakeProviderServer
from common.queue import RUN_ANALYSIS_TASK
from common.settings import Settings
from tests.conftest import SessionMaker, create_client, load_sample_companies, store_key

PROVIDER_KEY = "sk-api-test-key-0123456789abcdef"
BODY = {
    "query": "What are the key financial highlights?",
    "mode": "company-analysis",
    "ticker": "GOTO",
    "level": "novice",
}


@pytest.fixture
def client_key(db: SessionMaker, settings: Settings, fake: FakeProviderServer) -> str:
    fake.provider.set_behaviour(PROVIDER_KEY, "answer")
    store_key(db, settings, label="fake", secret=PROVIDER_KEY, base_url=fake.openai_base_url)
    load_sample_companies(db)
    return create_client(db)


def _error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def _queued_job_ids(settings: Settings) -> list[str]:
    messages = redis.Redis.from_url(settings.redis_url).lrange("celery", 0, -1)
    ids = []
    for raw in messages:
        message = json.loads(raw)
        assert message["headers"]["task"] == RUN_ANALYSIS_TASK
        ids.append(message["headers"]["argsrepr"].strip("()[]',\""))
    return ids


async def test_query_enqueues_job(
    http: httpx.AsyncClient, client_key: str, settings: Settings
) -> None:
    response = await http.post("/v1/query", json=BODY, headers={"X-API-Key": client_key})

    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["status_url"] == f"/v1/jobs/{accepted['job_id']}"
    assert _queued_job_ids(settings) == [accepted["job_id"]]


async def test_job_status_of_queued_job(http: httpx.AsyncClient, client_key: str) -> None:
    headers = {"X-API-Key": client_key}
    job_id = (await http.post("/v1/query", json=BODY, headers=headers)).json()["job_id"]

    response = await http.get(f"/v1/jobs/{job_id}", headers=headers)

    assert response.status_code == 200
    job = response.json()
    assert job["job_id"] == job_id
    assert job["status"] == "queued"
    assert job["ticker"] == "GOTO"
    assert job["started_at"] is None
    assert job["result"] is None
    assert job["error"] is None
    assert job["attempts"] == []


@pytest.mark.parametrize(
    ("headers", "code", "message"),
    [
        ({}, "missing_api_key", "the X-API-Key header is missing"),
        ({"X-API-Key": "mk_wrong"}, "invalid_api_key", "the X-API-Key is not a valid client key"),
    ],
)
async def test_query_without_valid_key_401(
    http: httpx.AsyncClient, client_key: str, headers: dict[str, str], code: str, message: str
) -> None:
    for method, path in (("POST", "/v1/query"), ("POST", "/v1/query/sync"), ("GET", "/v1/jobs/x")):
        response = await http.request(method, path, json=BODY, headers=headers)

        assert response.status_code == 401
        assert _error(response)["code"] == code
        assert _error(response)["message"].startswith(message)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"query": ""}, "query", "query is empty; send the question as a non-empty string"),
        ({"query": "   "}, "query", "query is empty"),
        (
            {"query": "x" * 4001},
            "query",
            "query has 4001 characters, more than the maximum of 4000",
        ),
        (
            {"mode": "poetry"},
            "mode",
            "mode 'poetry' is not supported; use one of: company-analysis, general",
        ),
        (
            {"level": "guru"},
            "level",
            "level 'guru' is not supported; use one of: novice, intermediate, expert",
        ),
        ({"ticker": None}, "ticker", 'mode "company-analysis" needs a ticker'),
        ({"ticker": ""}, "ticker", 'mode "company-analysis" needs a ticker'),
        ({"query": None}, "query", "query is invalid"),
    ],
)
async def test_query_invalid_body_422(
    http: httpx.AsyncClient, client_key: str, change: dict[str, Any], field: str, message: str
) -> None:
    for path in ("/v1/query", "/v1/query/sync"):
        response = await http.post(path, json=BODY | change, headers={"X-API-Key": client_key})

        assert response.status_code == 422
        assert _error(response)["code"] == "validation_error"
        assert _error(response)["field"] == field
        assert _error(response)["message"].startswith(message)


async def test_query_missing_field_422(http: httpx.AsyncClient, client_key: str) -> None:
    response = await http.post(
        "/v1/query", json={"mode": "general"}, headers={"X-API-Key": client_key}
    )

    assert response.status_code == 422
    assert _error(response) == {
        "code": "validation_error",
        "message": "query is required; add it to the JSON body",
        "field": "query",
    }


async def test_query_unknown_ticker_404_creates_no_job(
    http: httpx.AsyncClient, client_key: str, settings: Settings
) -> None:
    response = await http.post(
        "/v1/query", json=BODY | {"ticker": "NOPE"}, headers={"X-API-Key": client_key}
    )

    assert response.status_code == 404
    assert _error(response)["code"] == "company_not_found"
    assert _error(response)["message"].startswith("no company with ticker 'NOPE' is loaded")
    assert _queued_job_ids(settings) == []


async def test_query_lowercase_ticker_accepted(http: httpx.AsyncClient, client_key: str) -> None:
    response = await http.post(
        "/v1/query", json=BODY | {"ticker": "goto"}, headers={"X-API-Key": client_key}
    )

    assert response.status_code == 202


async def test_job_unknown_id_404(http: httpx.AsyncClient, client_key: str) -> None:
    for job_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = await http.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": client_key})

        assert response.status_code == 404
        assert _error(response)["code"] == "job_not_found"
        assert job_id in _error(response)["message"]


async def test_job_of_other_client_404(
    http: httpx.AsyncClient, client_key: str, db: SessionMaker
) -> None:
    job_id = (await http.post("/v1/query", json=BODY, headers={"X-API-Key": client_key})).json()[
        "job_id"
    ]
    other_key = create_client(db, "other")

    response = await http.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": other_key})

    assert response.status_code == 404
    assert _error(response)["code"] == "job_not_found"


async def test_sync_query_answers_inline(http: httpx.AsyncClient, client_key: str) -> None:
    response = await http.post("/v1/query/sync", json=BODY, headers={"X-API-Key": client_key})

    assert response.status_code == 200
    answer = response.json()
    assert "Rp63.2 trillion" in answer["answer"]
    assert answer["provider"] == "openai-compatible"
    assert answer["key_label"] == "fake"
    assert answer["usage"]["prompt_tokens"] > 0


async def test_sync_query_never_nests_event_loops(
    http: httpx.AsyncClient, client_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original defect: an async handler reached asyncio.run through a sync wrapper."""
    nested: list[str] = []

    def forbidden(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            nested.append(name)
            raise AssertionError(f"{name} was called on a running event loop")

        return record

    monkeypatch.setattr(asyncio, "run", forbidden("asyncio.run"))
    monkeypatch.setattr(
        asyncio.BaseEventLoop, "run_until_complete", forbidden("run_until_complete")
    )
    monkeypatch.setattr(AsyncToSync, "__call__", forbidden("async_to_sync"))

    response = await http.post("/v1/query/sync", json=BODY, headers={"X-API-Key": client_key})

    assert response.status_code == 200
    assert "Rp63.2 trillion" in response.json()["answer"]
    assert nested == []


async def test_sync_query_over_budget_504(
    http: httpx.AsyncClient,
    client_key: str,
    fake: FakeProviderServer,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.provider.set_behaviour(PROVIDER_KEY, Behaviour(latency_ms=2000))
    monkeypatch.setattr(settings, "sync_timeout_s", 0.3)

    response = await http.post("/v1/query/sync", json=BODY, headers={"X-API-Key": client_key})

    assert response.status_code == 504
    assert _error(response)["code"] == "sync_timeout"
    assert _error(response)["message"].startswith("no answer within 0.3 s; submit the question")
    assert "POST /v1/query" in _error(response)["message"]


async def test_sync_query_no_usable_key_503(
    http: httpx.AsyncClient, client_key: str, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(PROVIDER_KEY, "openai_rate_limit_retry_after_30")

    response = await http.post("/v1/query/sync", json=BODY, headers={"X-API-Key": client_key})

    assert response.status_code == 503
    assert _error(response)["code"] == "no_usable_key"
    assert 28 <= int(response.headers["Retry-After"]) <= 31
    assert PROVIDER_KEY[:8] not in response.text


async def test_healthz_and_readyz(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "postgresql": "ok", "redis": "ok"}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"query": "\u0000abc"}, "query", "query contains a NUL character"),
        ({"query": "abc\ud800"}, "query", "query contains a NUL character or an unpaired"),
        ({"ticker": "GOTO\u0000"}, "ticker", "ticker 'GOTO\\x00' is not a ticker"),
        ({"ticker": "Z Z/../1"}, "ticker", "ticker 'Z Z/../1' is not a ticker"),
        ({"ticker": "A" * 17}, "ticker", "is not a ticker; use 1 to 16 letters"),
    ],
)
async def test_query_unstorable_text_422(
    http: httpx.AsyncClient, client_key: str, change: dict[str, Any], field: str, message: str
) -> None:
    # json.dumps escapes a lone surrogate as \ud800, which httpx could not encode.
    response = await http.post(
        "/v1/query",
        content=json.dumps(BODY | change),
        headers={"X-API-Key": client_key, "Content-Type": "application/json"},
    )

    assert response.status_code == 422
    assert _error(response)["field"] == field
    assert message in _error(response)["message"]
