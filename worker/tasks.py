"""Celery tasks. Each is a plain function that awaits its work on the process's loop."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from typing import Any

from sqlalchemy import text

from common.errors import DependencyUnavailableError
from common.execution import execute_job
from common.models import JobStatus
from common.queue import (
    RECONCILE_TASK,
    RETENTION_TASK,
    REVALIDATE_KEYS_TASK,
    RUN_ANALYSIS_TASK,
)
from common.reconcile import LostJobs, find_lost_jobs
from common.reconcile import delete_expired_jobs as delete_expired_jobs_on_loop
from common.revalidation import RevalidationSummary, revalidate_keys
from common.runtime import Runtime
from worker.app import app
from worker.loop import current_worker_loop

logger = logging.getLogger(__name__)

_RECONCILE_CLAIM_KEY = "modcus:reconcile:claim"
_CLAIM_SHARE = 0.9


@app.task(name=RUN_ANALYSIS_TASK)
def run_analysis(job_id: str) -> None:
    """Run the analysis job `job_id` to its end state."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        logger.error("dropping a message with malformed job id %r", job_id)
        return
    worker_loop = current_worker_loop()
    try:
        run = worker_loop.run(execute_job, parsed)
    except DependencyUnavailableError as exc:
        # Try again after the lease of the abandoned run ends. If the broker is down
        # too, publishing fails and the reconciler finds the job once it is back.
        delay_s = worker_loop.runtime.settings.job_lease_s + 1
        logger.warning("%s; trying again in %.0f s", exc, delay_s)
        run_analysis.apply_async(args=(job_id,), countdown=delay_s)
        return
    # RETRYING waits for a key; RUNNING means another live run holds the job, so this
    # delivery checks again when that run's lease ends.
    waiting = (JobStatus.RETRYING, JobStatus.RUNNING)
    if run is not None and run.status in waiting and run.retry_at is not None:
        # Published from the task's thread, never from the loop: kombu blocks.
        run_analysis.apply_async(args=(job_id,), eta=run.retry_at)


async def _find_lost_jobs_once(runtime: Runtime) -> LostJobs | None:
    # One run per interval across every worker and beat process; the claim expires
    # by itself, so a crashed run does not block the next one.
    # The claim covers most of the interval but not all of it, so that the next
    # scheduled run, which may arrive a few milliseconds early, is not skipped.
    interval_ms = int(runtime.settings.reconcile_interval_s * 1000 * _CLAIM_SHARE)
    claimed = await runtime.redis.set(_RECONCILE_CLAIM_KEY, os.getpid(), nx=True, px=interval_ms)
    if not claimed:
        return None
    return await find_lost_jobs(runtime)


@app.task(name=RECONCILE_TASK)
def reconcile_jobs() -> int:
    """Publish again every job that is pending in PostgreSQL but that the broker lost."""
    lost = current_worker_loop().run(_find_lost_jobs_once)
    if lost is None:
        logger.info("job reconciliation skipped: another run claimed this interval")
        return 0
    for job_id in lost.job_ids:
        run_analysis.apply_async(args=(str(job_id),))
    logger.info(
        "job reconciliation checked %d pending jobs and re-enqueued %d",
        lost.checked,
        len(lost.job_ids),
    )
    return len(lost.job_ids)


@app.task(name=RETENTION_TASK)
def delete_expired_jobs() -> int:
    """Delete finished jobs older than MODCUS_JOB_RETENTION_S."""
    return current_worker_loop().run(delete_expired_jobs_on_loop)


async def _describe_runtime(runtime: Runtime) -> dict[str, Any]:
    async with runtime.engine.connect() as connection:
        backend_pid = (await connection.execute(text("select pg_backend_pid()"))).scalar_one()
    return {
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "loop_id": id(asyncio.get_running_loop()),
        "db_backend_pid": backend_pid,
    }


@app.task(name="modcus.describe_runtime", ignore_result=False)
def describe_runtime() -> dict[str, Any]:
    """Report the process, event loop and database connection that served this task.

    Operators and tests use it to check that tasks of one process share one loop
    and reuse pooled connections.
    """
    return current_worker_loop().run(_describe_runtime)


async def _revalidate_keys(
    runtime: Runtime, key_id: int | None, scheduled: bool
) -> RevalidationSummary:
    return await revalidate_keys(runtime, key_id=key_id, scheduled=scheduled)


@app.task(name=REVALIDATE_KEYS_TASK)
def revalidate_provider_keys(key_id: int | None = None, scheduled: bool = False) -> None:
    """Probe every provider key, or only `key_id`; celery beat sends it with `scheduled`.

    A scheduled run is skipped when another scheduled run already claimed this interval,
    and any run is skipped while another holds the revalidation lock.
    """
    current_worker_loop().run(_revalidate_keys, key_id, scheduled)
