"""A client's jobs: the list, one job's status, result or error, and cancellation."""

from __future__ import annotations

import base64
import logging
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import ClientDep, RuntimeDep, SessionDep
from api.errors import ApiError
from api.schemas import AttemptPublic, JobError, JobList, JobPublic, JobSummary
from common.jobs import cancel_job, get_job, list_jobs
from common.models import Job, JobStatus

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["jobs"])

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

# The separator of created_at and id inside a cursor. No ISO time or UUID contains it.
_CURSOR_SEPARATOR = "|"


def to_public(job: Job) -> JobPublic:
    error = None
    if job.error_code is not None:
        error = JobError(code=job.error_code, message=job.error_message or "")
    return JobPublic(
        job_id=job.id,
        status=job.status,
        query=job.query,
        mode=job.mode,
        ticker=job.ticker,
        level=job.level,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        next_attempt_at=job.next_attempt_at,
        result=job.result,
        error=error,
        attempts=[
            AttemptPublic(
                number=attempt.number,
                provider=attempt.provider,
                model=attempt.model,
                key_label=attempt.key_label,
                outcome=attempt.outcome,
                error=attempt.error_message,
                started_at=attempt.started_at,
                finished_at=attempt.finished_at,
            )
            for attempt in job.attempts
        ],
    )


def to_summary(job: Job) -> JobSummary:
    return JobSummary(
        job_id=job.id,
        status=job.status,
        query=job.query,
        mode=job.mode,
        ticker=job.ticker,
        level=job.level,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


def encode_cursor(job: Job) -> str:
    """Encode the position of a job in the list: URL-safe base64 of its created_at and id."""
    position = f"{job.created_at.isoformat()}{_CURSOR_SEPARATOR}{job.id}"
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Decode a cursor made by encode_cursor, raising a 422 ApiError for any other string."""
    invalid = ApiError(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        "invalid_cursor",
        "cursor is not one this API returned; pass next_cursor of the previous page "
        "unchanged, or leave cursor out to get the first page",
        field="cursor",
    )
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        position = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        created_text, separator, id_text = position.partition(_CURSOR_SEPARATOR)
        created_at = datetime.fromisoformat(created_text)
        job_id = uuid.UUID(id_text)
    except ValueError:
        # binascii.Error and UnicodeDecodeError are ValueErrors too.
        raise invalid from None
    # A time without an offset would be read in the database session's time zone.
    if not separator or created_at.tzinfo is None:
        raise invalid
    return created_at, job_id


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "validation_error", message, field=field)


def _job_not_found(job_id: str) -> ApiError:
    return ApiError(
        status.HTTP_404_NOT_FOUND,
        "job_not_found",
        f"no job with id {job_id!r} exists for this client; "
        "use the job_id that POST /v1/query returned",
    )


def _parse_job_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise _job_not_found(job_id) from None


@router.get("/jobs", name="list_jobs")
async def read_jobs(
    client: ClientDep,
    session: SessionDep,
    status_filter: Annotated[
        str | None,
        Query(
            alias="status",
            description=f"Only jobs in this status: one of {', '.join(JobStatus)}.",
        ),
    ] = None,
    limit: Annotated[
        int, Query(description=f"Jobs per page, 1 to {MAX_PAGE_SIZE}.")
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page; omit for the first.")
    ] = None,
) -> JobList:
    """List the client's jobs, newest first, a page at a time."""
    job_status = None
    if status_filter is not None:
        try:
            job_status = JobStatus(status_filter)
        except ValueError:
            raise _invalid(
                "status",
                f"status {status_filter!r} is not a job status; use one of: {', '.join(JobStatus)}",
            ) from None
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise _invalid("limit", f"limit is {limit}; use a number from 1 to {MAX_PAGE_SIZE}")
    after = decode_cursor(cursor) if cursor is not None else None

    # One row past the page shows whether another page follows.
    jobs = await list_jobs(
        session, client_id=client.id, status=job_status, limit=limit + 1, after=after
    )
    page = jobs[:limit]
    next_cursor = encode_cursor(page[-1]) if len(jobs) > limit else None
    return JobList(jobs=[to_summary(job) for job in page], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", name="get_job")
async def read_job(job_id: str, client: ClientDep, session: SessionDep) -> JobPublic:
    """Return one of the client's jobs. Another client's job is reported as not found."""
    job = await get_job(session, _parse_job_id(job_id), client_id=client.id)
    if job is None:
        raise _job_not_found(job_id)
    return to_public(job)


@router.post("/jobs/{job_id}/cancel", name="cancel_job")
async def cancel(
    job_id: str, client: ClientDep, session: SessionDep, runtime: RuntimeDep
) -> JobPublic:
    """Cancel one of the client's jobs that has not finished, and return it."""
    parsed = _parse_job_id(job_id)
    cancelled = await cancel_job(session, runtime.redis, parsed, client_id=client.id)

    job = await get_job(session, parsed, client_id=client.id)
    if job is None:
        raise _job_not_found(job_id)
    if cancelled is None:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            "job_finished",
            f"job {job_id} has already finished with status {job.status!r}, so it cannot be "
            "cancelled; only queued, running and retrying jobs can",
        )

    logger.info("job %s cancelled by client %s", job.id, client.id)
    return to_public(job)
