"""The closed-loop load driver: keeps C jobs in flight and reads their timestamps back.

Each job is a row inserted into `jobs` (as POST /v1/query stores it) and then published to the
system under test. PostgreSQL notifies the driver when a row gets its finished_at (a trigger
that the benchmark installs in its own database), and the driver then submits the next job.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg  # type: ignore[import-untyped]

from bench.environment import FINISHED_CHANNEL
from bench.systems import Publisher

logger = logging.getLogger(__name__)

# The request of every job: the one `make demo` sends.
JOB_QUERY = "What are the key financial highlights?"
JOB_MODE = "company-analysis"
JOB_TICKER = "GOTO"
JOB_LEVEL = "novice"

_INSERT_JOB = """
insert into jobs (id, client_id, status, query, mode, ticker, level)
values ($1, $2, 'queued', $3, $4, $5, $6)
"""
_SELECT_JOBS = """
select id, status, error_code, created_at, started_at, finished_at
from jobs where id = any($1::uuid[])
"""
_SELECT_DATABASE_STATS = """
select sessions, xact_commit + xact_rollback as transactions
from pg_stat_database where datname = current_database()
"""


@dataclass(frozen=True)
class Window:
    """The jobs of one closed-loop run and how long it took, from first insert to last end."""

    job_ids: list[uuid.UUID]
    finished: int
    elapsed_s: float
    timed_out: bool


@dataclass(frozen=True)
class DatabaseCounters:
    """Cumulative counters of the benchmark database from pg_stat_database."""

    sessions: int
    transactions: int


@dataclass(frozen=True)
class JobRow:
    status: str
    error_code: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class Driver:
    """Inserts and publishes jobs over one connection, and listens for their ends on another."""

    def __init__(
        self, connection: asyncpg.Connection, listener: asyncpg.Connection, client_id: int
    ) -> None:
        self._connection = connection
        self._listener = listener
        self._client_id = client_id
        self._finished: asyncio.Queue[str] = asyncio.Queue()

    @classmethod
    async def connect(cls, database_url: str, client_id: int) -> Driver:
        dsn = _asyncpg_dsn(database_url)
        connection = await asyncpg.connect(dsn)
        listener = await asyncpg.connect(dsn)
        driver = cls(connection, listener, client_id)
        await listener.add_listener(FINISHED_CHANNEL, driver._on_finished)
        return driver

    def _on_finished(
        self, connection: object, backend_pid: int, channel: str, payload: object
    ) -> None:
        self._finished.put_nowait(str(payload))

    async def aclose(self) -> None:
        await self._listener.close()
        await self._connection.close()

    async def run(
        self, publisher: Publisher, *, jobs: int, in_flight: int, timeout_s: float
    ) -> Window:
        """Run `jobs` jobs with `in_flight` of them outstanding at any time.

        Stops early when `timeout_s` passes, and the window then counts the jobs that finished.
        """
        pending: set[uuid.UUID] = set()
        job_ids: list[uuid.UUID] = []

        async def submit() -> None:
            job_id = uuid.uuid4()
            await self._connection.execute(
                _INSERT_JOB, job_id, self._client_id, JOB_QUERY, JOB_MODE, JOB_TICKER, JOB_LEVEL
            )
            job_ids.append(job_id)
            pending.add(job_id)
            await publisher.publish(job_id)

        started = time.monotonic()
        deadline = started + timeout_s
        for _ in range(min(in_flight, jobs)):
            await submit()

        finished = 0
        timed_out = False
        while finished < jobs:
            try:
                payload = await asyncio.wait_for(
                    self._finished.get(), max(deadline - time.monotonic(), 0.0)
                )
            except TimeoutError:
                timed_out = True
                logger.warning(
                    "run timed out after %.0f s: %d of %d jobs ended", timeout_s, finished, jobs
                )
                break
            job_id = uuid.UUID(payload)
            # Jobs of an earlier run that timed out may still end now; they are not counted.
            if job_id not in pending:
                continue
            pending.discard(job_id)
            finished += 1
            if len(job_ids) < jobs:
                await submit()
        return Window(job_ids, finished, time.monotonic() - started, timed_out)

    async def fetch_rows(self, job_ids: list[uuid.UUID]) -> list[JobRow]:
        rows = await self._connection.fetch(_SELECT_JOBS, job_ids)
        return [
            JobRow(
                status=row["status"],
                error_code=row["error_code"],
                created_at=row["created_at"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
            )
            for row in rows
        ]

    async def database_counters(self) -> DatabaseCounters:
        """Read the connections ever opened to the benchmark database and its transactions."""
        # Statistics are cached per transaction; each statement here is its own transaction,
        # and clearing the snapshot makes the read current even inside one.
        await self._connection.execute("select pg_stat_clear_snapshot()")
        row = await self._connection.fetchrow(_SELECT_DATABASE_STATS)
        assert row is not None
        return DatabaseCounters(
            sessions=int(row["sessions"]), transactions=int(row["transactions"])
        )

    async def server_version(self) -> str:
        version: str = await self._connection.fetchval("show server_version")
        return version

    async def delete_queued_jobs(self) -> int:
        """Delete jobs that no worker will run, such as those the API benchmark created."""
        status = await self._connection.execute("delete from jobs where status = 'queued'")
        return int(status.split()[-1])
