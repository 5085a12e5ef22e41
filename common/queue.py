"""The Celery application as both the API (publisher) and the worker configure it.

The broker carries only job ids; PostgreSQL holds the jobs.
"""

from __future__ import annotations

import asyncio
import uuid

from celery import Celery

from common.settings import Settings

RUN_ANALYSIS_TASK = "modcus.run_analysis"

# Redis redelivers an unacknowledged message after this long, so it must exceed the
# longest job. TODO: make it a setting checked against a job time limit.
_VISIBILITY_TIMEOUT_S = 3600


def create_celery_app(settings: Settings) -> Celery:
    """Create a Celery app configured for long LLM calls on a Redis broker."""
    app = Celery("modcus", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_expires=3600,
        # A job is acknowledged when it ends, and requeued if its process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A worker process holds one job it has not started, so jobs spread across processes.
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": _VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


async def enqueue_analysis(app: Celery, job_id: uuid.UUID) -> None:
    """Publish a job id without blocking the event loop: kombu's publish is blocking I/O."""
    await asyncio.to_thread(app.send_task, RUN_ANALYSIS_TASK, args=[str(job_id)])
