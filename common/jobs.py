"""Job rows: creation, state transitions as conditional updates, attempts, and execution."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from common.analysis import AnalysisRequest, Level, Mode, run_analysis
from common.errors import CompanyNotFoundError, NoUsableKeyError, ProviderError
from common.models import Job, JobAttempt, JobStatus
from common.rotator import Attempt
from common.runtime import Runtime

logger = logging.getLogger(__name__)

# States a worker may start a job from.
_STARTABLE = (JobStatus.QUEUED.value, JobStatus.RETRYING.value)


async def create_job(session: AsyncSession, *, client_id: int, request: AnalysisRequest) -> Job:
    """Insert a queued job and commit it."""
    job = Job(
        id=uuid.uuid4(),
        client_id=client_id,
        status=JobStatus.QUEUED.value,
        query=request.query,
        mode=request.mode.value,
        ticker=request.ticker,
        level=request.level.value,
    )
    session.add(job)
    await session.commit()
    return job


async def get_job(session: AsyncSession, job_id: uuid.UUID, *, client_id: int | None) -> Job | None:
    """Load a job with its attempts; with `client_id`, only if that client owns it."""
    query = select(Job).where(Job.id == job_id).options(selectinload(Job.attempts))
    if client_id is not None:
        query = query.where(Job.client_id == client_id)
    return await session.scalar(query.execution_options(populate_existing=True))


async def claim_job(session: AsyncSession, job_id: uuid.UUID) -> Job | None:
    """Move a queued or retrying job to running; None if it is in any other state.

    The update is conditional on the current state, so a redelivered message for a
    job that is running or finished does nothing.
    """
    job = await session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(_STARTABLE))
        .values(
            status=JobStatus.RUNNING.value,
            started_at=func.coalesce(Job.started_at, func.now()),
            next_attempt_at=None,
            deliveries=Job.deliveries + 1,
        )
        .returning(Job)
    )
    await session.commit()
    return job


async def finish_job(
    session: AsyncSession,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Move a running job to a terminal state; return False if it was not running."""
    finished = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(
            status=status.value,
            result=result,
            error_code=error_code,
            error_message=error_message,
            finished_at=func.now(),
        )
        .returning(Job.id)
    )
    await session.commit()
    return finished.first() is not None


async def defer_job(
    session: AsyncSession,
    job_id: uuid.UUID,
    *,
    next_attempt_at: datetime,
    error_code: str,
    error_message: str,
) -> bool:
    """Move a running job to retrying until `next_attempt_at`; False if it was not running."""
    deferred = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(
            status=JobStatus.RETRYING.value,
            next_attempt_at=next_attempt_at,
            error_code=error_code,
            error_message=error_message,
        )
        .returning(Job.id)
    )
    await session.commit()
    return deferred.first() is not None


async def record_attempt(session: AsyncSession, job_id: uuid.UUID, attempt: Attempt) -> None:
    """Append an attempt to the job, numbered after the ones already stored."""
    next_number = (
        select(func.coalesce(func.max(JobAttempt.number), 0) + 1)
        .where(JobAttempt.job_id == job_id)
        .scalar_subquery()
    )
    await session.execute(
        insert(JobAttempt).values(
            job_id=job_id,
            number=next_number,
            provider=attempt.provider,
            model=attempt.model,
            key_id=attempt.key_id,
            key_label=attempt.key_label,
            outcome=attempt.outcome,
            error_message=attempt.error_message,
            prompt_tokens=attempt.prompt_tokens,
            completion_tokens=attempt.completion_tokens,
            started_at=attempt.started_at,
            finished_at=attempt.finished_at,
        )
    )
    await session.commit()


def request_of(job: Job) -> AnalysisRequest:
    return AnalysisRequest(
        query=job.query, mode=Mode(job.mode), level=Level(job.level), ticker=job.ticker
    )


@dataclass(frozen=True)
class JobRun:
    """The end of one run of a job: a terminal state, or retrying at `retry_at`."""

    status: JobStatus
    retry_at: datetime | None = None


async def execute_job(runtime: Runtime, job_id: uuid.UUID) -> JobRun | None:
    """Run a job once; return how the run ended, or None if the job was not startable.

    When no key can serve now but one frees up later, the job becomes retrying and
    the caller schedules it again at `retry_at`, up to MODCUS_JOB_MAX_ATTEMPTS runs.
    """
    async with runtime.session_factory() as session:
        job = await claim_job(session, job_id)
    if job is None:
        logger.info("job %s is not queued or retrying; skipping this delivery", job_id)
        return None
    logger.info("job %s started (delivery %d)", job_id, job.deliveries)

    async def on_attempt(attempt: Attempt) -> None:
        async with runtime.session_factory() as session:
            await record_attempt(session, job_id, attempt)

    started = datetime.now(UTC)
    status = JobStatus.SUCCEEDED
    result = None
    error_code = error_message = None
    try:
        analysis = await run_analysis(
            request_of(job),
            rotator=runtime.rotator,
            session_factory=runtime.session_factory,
            on_attempt=on_attempt,
        )
    except CompanyNotFoundError as exc:
        status, error_code, error_message = JobStatus.FAILED, "company_not_found", str(exc)
    except NoUsableKeyError as exc:
        max_attempts = runtime.settings.job_max_attempts
        if exc.retry_at is not None and job.deliveries < max_attempts:
            async with runtime.session_factory() as session:
                deferred = await defer_job(
                    session,
                    job_id,
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
