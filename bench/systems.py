"""The systems under test: how each starts its worker and how a job is published to it."""

from __future__ import annotations

import asyncio
import enum
import sys
import uuid
from dataclasses import dataclass
from typing import Protocol

from arq.connections import ArqRedis, RedisSettings, create_pool
from celery import Celery

from bench.arq_worker import ARQ_JOB
from common.queue import create_celery_app, enqueue_analysis
from common.settings import get_settings


class Kind(enum.StrEnum):
    MODCUS = "modcus"
    NAIVE = "naive"
    ARQ = "arq"


@dataclass(frozen=True)
class System:
    """One way of running the job, with a fixed process layout.

    `processes` is the prefork process count. Without it, one process runs up to C jobs at
    once: C pool threads for Celery, max_jobs = C for arq.
    """

    name: str
    title: str
    kind: Kind
    processes: int | None = None

    def slots(self, in_flight: int) -> int:
        """Return how many jobs the worker runs at once when C jobs are in flight."""
        return self.processes if self.processes is not None else in_flight

    def db_connections(self, in_flight: int, pool_size: int) -> int:
        """Return the maximum number of PostgreSQL connections the worker uses at once.

        A Modcus or arq process keeps one pool of `pool_size` connections plus as many
        overflow connections (common.db). The naive pattern uses one per running job.
        """
        if self.kind is Kind.NAIVE:
            return self.slots(in_flight)
        return (self.processes or 1) * 2 * pool_size

    def worker_args(self, in_flight: int, log_level: str) -> list[str]:
        """Return the command line of the worker for C jobs in flight."""
        celery_options = [
            "--loglevel",
            log_level,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname",
            f"bench-{self.name}@%h",
        ]
        if self.kind is Kind.ARQ:
            return [sys.executable, "-m", "bench.arq_worker"]
        if self.kind is Kind.NAIVE:
            celery = [sys.executable, "-m", "celery", "-A", "bench.naive", "worker"]
            pool = ["--pool", "threads", "--concurrency", str(in_flight), "-Q", "bench-naive"]
            return [*celery, *pool, *celery_options]
        celery = [sys.executable, "-m", "celery", "-A", "worker", "worker"]
        if self.processes is not None:
            pool = ["--pool", "prefork", "--concurrency", str(self.processes)]
        else:
            pool = ["--pool", "threads", "--concurrency", str(in_flight)]
        return [*celery, *pool, *celery_options]


MODCUS_THREADS = System("modcus-threads", "Modcus, threads pool, 1 process", Kind.MODCUS)
MODCUS_PREFORK_1 = System("modcus-prefork-1", "Modcus, prefork, 1 process", Kind.MODCUS, 1)
MODCUS_PREFORK_2 = System("modcus-prefork-2", "Modcus, prefork, 2 processes", Kind.MODCUS, 2)
NAIVE = System("naive", "naive asyncio.run per job, threads pool, 1 process", Kind.NAIVE)
ARQ = System("arq", "arq, 1 process", Kind.ARQ)

SYSTEMS = (MODCUS_THREADS, MODCUS_PREFORK_1, MODCUS_PREFORK_2, NAIVE, ARQ)


class Publisher(Protocol):
    """Hands a job id, whose row is already stored, to a system's queue."""

    async def publish(self, job_id: uuid.UUID) -> None: ...

    async def aclose(self) -> None: ...


class ModcusPublisher:
    """Publishes through common.queue.enqueue_analysis, as POST /v1/query does."""

    def __init__(self) -> None:
        self._app: Celery = create_celery_app(get_settings())

    async def publish(self, job_id: uuid.UUID) -> None:
        await enqueue_analysis(self._app, job_id)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._app.close)


class NaivePublisher:
    """Publishes to the naive queue; kombu's publish blocks, so it runs in a thread."""

    def __init__(self) -> None:
        # bench.naive reads the settings when it is imported, so it is imported only once
        # the benchmark has pointed them at its own database.
        from bench.naive import create_naive_app

        self._app = create_naive_app()

    async def publish(self, job_id: uuid.UUID) -> None:
        from bench.naive import NAIVE_QUEUE, NAIVE_TASK

        await asyncio.to_thread(
            self._app.send_task,
            NAIVE_TASK,
            args=[str(job_id)],
            queue=NAIVE_QUEUE,
            ignore_result=True,
        )

    async def aclose(self) -> None:
        await asyncio.to_thread(self._app.close)


class ArqPublisher:
    """Enqueues on arq's Redis sorted set."""

    def __init__(self, pool: ArqRedis) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, redis_url: str) -> ArqPublisher:
        return cls(await create_pool(RedisSettings.from_dsn(redis_url)))

    async def publish(self, job_id: uuid.UUID) -> None:
        await self._pool.enqueue_job(ARQ_JOB, str(job_id))

    async def aclose(self) -> None:
        await self._pool.aclose()


async def create_publisher(system: System, redis_url: str) -> Publisher:
    """Create a new publisher for `system`; each run gets its own after Redis is flushed."""
    if system.kind is Kind.ARQ:
        return await ArqPublisher.connect(redis_url)
    if system.kind is Kind.NAIVE:
        return NaivePublisher()
    return ModcusPublisher()
