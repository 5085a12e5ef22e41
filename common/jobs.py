"""Job rows: creation, state transitions as conditional updates, attempts, cancellation."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import and_, case, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.sql.elements import ColumnElement

from common.analysis import AnalysisRequest
from common.errors import ModcusError
from common.models import Job, JobAttempt, JobStatus
from common.rotator import Attempt

logger = logging.getLogger(__name__)

# States a worker may start a job from.
_STARTABLE = (JobStatus.QUEUED.value, JobStatus.RETRYING.value)
# States a client may cancel a job in.
_CANCELLABLE = (JobStatus.QUEUED.value, JobStatus.RETRYING.value, JobStatus.RUNNING.value)


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


async def claim_job(
    session: AsyncSession, job_id: uuid.UUID, *, lease_s: float = 60.0
) -> Job | None:
    """Start a run of a job: move it to running under a new run token and lease.

    Returns None unless the job is queued or retrying, or running under a lease
    that expired because its worker stopped. The update is conditional on those
    states, so a redelivered message for a job that another worker holds, or that
    has finished, starts nothing.
    """
    was_running = Job.status == JobStatus.RUNNING.value
    job = await session.scalar(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status.in_(_STARTABLE),
                and_(was_running, Job.lease_until < func.now()),
            ),
        )
        .values(
            status=JobStatus.RUNNING.value,
            run_token=uuid.uuid4(),
            lease_until=func.now() + timedelta(seconds=lease_s),
            started_at=func.coalesce(Job.started_at, func.now()),
            next_attempt_at=None,
            deliveries=Job.deliveries + 1,
            # PostgreSQL evaluates SET expressions against the row before the update.
            lost_runs=case((was_running, Job.lost_runs + 1), else_=Job.lost_runs),
        )
        .returning(Job)
    )
    await session.commit()
    return job


def _held_by_run(job_id: uuid.UUID, run_token: uuid.UUID) -> tuple[ColumnElement[bool], ...]:
    """Return the conditions under which the run with `run_token` still owns the job."""
    return (
        Job.id == job_id,
        Job.status == JobStatus.RUNNING.value,
        Job.run_token == run_token,
    )


async def renew_lease(
    session: AsyncSession, job_id: uuid.UUID, run_token: uuid.UUID, *, lease_s: float
) -> bool:
    """Extend the lease of a run; False if the run no longer holds the job."""
    renewed = await session.execute(
        update(Job)
        .where(*_held_by_run(job_id, run_token))
        .values(lease_until=func.now() + timedelta(seconds=lease_s))
        .returning(Job.id)
    )
    await session.commit()
    return renewed.first() is not None


async def finish_job(
    session: AsyncSession,
    job_id: uuid.UUID,
    run_token: uuid.UUID,
    status: JobStatus,
    *,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """End a run in a terminal state; False if the run no longer held the job."""
    finished = await session.execute(
        update(Job)
        .where(*_held_by_run(job_id, run_token))
        .values(
            status=status.value,
            result=result,
            error_code=error_code,
            error_message=error_message,
            finished_at=func.now(),
            lease_until=None,
        )
        .returning(Job.id)
    )
    await session.commit()
    return finished.first() is not None


async def defer_job(
    session: AsyncSession,
    job_id: uuid.UUID,
    run_token: uuid.UUID,
    *,
    next_attempt_at: datetime,
    error_code: str,
    error_message: str,
) -> bool:
    """End a run with the job retrying at `next_attempt_at`; False if the run lost the job."""
    deferred = await session.execute(
        update(Job)
        .where(*_held_by_run(job_id, run_token))
        .values(
            status=JobStatus.RETRYING.value,
            next_attempt_at=next_attempt_at,
            error_code=error_code,
            error_message=error_message,
            lease_until=None,
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


def cancel_redis_key(job_id: uuid.UUID) -> str:
    """Return the Redis key whose presence makes the worker running the job stop it."""
    return f"modcus:cancel:{job_id}"


# How long a cancellation flag outlives the request; far longer than any job.
_CANCEL_FLAG_TTL_S = 24 * 3600


async def cancel_job(
    session: AsyncSession, redis: Redis, job_id: uuid.UUID, *, client_id: int
) -> Job | None:
    """Cancel a job of `client_id` that has not finished; None if it was not cancellable.

    A queued or retrying job never starts afterwards, because workers only claim jobs
    in those states. A running job is marked cancelled at once, and its worker stops
    it at the next await after it sees the Redis flag; its result, if any, is dropped
    because the worker only stores results of running jobs.
    """
    job = await session.scalar(
        update(Job)
        .where(
            Job.id == job_id,
            Job.client_id == client_id,
            Job.status.in_(_CANCELLABLE),
        )
        .values(
            status=JobStatus.CANCELLED.value,
            finished_at=func.now(),
            next_attempt_at=None,
            lease_until=None,
            error_code="cancelled",
            error_message="the job was cancelled at the client's request",
        )
        .returning(Job)
    )
    await session.commit()
    if job is not None:
        await redis.set(cancel_redis_key(job_id), "1", ex=_CANCEL_FLAG_TTL_S)
    return job


class IdempotencyKeyReusedError(ModcusError):
    """Raised when an Idempotency-Key comes back with a request different from its first one."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(
            f"this Idempotency-Key was already used for a different request (job {job_id}); "
            "use a new key for a different request"
        )
        self.job_id = job_id


def request_fingerprint(request: AnalysisRequest) -> str:
    """Hash a normalized request: SHA-256, in hex, of its canonical JSON."""
    canonical = json.dumps(
        {
            "query": request.query,
            "mode": request.mode.value,
            "ticker": request.ticker,
            "level": request.level.value,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# Rounds of insert-then-select in create_job_once. A second round is needed only when
# the conflicting row lost its key between the two statements.
_IDEMPOTENT_INSERT_ROUNDS = 3


async def create_job_once(
    session: AsyncSession, *, client_id: int, request: AnalysisRequest, idempotency_key: str
) -> tuple[Job, bool]:
    """Insert a queued job unless the client already sent `idempotency_key`, and commit.

    Returns the job and whether this call created it. Of concurrent calls with one key,
    exactly one inserts: PostgreSQL makes the others wait on the unique index until the
    first commits, then skips their rows. Raises IdempotencyKeyReusedError if the job
    stored under the key was created from a different request.
    """
    fingerprint = request_fingerprint(request)
    insert_job = (
        pg_insert(Job)
        .values(
            id=uuid.uuid4(),
            client_id=client_id,
            status=JobStatus.QUEUED.value,
            query=request.query,
            mode=request.mode.value,
            ticker=request.ticker,
            level=request.level.value,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
        )
        .on_conflict_do_nothing(
            index_elements=[Job.client_id, Job.idempotency_key],
            index_where=Job.idempotency_key.is_not(None),
        )
        .returning(Job)
    )
    find_existing = select(Job).where(
        Job.client_id == client_id, Job.idempotency_key == idempotency_key
    )

    for _ in range(_IDEMPOTENT_INSERT_ROUNDS):
        created = await session.scalar(insert_job)
        if created is not None:
            await session.commit()
            return created, True

        # In READ COMMITTED each statement reads the rows committed before it started,
        # so this finds the row whose insert made ours a no-op.
        existing = await session.scalar(find_existing.execution_options(populate_existing=True))
        await session.commit()
        if existing is None:
            continue
        if existing.request_fingerprint != fingerprint:
            raise IdempotencyKeyReusedError(existing.id)
        return existing, False

    raise RuntimeError(
        f"no job could be stored or found for Idempotency-Key of client {client_id} "
        f"after {_IDEMPOTENT_INSERT_ROUNDS} rounds"
    )


async def list_jobs(
    session: AsyncSession,
    *,
    client_id: int,
    status: JobStatus | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[Job]:
    """Load up to `limit` jobs of a client, newest first, without their attempts.

    `after` is the (created_at, id) of the last job of the previous page; the page
    starts with the job that sorts right after it. Ties on created_at sort by id.
    """
    query = (
        select(Job)
        .where(Job.client_id == client_id)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(Job.status == status.value)
    if after is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(*after))
    return list(await session.scalars(query))
