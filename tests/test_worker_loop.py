"""The per-process event loop of the worker, exercised in this process."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text

from common.analysis import AnalysisRequest, Level, Mode
from common.execution import execute_job
from common.fake_provider import FakeProviderServer
from common.jobs import create_job
from common.models import ApiClient, Job, JobStatus
from common.runtime import Runtime
from common.settings import Settings
from tests.conftest import SessionMaker, create_client, load_sample_companies, store_key
from worker.loop import WorkerLoop

PROVIDER_KEY = "sk-worker-loop-test-0123456789"


@pytest.fixture
def worker_loop(db: SessionMaker, settings: Settings) -> Iterator[WorkerLoop]:
    loop = WorkerLoop(settings)
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()


async def _backend_pid(runtime: Runtime) -> tuple[int, int]:
    async with runtime.engine.connect() as connection:
        pid = (await connection.execute(text("select pg_backend_pid()"))).scalar_one()
    return id(asyncio.get_running_loop()), pid


async def _new_job(runtime: Runtime, client_id: int) -> uuid.UUID:
    request = AnalysisRequest(
        query="What are the key financial highlights?",
        mode=Mode.COMPANY_ANALYSIS,
        level=Level.NOVICE,
        ticker="GOTO",
    )
    async with runtime.session_factory() as session:
        job = await create_job(session, client_id=client_id, request=request)
    return job.id


def _prepare(db: SessionMaker, settings: Settings, fake: FakeProviderServer) -> int:
    fake.provider.set_behaviour(PROVIDER_KEY, "answer")
    store_key(db, settings, label="fake", secret=PROVIDER_KEY, base_url=fake.openai_base_url)
    load_sample_companies(db)
    create_client(db)
    with db() as session:
        client_id = session.scalar(select(ApiClient.id))
        assert client_id is not None
        return client_id


def _job(db: SessionMaker, job_id: uuid.UUID) -> Job:
    with db() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_worker_loop_tasks_share_loop_and_connection(worker_loop: WorkerLoop) -> None:
    first_loop, first_pid = worker_loop.run(_backend_pid)
    second_loop, second_pid = worker_loop.run(_backend_pid)

    assert first_loop == second_loop == id(worker_loop.loop)
    assert first_pid == second_pid


def test_worker_loop_runs_jobs_twice_in_a_row(
    worker_loop: WorkerLoop, db: SessionMaker, settings: Settings, fake: FakeProviderServer
) -> None:
    client_id = _prepare(db, settings, fake)

    outcomes = []
    for _ in range(2):
        job_id = worker_loop.run(_new_job, client_id)
        run = worker_loop.run(execute_job, job_id)
        assert run is not None
        outcomes.append(run.status)
        job = _job(db, job_id)
        assert job.result is not None
        assert "Rp63.2 trillion" in job.result["answer"]

    assert outcomes == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED]
    assert fake.provider.request_count(PROVIDER_KEY) == 2


def test_worker_loop_from_threads_shares_one_loop(worker_loop: WorkerLoop) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: worker_loop.run(_backend_pid), range(8)))

    assert {loop_id for loop_id, _ in results} == {id(worker_loop.loop)}


# Run in a child process: the kept resources belong to a closed loop, cannot be
# closed and leak sockets, which this process would report as errors.
_BROKEN_PATTERN = """
from asgiref.sync import async_to_sync
from sqlalchemy import text
from common.runtime import Runtime
from common.settings import get_settings

kept = []

async def query():
    if not kept:
        kept.append(await Runtime.start(get_settings()))
    async with kept[0].engine.connect() as connection:
        return (await connection.execute(text("select 1"))).scalar_one()

print("first", async_to_sync(query)())
try:
    async_to_sync(query)()
except Exception as exc:
    print("second failed:", type(exc).__name__, exc)
else:
    print("second succeeded")
"""


def test_plain_async_to_sync_breaks_kept_resources(db: SessionMaker) -> None:
    """Without the worker loop, async_to_sync gives each call a new loop.

    A pool kept from the first call is bound to a closed loop, so the second call
    fails: the failure the worker loop exists to prevent.
    """
    finished = subprocess.run(
        [sys.executable, "-c", _BROKEN_PATTERN],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert "first 1" in finished.stdout
    assert "second failed:" in finished.stdout
    assert re.search(r"attached to a different loop|Event loop is closed", finished.stdout)
