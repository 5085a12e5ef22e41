"""POST /v1/query (enqueue a job) and POST /v1/query/sync (answer inline)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Header, Response, status
from sqlalchemy import func, update

from api.deps import ClientDep, PublisherDep, RuntimeDep, SessionDep, SettingsDep
from api.errors import RETRY_AFTER_S, ApiError
from api.schemas import JobAccepted, QueryCreate, SyncAnswer, Usage
from common.analysis import AnalysisRequest, Level, Mode, run_analysis
from common.companies import company_exists, is_storable_text, is_valid_ticker, normalize_ticker
from common.errors import CompanyNotFoundError
from common.jobs import create_job, create_job_once
from common.models import Job, JobStatus
from common.queue import enqueue_analysis
from common.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["queries"])

# The size of the jobs.idempotency_key column.
MAX_IDEMPOTENCY_KEY_CHARS = 200


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "validation_error", message, field=field)


def to_analysis_request(body: QueryCreate, settings: Settings) -> AnalysisRequest:
    """Check a query body and convert it; raise a 422 ApiError that names the field and the fix."""
    query = body.query.strip()
    if not is_storable_text(query):
        raise _invalid(
            "query",
            "query contains a NUL character or an unpaired surrogate; send plain UTF-8 text",
        )
    if not query:
        raise _invalid("query", "query is empty; send the question as a non-empty string")
    if len(query) > settings.max_query_chars:
        raise _invalid(
            "query",
            f"query has {len(query)} characters, more than the maximum of "
            f"{settings.max_query_chars}; shorten the question",
        )

    modes = ", ".join(mode.value for mode in Mode)
    try:
        mode = Mode(body.mode)
    except ValueError:
        raise _invalid(
            "mode", f"mode {body.mode!r} is not supported; use one of: {modes}"
        ) from None

    levels = ", ".join(level.value for level in Level)
    try:
        level = Level(body.level)
    except ValueError:
        raise _invalid(
            "level", f"level {body.level!r} is not supported; use one of: {levels}"
        ) from None

    ticker = normalize_ticker(body.ticker) if body.ticker else None
    if ticker is not None and not is_valid_ticker(ticker):
        raise _invalid(
            "ticker",
            f"ticker {body.ticker!r} is not a ticker; use 1 to 16 letters, digits, '.' or '-'",
        )
    if mode is Mode.COMPANY_ANALYSIS and not ticker:
        raise _invalid(
            "ticker",
            'mode "company-analysis" needs a ticker; add "ticker" to the body, for example "GOTO"',
        )
    return AnalysisRequest(query=query, mode=mode, level=level, ticker=ticker)


def check_idempotency_key(value: str | None) -> str | None:
    """Check an Idempotency-Key header, raising a 422 ApiError that names the header and fix."""
    if value is None:
        return None
    if not value:
        raise _invalid(
            "Idempotency-Key",
            "the Idempotency-Key header is empty; send a unique string of 1 to "
            f"{MAX_IDEMPOTENCY_KEY_CHARS} characters, such as a UUID, or leave the header out",
        )
    if len(value) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise _invalid(
            "Idempotency-Key",
            f"the Idempotency-Key header has {len(value)} characters, more than the maximum "
            f"of {MAX_IDEMPOTENCY_KEY_CHARS}; use a shorter unique string, such as a UUID",
        )
    return value


def _accepted(job: Job) -> JobAccepted:
    return JobAccepted(job_id=job.id, status=job.status, status_url=f"/v1/jobs/{job.id}")


@router.post(
    "/query",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        status.HTTP_200_OK: {
            "model": JobAccepted,
            "description": "The job created earlier with the same Idempotency-Key.",
        },
    },
)
async def create_query(
    body: QueryCreate,
    client: ClientDep,
    session: SessionDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="A unique string per request, such as a UUID. A retry with the same "
            "key and body returns the first job instead of creating another.",
        ),
    ] = None,
) -> JobAccepted:
    """Enqueue an analysis job and return where to poll it.

    A repeated Idempotency-Key with the same body returns the key's job with 200; with
    another body it is rejected with 409.
    """
    request = to_analysis_request(body, settings)
    idempotency_key = check_idempotency_key(idempotency_key)
    if request.ticker and not await company_exists(session, request.ticker):
        raise CompanyNotFoundError(request.ticker)

    if idempotency_key is None:
        job = await create_job(session, client_id=client.id, request=request)
    else:
        job, created = await create_job_once(
            session, client_id=client.id, request=request, idempotency_key=idempotency_key
        )
        if not created:
            # Only the request that inserted the row publishes it, so the broker gets
            # one message per key however many duplicates arrive.
            logger.info("job %s returned again for a repeated Idempotency-Key", job.id)
            response.status_code = status.HTTP_200_OK
            return _accepted(job)

    try:
        await enqueue_analysis(publisher, job.id)
    except Exception:
        logger.exception("publishing job %s failed", job.id)
        await session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.QUEUED.value)
            .values(
                status=JobStatus.FAILED.value,
                error_code="enqueue_failed",
                error_message="the job could not be handed to the queue; submit it again",
                finished_at=func.now(),
                # Freed so that the client's retry with the same key creates a new job
                # instead of returning this failed one.
                idempotency_key=None,
            )
        )
        await session.commit()
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "queue_unavailable",
            "the job queue is unavailable, so the job was not accepted; try again shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None

    logger.info("job %s queued for client %s", job.id, client.id)
    return _accepted(job)


@router.post("/query/sync")
async def answer_query(
    body: QueryCreate, client: ClientDep, session: SessionDep, runtime: RuntimeDep
) -> SyncAnswer:
    """Answer inline by awaiting the rotator on this loop, within MODCUS_SYNC_TIMEOUT_S."""
    settings = runtime.settings
    request = to_analysis_request(body, settings)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.sync_timeout_s):
            analysis = await run_analysis(
                request, rotator=runtime.rotator, session_factory=runtime.session_factory
            )
    except TimeoutError:
        raise ApiError(
            status.HTTP_504_GATEWAY_TIMEOUT,
            "sync_timeout",
            f"no answer within {settings.sync_timeout_s:g} s; submit the question with "
            "POST /v1/query and poll GET /v1/jobs/{job_id} instead",
        ) from None

    completion = analysis.completion
    return SyncAnswer(
        answer=analysis.answer,
        provider=completion.provider,
        model=completion.model,
        key_label=completion.key_label,
        usage=Usage(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
        ),
        duration_ms=round((time.perf_counter() - started) * 1000),
    )
