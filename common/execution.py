"""Running one job on a worker: claim it, run the analysis under a lease, store the end.

While the analysis runs, a supervisor renews the job's lease and watches for a
cancellation. A run that loses its lease or is cancelled stops at its next await.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.exceptions
import sqlalchemy.exc

from common.analysis import AnalysisRequest, AnalysisResult, Level, Mode, run_analysis
from common.errors import (
    CompanyNotFoundError,
    DependencyUnavailableError,
    NoUsableKeyError,
    ProviderError,
)
from common.jobs import (
    cancel_redis_key,
    claim_job,
    defer_job,
    finish_job,
    record_attempt,
    renew_lease,
)
from common.models import Job, JobStatus
from common.rotator import Attempt
from common.runtime import Runtime

logger = logging.getLogger(__name__)

# Errors that mean PostgreSQL or Redis is unreachable, rather than that the job failed.
# asyncpg errors reach here wrapped by SQLAlchemy; refused connections are OSError.
_OUTAGE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)

# How often a running job checks for a cancellation request.
_CANCEL_POLL_S = 0.5
# A delivery for a job that another live run holds is retried this long after the
# lease ends, so that the lease has surely expired by then.
_BUSY_RETRY_MARGIN_S = 1.0


@dataclass(frozen=True)
class JobRun:
    """The end of one delivery of a job.

    `status` is terminal, RETRYING (run again at `retry_at`), or RUNNING when
    another run holds the job (check again at `retry_at`, when its lease ends).
    """

    status: JobStatus
    retry_at: datetime | None = None


class _RunStopped(Exception):
    """Raised inside a run when it was cancelled or lost its lease."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def request_of(job: Job) -> AnalysisRequest:
    return AnalysisRequest(
        query=job.query, mode=Mode(job.mode), level=Level(job.level), ticker=job.ticker
    )


async def _when_busy(runtime: Runtime, job_id: uuid.UUID) -> JobRun | None:
    """Describe a job that could not be claimed: held by a live run, or not startable."""
    async with runtime.session_factory() as session:
        job = await session.get(Job, job_id)
    if job is None:
        logger.warning("job %s does not exist; dropping its message", job_id)
        return None
    if job.status == JobStatus.RUNNING.value and job.lease_until is not None:
        logger.info("job %s is held by another run until %s", job_id, job.lease_until)
        return JobRun(JobStatus.RUNNING, job.lease_until + timedelta(seconds=_BUSY_RETRY_MARGIN_S))
    logger.info("job %s is %s; skipping this delivery", job_id, job.status)
    return None


async def _supervise(
    runtime: Runtime, job_id: uuid.UUID, run_token: uuid.UUID, work: asyncio.Task[Any]
) -> None:
    """Renew the lease and watch for cancellation until `work` ends; cancel it when asked."""
    settings = runtime.settings
    renew_every_s = settings.job_lease_s / 3
    next_renewal = time.monotonic() + renew_every_s
    while not work.done():
        await asyncio.wait({work}, timeout=_CANCEL_POLL_S)
        if work.done():
            return
        if await runtime.redis.exists(cancel_redis_key(job_id)):
            work.cancel(msg="cancelled")
            return
        if time.monotonic() >= next_renewal:
            async with runtime.session_factory() as session:
                held = await renew_lease(session, job_id, run_token, lease_s=settings.job_lease_s)
            if not held:
                work.cancel(msg="lost")
                return
            next_renewal += renew_every_s


async def _analyse(runtime: Runtime, job: Job) -> AnalysisResult:
    """Run the analysis under the job time limit, supervised; raise _RunStopped if stopped."""
    run_token = job.run_token
    assert run_token is not None

    async def on_attempt(attempt: Attempt) -> None:
        async with runtime.session_factory() as session:
            await record_attempt(session, job.id, attempt)

    work = asyncio.create_task(
        run_analysis(
            request_of(job),
            rotator=runtime.rotator,
            session_factory=runtime.session_factory,
            on_attempt=on_attempt,
        )
    )
    supervisor = asyncio.create_task(_supervise(runtime, job.id, run_token, work))
    try:
        async with asyncio.timeout(runtime.settings.job_time_limit_s):
            return await work
    except asyncio.CancelledError:
        # Cancelled by the supervisor, not by the caller: the task is done and the
        # current task was not cancelled.
        if work.cancelled() and not _current_task_cancelling():
            reason = "cancelled" if await _cancel_requested(runtime, job.id) else "lost"
            raise _RunStopped(reason) from None
        raise
    finally:
        supervisor.cancel()
        if not work.done():
            work.cancel()


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _cancel_requested(runtime: Runtime, job_id: uuid.UUID) -> bool:
    return bool(await runtime.redis.exists(cancel_redis_key(job_id)))


async def execute_job(runtime: Runtime, job_id: uuid.UUID) -> JobRun | None:
    """Run a job once; return how the delivery ended, or None if there is nothing to do.

    When no key can serve now but one frees up later, the job becomes retrying and
    the caller schedules it again at `retry_at`, up to MODCUS_JOB_MAX_ATTEMPTS runs.
    """
    settings = runtime.settings
    async with runtime.session_factory() as session:
        job = await claim_job(session, job_id, lease_s=settings.job_lease_s)
    if job is None:
        return await _when_busy(runtime, job_id)
    run_token = job.run_token
    assert run_token is not None
    logger.info("job %s started (delivery %d)", job_id, job.deliveries)

    if job.lost_runs >= settings.job_max_deliveries:
        message = (
            f"the worker running this job stopped {job.lost_runs} times before it ended "
            "(killed or lost), so it was not run again; check the worker logs for job "
            f"{job_id} and submit it again"
        )
        async with runtime.session_factory() as session:
            await finish_job(
                session,
                job_id,
                run_token,
                JobStatus.FAILED,
                error_code="worker_lost",
                error_message=message,
            )
        logger.warning("job %s failed after %d lost runs", job_id, job.lost_runs)
        return JobRun(JobStatus.FAILED)

    started = datetime.now(UTC)
    status = JobStatus.SUCCEEDED
    result = None
    error_code = error_message = None
    try:
        analysis = await _analyse(runtime, job)
    except _RunStopped as exc:
        logger.info("job %s stopped: %s", job_id, exc.reason)
        return JobRun(JobStatus.CANCELLED) if exc.reason == "cancelled" else None
    except TimeoutError:
        status, error_code = JobStatus.FAILED, "time_limit_exceeded"
        error_message = (
            f"the job ran longer than MODCUS_JOB_TIME_LIMIT_S ({settings.job_time_limit_s:g} s); "
            "raise the limit or shorten the question"
        )
    except CompanyNotFoundError as exc:
        status, error_code, error_message = JobStatus.FAILED, "company_not_found", str(exc)
    except NoUsableKeyError as exc:
        if exc.retry_at is not None and job.deliveries < settings.job_max_attempts:
            async with runtime.session_factory() as session:
                deferred = await defer_job(
                    session,
                    job_id,
                    run_token,
                    next_attempt_at=exc.retry_at,
                    error_code="waiting_for_key",
                    error_message=str(exc),
                )
            if deferred:
                logger.info("job %s waits for a key until %s", job_id, exc.retry_at.isoformat())
                return JobRun(JobStatus.RETRYING, exc.retry_at)
            return None
        status, error_code = JobStatus.FAILED, "no_usable_key"
        error_message = str(exc)
        if exc.retry_at is not None:
            error_message = f"gave up after {job.deliveries} attempts: {error_message}"
    except ProviderError as exc:
        status, error_code, error_message = JobStatus.FAILED, exc.code, str(exc)
    except _OUTAGE_ERRORS as exc:
        # The job is not at fault: its run is given up, and the lease lets a later
        # delivery take the job over once the dependency is back.
        raise DependencyUnavailableError(
            f"job {job_id} stopped because a dependency is unavailable: {type(exc).__name__}"
        ) from exc
    except Exception:
        # The exception text may quote provider answers, so it goes to the log only.
        logger.exception("job %s raised an unexpected error", job_id)
        status, error_code = JobStatus.FAILED, "internal_error"
        error_message = (
            f"the worker hit an unexpected error; its log has the details for job {job_id}"
        )
    else:
        completion = analysis.completion
        result = {
            "answer": analysis.answer,
            "provider": completion.provider,
            "model": completion.model,
            "key_label": completion.key_label,
            "usage": {
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
            },
            "duration_ms": round((datetime.now(UTC) - started).total_seconds() * 1000),
        }

    async with runtime.session_factory() as session:
        stored = await finish_job(
            session,
            job_id,
            run_token,
            status,
            result=result,
            error_code=error_code,
            error_message=error_message,
        )
    if not stored:
        logger.warning("job %s left the running state while it ran; result dropped", job_id)
        return None
    if status is JobStatus.SUCCEEDED:
        logger.info("job %s succeeded", job_id)
    else:
        logger.warning("job %s failed: %s", job_id, error_code)
    return JobRun(status)
