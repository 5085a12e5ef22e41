"""Celery tasks. Each is a plain function that awaits its work on the process's loop."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from typing import Any

from sqlalchemy import text

from common.jobs import execute_job
from common.models import JobStatus
from common.queue import RUN_ANALYSIS_TASK
from common.runtime import Runtime
from worker.app import app
from worker.loop import current_worker_loop

logger = logging.getLogger(__name__)


@app.task(name=RUN_ANALYSIS_TASK)
def run_analysis(job_id: str) -> None:
    """Run the analysis job `job_id` to its end state."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        logger.error("dropping a message with malformed job id %r", job_id)
        return
    run = current_worker_loop().run(execute_job, parsed)
    if run is not None and run.status is JobStatus.RETRYING and run.retry_at is not None:
        # Published from the task's thread, never from the loop: kombu blocks.
        run_analysis.apply_async(args=(job_id,), eta=run.retry_at)


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
