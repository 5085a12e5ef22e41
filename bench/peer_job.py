"""The job that the naive Celery pattern and the arq worker run, built from Modcus's own parts.

It does the work a Modcus job does for its result. It loads the job row and the company's
documents and builds the same prompt. It calls the LLM through the same llama-index
OpenAI-compatible class and httpx transport, then writes the result into the job row. It leaves
out what Modcus adds around that: the claim under a lease, the key rotation with its Redis
cooldown check and usage counters, the attempt record and the cancellation watch.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import httpx
from llama_index.core.llms import LLM
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.analysis import Mode, build_messages
from common.companies import load_company_context
from common.execution import request_of
from common.keystore import KeyRecord
from common.models import Job, JobStatus, KeyStatus, Provider
from common.providers import build_llm
from common.settings import Settings

# The same limits as the HTTP client of a Modcus worker process (common.runtime).
HTTP_MAX_CONNECTIONS = 200


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """Create the httpx client for LLM calls. Call it on the loop that will use it."""
    return httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=HTTP_MAX_CONNECTIONS,
            max_keepalive_connections=HTTP_MAX_CONNECTIONS,
        ),
        timeout=httpx.Timeout(settings.llm_timeout_s),
    )


def provider_key() -> KeyRecord:
    """Describe the fake provider's key from BENCH_PROVIDER_BASE_URL and BENCH_PROVIDER_SECRET.

    The peers take the key from the environment; Modcus loads and decrypts it from PostgreSQL.
    """
    return KeyRecord(
        id=0,
        provider=Provider.OPENAI_COMPATIBLE,
        label="bench",
        secret=os.environ["BENCH_PROVIDER_SECRET"],
        model=os.environ["BENCH_PROVIDER_MODEL"],
        base_url=os.environ["BENCH_PROVIDER_BASE_URL"],
        project=None,
        priority=0,
        status=KeyStatus.ACTIVE,
        cooldown_until=None,
        last_used_at=None,
    )


def create_llm(settings: Settings, http_client: httpx.AsyncClient) -> LLM:
    return build_llm(provider_key(), http_client=http_client, timeout_s=settings.llm_timeout_s)


async def run_peer_job(
    session_factory: async_sessionmaker[AsyncSession], llm: LLM, job_id: uuid.UUID
) -> None:
    """Run job `job_id` and store the LLM's reply in its row, which marks it succeeded."""
    started_at = datetime.now(UTC)
    async with session_factory() as session:
        job = await session.get(Job, job_id)
        if job is None:
            raise LookupError(f"job {job_id} does not exist in the benchmark database")
        request = request_of(job)
        company = None
        if request.mode is Mode.COMPANY_ANALYSIS and request.ticker:
            company = await load_company_context(session, request.ticker)

    response = await llm.achat(build_messages(request, company))

    result = {"answer": response.message.content or "", "model": llm.metadata.model_name}
    async with session_factory() as session:
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.SUCCEEDED.value,
                result=result,
                started_at=started_at,
                finished_at=func.now(),
            )
        )
        await session.commit()
