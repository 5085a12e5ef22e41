"""The Celery application as both the API (publisher) and the worker configure it.

The broker carries only job ids; PostgreSQL holds the jobs.
"""

from __future__ import annotations

import asyncio
import uuid

from celery import Celery

from common.settings import Settings

RUN_ANALYSIS_TASK = "modcus.run_analysis"
RECONCILE_TASK = "modcus.reconcile_jobs"
RETENTION_TASK = "modcus.delete_expired_jobs"
REVALIDATE_KEYS_TASK = "modcus.revalidate_keys"

# Finished jobs past retention are deleted this often.
_RETENTION_INTERVAL_S = 3600.0
# Celery's own time limits are a backstop behind the worker's asyncio timeout of
# MODCUS_JOB_TIME_LIMIT_S: they act only if the event loop stops responding.
_SOFT_LIMIT_MARGIN_S = 30.0
_HARD_LIMIT_MARGIN_S = 60.0
# Visibility timeouts below this get frequent restore sweeps; see _transport_options.
_SHORT_VISIBILITY_TIMEOUT_S = 600.0


def _transport_options(visibility_timeout_s: float) -> dict[str, float]:
    """Redis transport options: the visibility timeout, and restore sweeps that match it.

    kombu 5.7 sweeps for messages past their visibility timeout only about every
    100 s by default (a 10 s interval, scanning on every 10th sweep). A short
    timeout gets sweeps every quarter of it, or a message would wait far longer
    than the timeout before it is redelivered.
    """
    options: dict[str, float] = {"visibility_timeout": visibility_timeout_s}
    if visibility_timeout_s < _SHORT_VISIBILITY_TIMEOUT_S:
        options["unacked_restore_interval"] = max(1.0, visibility_timeout_s / 4)
        options["unacked_restore_throttle"] = 1
    return options


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
        # A worker process reserves one job it has not started, so jobs spread across processes.
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.job_time_limit_s + _SOFT_LIMIT_MARGIN_S,
        task_time_limit=settings.job_time_limit_s + _HARD_LIMIT_MARGIN_S,
        # Redis redelivers a message not acknowledged within this time, so it must
        # exceed the longest job; settings reject a shorter one outside development.
        broker_transport_options=_transport_options(settings.broker_visibility_timeout_s),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
        beat_schedule={
            "reconcile-jobs": {
                "task": RECONCILE_TASK,
                "schedule": settings.reconcile_interval_s,
            },
            "delete-expired-jobs": {
                "task": RETENTION_TASK,
                "schedule": _RETENTION_INTERVAL_S,
            },
        },
    )
    return app


async def enqueue_analysis(app: Celery, job_id: uuid.UUID) -> None:
    """Publish a job id without blocking the event loop: kombu's publish is blocking I/O."""
    # ignore_result, because send_task otherwise subscribes to the result backend for
    # every job (Celery 5.7), and a Redis outage then takes about 19 s to surface.
    await asyncio.to_thread(
        app.send_task, RUN_ANALYSIS_TASK, args=[str(job_id)], ignore_result=True
    )


async def enqueue_revalidation(app: Celery, *, key_id: int | None = None) -> str:
    """Publish a manual key revalidation without blocking the event loop; return the task id.

    Manual runs skip the interval claim of scheduled runs but wait for no other run: a
    worker skips the run if another one holds the revalidation lock.
    """
    result = await asyncio.to_thread(
        app.send_task,
        REVALIDATE_KEYS_TASK,
        kwargs={"key_id": key_id, "scheduled": False},
        ignore_result=True,
    )
    task_id: str = result.id
    return task_id
