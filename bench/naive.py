"""The naive pattern: a Celery task that runs each job under its own `asyncio.run()`.

Each job creates its SQLAlchemy async engine, its httpx client and its LLM client on a new
event loop and closes them before the loop ends, so no connection outlives a job. This is
the pattern that keeps "attached to a different loop" errors away at the price of a new
PostgreSQL connection and a new HTTP connection for every job.

Run with `celery -A bench.naive worker --pool threads --concurrency C -Q bench-naive`. The
app uses the same broker settings as the Modcus worker and its own queue.
"""

from __future__ import annotations

import asyncio
import uuid

from celery import Celery
from sqlalchemy.ext.asyncio import async_sessionmaker

from bench.peer_job import create_http_client, create_llm, run_peer_job
from common.db import create_async_db_engine
from common.queue import create_celery_app
from common.settings import get_settings

NAIVE_QUEUE = "bench-naive"
NAIVE_TASK = "bench.naive_job"


def create_naive_app() -> Celery:
    """Create a Celery app with the Modcus broker settings that routes to the naive queue."""
    naive_app = create_celery_app(get_settings())
    naive_app.conf.task_default_queue = NAIVE_QUEUE
    # Only the naive task runs here; the Modcus schedule belongs to `celery -A worker beat`.
    naive_app.conf.beat_schedule = {}
    return naive_app


app = create_naive_app()


async def _run_job(job_id: uuid.UUID) -> None:
    settings = get_settings()
    engine = create_async_db_engine(settings)
    http_client = create_http_client(settings)
    try:
        llm = create_llm(settings, http_client)
        session_factory = async_sessionmaker(engine, expire_on_commit=False)
        await run_peer_job(session_factory, llm, job_id)
    finally:
        await http_client.aclose()
        await engine.dispose()


@app.task(name=NAIVE_TASK)
def naive_job(job_id: str) -> None:
    """Run job `job_id` on a new event loop that lives only as long as the job."""
    asyncio.run(_run_job(uuid.UUID(job_id)))
