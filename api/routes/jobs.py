"""GET /v1/jobs/{job_id}: a job's status, result or error, and its attempts."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from api.deps import ClientDep, SessionDep
from api.errors import ApiError
from api.schemas import AttemptPublic, JobError, JobPublic
from common.jobs import get_job
from common.models import Job

router = APIRouter(prefix="/v1", tags=["jobs"])


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


@router.get("/jobs/{job_id}", name="get_job")
async def read_job(job_id: str, client: ClientDep, session: SessionDep) -> JobPublic:
    """Return one of the client's jobs. Another client's job is reported as not found."""
    not_found = ApiError(
        status.HTTP_404_NOT_FOUND,
        "job_not_found",
        f"no job with id {job_id!r} exists for this client; "
        "use the job_id that POST /v1/query returned",
    )
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        raise not_found from None
    job = await get_job(session, parsed, client_id=client.id)
    if job is None:
        raise not_found
    return to_public(job)
