"""Faults with real processes: killed workers, lost broker data, early redelivery."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from common.fake_provider import Behaviour, FakeProviderServer
from common.settings import Settings
from tests.conftest import (
    ChildProcess,
    SessionMaker,
    create_client,
    free_port,
    load_sample_companies,
    poll_job,
    start_api,
    start_beat,
    start_worker,
    store_key,
)

pytestmark = pytest.mark.slow

PROVIDER_KEY = "sk-faults-0123456789abcdefghijkl"
BODY = {"query": "How did revenue change?", "mode": "company-analysis", "ticker": "GDRX"}


@pytest.fixture
def client_key(db: SessionMaker, settings: Settings, fake: FakeProviderServer) -> str:
    store_key(db, settings, label="fake", secret=PROVIDER_KEY, base_url=fake.openai_base_url)
    load_sample_companies(db)
    return create_client(db)


@pytest.fixture
def api_url(db: SessionMaker, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = start_api(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def _submit(api_url: str, client_key: str) -> str:
    response = httpx.post(f"{api_url}/v1/query", json=BODY, headers={"X-API-Key": client_key})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _wait_for_requests(fake: FakeProviderServer, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while fake.provider.request_count(PROVIDER_KEY) < count:
        assert time.monotonic() < deadline, f"fewer than {count} provider requests arrived"
        time.sleep(0.05)


def _kill_children(worker: ChildProcess) -> list[int]:
    children = worker.children()
    assert children, "the worker has no child process to kill"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    return children


def _completed_attempts(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [attempt for attempt in job["attempts"] if attempt["outcome"] == "succeeded"]


def test_killed_worker_child_jobs_succeed_once(
    api_url: str, client_key: str, fake: FakeProviderServer, tmp_path: Path
) -> None:
    fake.provider.set_behaviour(PROVIDER_KEY, Behaviour(latency_ms=3000))
    worker = start_worker(tmp_path, concurrency=2, env={"MODCUS_JOB_LEASE_S": "3"})
    try:
        job_ids = [_submit(api_url, client_key) for _ in range(4)]
        _wait_for_requests(fake, 2)
        killed = _kill_children(worker)
        jobs = [poll_job(api_url, client_key, job_id, timeout_s=90) for job_id in job_ids]
    finally:
        worker.stop()

    assert len(killed) == 2
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    for job in jobs:
        assert len(_completed_attempts(job)) == 1
        assert "Revenue" in job["result"]["answer"] or "revenue" in job["result"]["answer"]
    # The two calls cut short by the kill were sent again.
    assert fake.provider.request_count(PROVIDER_KEY) == 6


def test_job_killing_its_worker_fails_after_cap(
    api_url: str, client_key: str, fake: FakeProviderServer, tmp_path: Path
) -> None:
    fake.provider.set_behaviour(PROVIDER_KEY, "hang")
    env = {"MODCUS_JOB_LEASE_S": "2", "MODCUS_JOB_MAX_DELIVERIES": "2"}
    worker = start_worker(tmp_path, concurrency=1, env=env)
    try:
        job_id = _submit(api_url, client_key)
        for runs in (1, 2):
            _wait_for_requests(fake, runs)
            _kill_children(worker)
        job = poll_job(api_url, client_key, job_id, timeout_s=60)
    finally:
        worker.stop()

    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert "stopped 2 times" in job["error"]["message"]
    assert fake.provider.request_count(PROVIDER_KEY) == 2


def test_broker_data_lost_jobs_still_succeed(
    api_url: str,
    client_key: str,
    fake: FakeProviderServer,
    settings: Settings,
    tmp_path: Path,
) -> None:
    fake.provider.set_behaviour(PROVIDER_KEY, Behaviour(latency_ms=100))
    job_ids = [_submit(api_url, client_key) for _ in range(30)]
    broker = redis.Redis.from_url(settings.redis_url)
    assert broker.llen("celery") == 30
    # Everything Modcus keeps in Redis is in this database, as it would be lost by
    # FLUSHALL; FLUSHALL itself would also wipe other databases on the server.
    broker.flushdb()

    env = {"MODCUS_RECONCILE_INTERVAL_S": "2"}
    worker = start_worker(tmp_path, pool="threads", concurrency=8, env=env)
    beat = start_beat(tmp_path, env=env)
    try:
        jobs = [poll_job(api_url, client_key, job_id, timeout_s=90) for job_id in job_ids]
    finally:
        beat.stop()
        worker.stop()

    assert [job["status"] for job in jobs] == ["succeeded"] * 30
    assert all(len(_completed_attempts(job)) == 1 for job in jobs)
    assert fake.provider.request_count(PROVIDER_KEY) == 30
    reenqueued = re.findall(r"re-enqueued (\d+)", worker.output())
    assert sum(int(count) for count in reenqueued) == 30


def test_early_redelivery_calls_provider_once(
    api_url: str, client_key: str, fake: FakeProviderServer, tmp_path: Path
) -> None:
    fake.provider.set_behaviour(PROVIDER_KEY, Behaviour(latency_ms=8000))
    env = {
        "MODCUS_ENV": "development",
        "MODCUS_BROKER_VISIBILITY_TIMEOUT_S": "2",
        "MODCUS_JOB_TIME_LIMIT_S": "30",
        "MODCUS_JOB_LEASE_S": "3",
    }
    worker = start_worker(tmp_path, concurrency=2, env=env)
    try:
        job_id = _submit(api_url, client_key)
        job = poll_job(api_url, client_key, job_id, timeout_s=60)
        # Let any redelivery still in flight reach the worker and be dropped.
        time.sleep(4)
    finally:
        worker.stop()

    assert job["status"] == "succeeded"
    assert len(_completed_attempts(job)) == 1
    assert fake.provider.request_count(PROVIDER_KEY) == 1
    assert "is held by another run" in worker.output()
    assert "is not longer than MODCUS_JOB_TIME_LIMIT_S" in worker.output()


def _postgres(action: str) -> None:
    """Stop or start the local PostgreSQL cluster, the way .ci/run starts it."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, "-m", "fast"]
        if action == "stop"
        else ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        timeout=60,
    )


@pytest.mark.skipif(
    not Path("/etc/postgresql").is_dir() or os.geteuid() != 0,
    reason="needs a local PostgreSQL cluster managed with pg_ctlcluster, as root",
)
def test_postgres_restart_jobs_end_terminal(
    api_url: str, client_key: str, fake: FakeProviderServer, tmp_path: Path
) -> None:
    fake.provider.set_behaviour(PROVIDER_KEY, Behaviour(latency_ms=2000))
    env = {"MODCUS_JOB_LEASE_S": "3", "MODCUS_RECONCILE_INTERVAL_S": "2"}
    worker = start_worker(tmp_path, concurrency=2, env=env)
    beat = start_beat(tmp_path, env=env)
    headers = {"X-API-Key": client_key}
    try:
        job_ids = [_submit(api_url, client_key) for _ in range(4)]
        _wait_for_requests(fake, 2)
        _postgres("stop")
        try:
            read_during = httpx.get(f"{api_url}/v1/jobs/{job_ids[0]}", headers=headers)
            submit_during = httpx.post(f"{api_url}/v1/query", json=BODY, headers=headers)
            ready_during = httpx.get(f"{api_url}/readyz")
        finally:
            _postgres("start")
        jobs = [poll_job(api_url, client_key, job_id, timeout_s=120) for job_id in job_ids]
    finally:
        beat.stop()
        worker.stop()

    assert read_during.status_code == 503
    assert read_during.json()["error"]["code"] == "dependency_unavailable"
    assert submit_during.status_code == 503
    assert ready_during.status_code == 503
    assert ready_during.json()["redis"] == "ok"
    assert ready_during.json()["postgresql"].startswith("unavailable")
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    assert all(len(_completed_attempts(job)) == 1 for job in jobs)
