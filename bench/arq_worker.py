"""An arq worker that runs the peer job, as the async-native queue to compare Modcus with.

One process runs up to BENCH_ARQ_MAX_JOBS jobs at once on its event loop. The engine, the
httpx client and the LLM client are created once in the startup hook and closed at shutdown.
arq polls its Redis sorted set for new jobs every BENCH_ARQ_POLL_DELAY_S; arq 0.28's default of
0.5 s would add about 0.25 s to the mean pickup time, so the benchmark sets a shorter delay.

Run with `python -m bench.arq_worker`.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func
from sqlalchemy.ext.asyncio import async_sessionmaker

from bench.peer_job import create_http_client, create_llm, run_peer_job
from common.db import create_async_db_engine
from common.settings import get_settings

ARQ_JOB = "bench_arq_job"


async def _startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    ctx["engine"] = create_async_db_engine(settings)
    ctx["session_factory"] = async_sessionmaker(ctx["engine"], expire_on_commit=False)
    ctx["http_client"] = create_http_client(settings)
    ctx["llm"] = create_llm(settings, ctx["http_client"])


async def _shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http_client"].aclose()
    await ctx["engine"].dispose()


async def bench_arq_job(ctx: dict[str, Any], job_id: str) -> None:
    """Run job `job_id` with the resources of this worker's loop."""
    await run_peer_job(ctx["session_factory"], ctx["llm"], uuid.UUID(job_id))


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    worker = Worker(
        functions=[func(bench_arq_job, name=ARQ_JOB)],
        redis_settings=RedisSettings.from_dsn(get_settings().redis_url),
        on_startup=_startup,
        on_shutdown=_shutdown,
        max_jobs=int(os.environ["BENCH_ARQ_MAX_JOBS"]),
        poll_delay=float(os.environ["BENCH_ARQ_POLL_DELAY_S"]),
        # Results live in the job row; arq's own copy in Redis would only take memory.
        keep_result=0,
        max_tries=1,
    )
    worker.run()


if __name__ == "__main__":
    main()
