"""Real worker and API processes: jobs enqueued over HTTP are polled to their end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.fake_provider import FakeProviderServer
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
)
from tests.conftest import store_key as store_provider_key

pytestmark = pytest.mark.slow

PROVIDER_KEY = "sk-end-to-end-key-0123456789abcdef"
BODY = {
    "query": "What are the key financial highlights?",
    "mode": "company-analysis",
    "ticker": "GOTO",
    "level": "novice",
}


@pytest.fixture
def client_key(db: SessionMaker, settings: Settings, fake: FakeProviderServer) -> str:
    fake.provider.set_behaviour(PROVIDER_KEY, "answer")
    store_provider_key(
        db, settings, label="fake", secret=PROVIDER_KEY, base_url=fake.openai_base_url
    )
    load_sample_companies(db)
    return create_client(db)


@pytest.fixture
def api_url(db: SessionMaker, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    api = start_api(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        api.stop()


@pytest.fixture(params=["prefork", "threads"])
def worker(
    request: pytest.FixtureRequest, db: SessionMaker, tmp_path: Path
) -> Iterator[ChildProcess]:
    process = start_worker(tmp_path, pool=request.param, concurrency=2)
    try:
        yield process
    finally:
        process.stop()


def test_jobs_over_http_succeed_on_worker(
    api_url: str, worker: ChildProcess, client_key: str, fake: FakeProviderServer
) -> None:
    headers = {"X-API-Key": client_key}
    job_ids = []
    for level in ("novice", "intermediate", "expert"):
        response = httpx.post(f"{api_url}/v1/query", json=BODY | {"level": level}, headers=headers)
        assert response.status_code == 202
        job_ids.append(response.json()["job_id"])

    jobs = [poll_job(api_url, client_key, job_id) for job_id in job_ids]

    for job in jobs:
        assert job["status"] == "succeeded", job
        assert "Rp63.2 trillion" in job["result"]["answer"]
        assert job["started_at"] is not None
        assert job["finished_at"] is not None
        assert job["error"] is None
        assert [(a["provider"], a["key_label"], a["outcome"]) for a in job["attempts"]] == [
            ("openai-compatible", "fake", "succeeded")
        ]
        assert job["attempts"][0]["model"] == "fake-model"
    assert fake.provider.request_count(PROVIDER_KEY) == 3


def test_job_fails_with_reason_when_keys_rejected(
    api_url: str, worker: ChildProcess, client_key: str, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(PROVIDER_KEY, "openai_invalid_key")
    headers = {"X-API-Key": client_key}

    job_id = httpx.post(f"{api_url}/v1/query", json=BODY, headers=headers).json()["job_id"]
    job = poll_job(api_url, client_key, job_id)

    assert job["status"] == "failed"
    assert job["error"]["code"] == "no_usable_key"
    assert "fake (openai-compatible): invalid_key" in job["error"]["message"]
    assert job["attempts"][0]["outcome"] == "invalid_key"
    assert PROVIDER_KEY[:8] not in str(job)
    assert PROVIDER_KEY[-4:] not in str(job)


def test_worker_tasks_share_loop_and_pooled_connection(
    worker: ChildProcess, db: SessionMaker
) -> None:
    from common.queue import create_celery_app
    from common.settings import get_settings

    app = create_celery_app(get_settings())
    try:
        # One at a time, so each task finds the previous one's connection back in the pool.
        reports = [app.send_task("modcus.describe_runtime").get(timeout=30) for _ in range(5)]
    finally:
        app.close()

    by_process: dict[int, list[dict[str, Any]]] = {}
    for report in reports:
        by_process.setdefault(report["pid"], []).append(report)
    # Two processes at most and five tasks, so some process ran two or more.
    assert max(len(process_reports) for process_reports in by_process.values()) >= 2
    for process_reports in by_process.values():
        assert len({report["loop_id"] for report in process_reports}) == 1
        assert len({report["db_backend_pid"] for report in process_reports}) == 1


def test_running_job_cancel_stops_it(
    api_url: str, worker: ChildProcess, client_key: str, fake: FakeProviderServer
) -> None:
    from common.fake_provider import Behaviour

    fake.provider.set_behaviour(PROVIDER_KEY, Behaviour(latency_ms=10_000))
    headers = {"X-API-Key": client_key}
    job_id = httpx.post(f"{api_url}/v1/query", json=BODY, headers=headers).json()["job_id"]
    poll_job(api_url, client_key, job_id, until=("running",))

    cancelled = httpx.post(f"{api_url}/v1/jobs/{job_id}/cancel", headers=headers)
    worker.wait_for_output(f"job {job_id} stopped: cancelled", timeout_s=10)
    again = httpx.post(f"{api_url}/v1/jobs/{job_id}/cancel", headers=headers)
    job = poll_job(api_url, client_key, job_id)

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert again.status_code == 409
    assert job["status"] == "cancelled"
    assert job["result"] is None
    assert job["attempts"] == []
