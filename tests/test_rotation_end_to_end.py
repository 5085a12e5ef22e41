"""Key rotation seen from outside: real workers, the API, and the fake provider."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select, text

from common.fake_provider import Behaviour, FakeProviderServer
from common.models import ProviderKey
from common.rotator import cooldown_redis_key
from common.settings import Settings
from tests.conftest import (
    ChildProcess,
    SessionMaker,
    create_client,
    free_port,
    load_sample_companies,
    poll_job,
    start_api,
    start_worker,
    store_key,
)

pytestmark = pytest.mark.slow

KEY_A = "sk-rotation-a-0123456789abcdefQRST"
KEY_B = "sk-rotation-b-0123456789abcdefUVWX"
GEMINI_KEY = "AIzaRotation0123456789abcdefghYZab"
BODY = {
    "query": "What are the key financial highlights?",
    "mode": "company-analysis",
    "ticker": "GOTO",
    "level": "expert",
}


@pytest.fixture
def client_key(db: SessionMaker) -> str:
    load_sample_companies(db)
    return create_client(db)


@pytest.fixture
def api(db: SessionMaker, tmp_path: Path) -> Iterator[tuple[str, ChildProcess]]:
    port = free_port()
    process = start_api(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.stop()


@pytest.fixture
def workers(db: SessionMaker, tmp_path: Path) -> Iterator[list[ChildProcess]]:
    """Two separate worker processes, each with one prefork child."""
    started = [start_worker(tmp_path, name=f"w{number}") for number in (1, 2)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def _submit(api_url: str, client_key: str, body: dict[str, Any] = BODY) -> str:
    response = httpx.post(f"{api_url}/v1/query", json=body, headers={"X-API-Key": client_key})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _key(db: SessionMaker, label: str) -> ProviderKey:
    with db() as session:
        key = session.scalar(select(ProviderKey).where(ProviderKey.label == label))
        assert key is not None
        return key


def _tasks_run_by(worker: ChildProcess) -> int:
    return len(re.findall(r"Task modcus\.run_analysis\[[^\]]+\] succeeded", worker.output()))


def test_rate_limited_key_skipped_by_every_process(
    db: SessionMaker,
    settings: Settings,
    fake: FakeProviderServer,
    api: tuple[str, ChildProcess],
    workers: list[ChildProcess],
    client_key: str,
) -> None:
    api_url, _ = api
    fake.provider.set_behaviour(KEY_A, "openai_rate_limit_retry_after_30")
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url, priority=1)
    store_key(db, settings, label="b", secret=KEY_B, base_url=fake.openai_base_url)

    first = poll_job(api_url, client_key, _submit(api_url, client_key))
    later_ids = [_submit(api_url, client_key) for _ in range(4)]
    later = [poll_job(api_url, client_key, job_id) for job_id in later_ids]
    inline = httpx.post(
        f"{api_url}/v1/query/sync", json=BODY, headers={"X-API-Key": client_key}, timeout=30
    )

    assert first["status"] == "succeeded"
    assert [(a["key_label"], a["outcome"]) for a in first["attempts"]] == [
        ("a", "rate_limited"),
        ("b", "succeeded"),
    ]
    assert all(job["status"] == "succeeded" for job in later)
    assert all([a["key_label"] for a in job["attempts"]] == ["b"] for job in later)
    assert inline.status_code == 200
    assert inline.json()["key_label"] == "b"
    assert fake.provider.request_count(KEY_A) == 1
    # Both worker processes took jobs, so the second one skipped a key the first marked.
    assert _tasks_run_by(workers[0]) >= 1
    assert _tasks_run_by(workers[1]) >= 1
    stored = _key(db, "a")
    assert stored.status == "cooling"
    assert stored.cooldown_until is not None
    assert 20 < (stored.cooldown_until - datetime.now(UTC)).total_seconds() <= 30
    ttl_ms = redis.Redis.from_url(settings.redis_url).pttl(cooldown_redis_key(stored.id))
    assert 20_000 < ttl_ms <= 30_000


def test_job_waits_for_cooling_key_then_succeeds(
    db: SessionMaker,
    settings: Settings,
    fake: FakeProviderServer,
    api: tuple[str, ChildProcess],
    workers: list[ChildProcess],
    client_key: str,
) -> None:
    api_url, _ = api
    fake.provider.set_behaviour(KEY_A, Behaviour(kind="openai_rate_limit_retry_after_2", times=1))
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url)

    job_id = _submit(api_url, client_key)
    waiting = poll_job(api_url, client_key, job_id, until=("retrying", "succeeded", "failed"))
    finished = poll_job(api_url, client_key, job_id)

    assert waiting["status"] == "retrying"
    assert waiting["next_attempt_at"] is not None
    assert waiting["error"]["code"] == "waiting_for_key"
    rate_limited_at = datetime.fromisoformat(waiting["attempts"][0]["finished_at"])
    wait_s = (datetime.fromisoformat(waiting["next_attempt_at"]) - rate_limited_at).total_seconds()
    assert 1.5 < wait_s <= 2
    assert finished["status"] == "succeeded"
    assert finished["error"] is None
    assert finished["next_attempt_at"] is None
    assert [a["outcome"] for a in finished["attempts"]] == ["rate_limited", "succeeded"]
    assert fake.provider.request_count(KEY_A) == 2


def test_job_fails_naming_every_unusable_key(
    db: SessionMaker,
    settings: Settings,
    fake: FakeProviderServer,
    api: tuple[str, ChildProcess],
    workers: list[ChildProcess],
    client_key: str,
) -> None:
    api_url, _ = api
    fake.provider.set_behaviour(KEY_A, "openai_invalid_key")
    fake.provider.set_behaviour(GEMINI_KEY, "gemini_invalid_key")
    store_key(
        db,
        settings,
        label="openai-main",
        secret=KEY_A,
        base_url=fake.openai_base_url,
        provider="openai",
        model="gpt-4o-mini",
    )
    store_key(
        db,
        settings,
        label="gemini-main",
        secret=GEMINI_KEY,
        base_url=fake.gemini_base_url,
        provider="gemini",
        model="gemini-2.5-flash",
    )

    job = poll_job(api_url, client_key, _submit(api_url, client_key))
    again = poll_job(api_url, client_key, _submit(api_url, client_key))

    assert job["status"] == "failed"
    assert job["error"]["code"] == "no_usable_key"
    assert "openai-main (openai): invalid_key" in job["error"]["message"]
    assert "gemini-main (gemini): invalid_key" in job["error"]["message"]
    assert again["status"] == "failed"
    assert "openai-main (openai) is invalid" in again["error"]["message"]
    assert "gemini-main (gemini) is invalid" in again["error"]["message"]
    assert again["attempts"] == []
    assert _key(db, "openai-main").status == "invalid"
    assert _key(db, "gemini-main").status == "invalid"


def test_secrets_never_leave_the_key_store(
    db: SessionMaker,
    settings: Settings,
    fake: FakeProviderServer,
    api: tuple[str, ChildProcess],
    workers: list[ChildProcess],
    client_key: str,
) -> None:
    api_url, api_process = api
    fake.provider.set_behaviour(KEY_A, "openai_invalid_key")
    fake.provider.set_behaviour(GEMINI_KEY, Behaviour(kind="gemini_rate_limit_minute", times=1))
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(
        db,
        settings,
        label="a",
        secret=KEY_A,
        base_url=fake.openai_base_url,
        provider="openai",
        model="gpt-4o-mini",
        priority=3,
    )
    store_key(
        db,
        settings,
        label="g",
        secret=GEMINI_KEY,
        base_url=fake.gemini_base_url,
        provider="gemini",
        model="gemini-2.5-flash",
        priority=2,
    )
    store_key(
        db,
        settings,
        label="b",
        secret=KEY_B,
        base_url=fake.gemini_base_url,
        provider="gemini",
        model="gemini-2.5-flash",
        priority=1,
    )

    responses = []
    for _ in range(3):
        job_id = _submit(api_url, client_key)
        poll_job(api_url, client_key, job_id)
        responses.append(
            httpx.get(f"{api_url}/v1/jobs/{job_id}", headers={"X-API-Key": client_key}).text
        )
    responses.append(
        httpx.post(
            f"{api_url}/v1/query/sync", json=BODY, headers={"X-API-Key": client_key}, timeout=30
        ).text
    )
    row_queries = (
        "select * from jobs",
        "select * from job_attempts",
        "select id, label, secret_hint, status_reason, last_error from provider_keys",
    )
    with db() as session:
        rows = [
            str(session.execute(text(f"select string_agg(t::text, ' ') from ({query}) t")).scalar())  # noqa: S608
            for query in row_queries
        ]
    logs = [worker.output() for worker in workers] + [api_process.output()]

    assert fake.provider.request_count(KEY_A) == 1
    assert "rate_limited" in " ".join(rows)
    assert "invalid_key" in " ".join(rows)
    for secret in (KEY_A, KEY_B, GEMINI_KEY):
        for fragment in (secret, secret[:8], secret[-4:]):
            for place, content in (
                ("responses", " ".join(responses)),
                ("rows", " ".join(rows)),
                ("logs", " ".join(logs)),
            ):
                assert fragment not in content, f"{fragment!r} found in {place}"
