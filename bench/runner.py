"""One measurement: start a system's worker, warm it up, run C jobs in flight, read the counters."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from bench.driver import Driver, JobRow, Window
from bench.environment import (
    PROVIDER_MODEL,
    PROVIDER_SECRET,
    BenchUrls,
    ChildProcess,
    FakeStats,
    flush_redis,
    read_fake_stats,
)
from bench.procstat import (
    MachineCpu,
    cpu_seconds,
    cpu_times,
    memory,
    other_programs_cpu_s,
    other_programs_ticks,
    process_tree,
)
from bench.profiling import Profile, Sampler
from bench.stats import percentile
from bench.systems import Kind, System, create_publisher

logger = logging.getLogger(__name__)

# A backend publishes its statistics to pg_stat_database when it next goes idle, which for a
# new connection is at once. This pause covers connections opened in the last moments.
_STATS_SETTLE_S = 0.5
# A run may take this many times its ideal duration before it is given up.
_TIMEOUT_FACTOR = 10.0
_MIN_TIMEOUT_S = 60.0
# Time for a worker to import its code and connect, on top of the warm-up jobs.
_START_ALLOWANCE_S = 60.0
# PostgreSQL connections left free for the driver, the migrations and other clients.
_RESERVED_DB_CONNECTIONS = 10


@dataclass(frozen=True)
class BenchContext:
    """Settings and connections shared by every run: URLs, fake provider, driver, fixed settings."""

    urls: BenchUrls
    fake_base_url: str
    fake_pid: int
    driver: Driver
    latency_ms: int
    log_level: str
    arq_poll_delay_s: float
    db_pool_size: int
    max_db_connections: int

    def worker_environment(self, system: System, in_flight: int) -> dict[str, str]:
        env = self.urls.child_environment()
        env.update(
            BENCH_PROVIDER_BASE_URL=f"{self.fake_base_url}/v1",
            BENCH_PROVIDER_SECRET=PROVIDER_SECRET,
            BENCH_PROVIDER_MODEL=PROVIDER_MODEL,
            BENCH_LOG_LEVEL=self.log_level,
        )
        if system.kind is Kind.ARQ:
            env["BENCH_ARQ_MAX_JOBS"] = str(in_flight)
            env["BENCH_ARQ_POLL_DELAY_S"] = str(self.arq_poll_delay_s)
        return env


@dataclass(frozen=True)
class RunResult:
    """The figures of one system at one C. `skipped` gives the reason a run did not happen."""

    system: System
    in_flight: int
    jobs: int
    skipped: str | None = None
    finished: int = 0
    succeeded: int = 0
    timed_out: bool = False
    elapsed_s: float = 0.0
    throughput_per_s: float = 0.0
    efficiency: float = 0.0
    overhead_p50_ms: float | None = None
    overhead_p99_ms: float | None = None
    cpu_ms_per_job: float | None = None
    # The kernel's part of the worker CPU time: system calls for sockets, epoll and futexes.
    system_cpu_share: float | None = None
    processes: int = 0
    rss_total_mib: float = 0.0
    peak_rss_mib: float = 0.0
    db_sessions_window: int = 0
    db_sessions_life: int = 0
    db_transactions_window: int = 0
    http_connections_window: int = 0
    http_connections_life: int = 0
    jobs_life: int = 0
    machine_busy: float = 0.0
    # CPU of unrelated programs during the run, in cores. Only processes alive for the whole run
    # are counted, and PostgreSQL and Redis are left out because other users share them.
    other_programs_cores: float = 0.0
    fake_cpu_ms_per_job: float | None = None
    profile: Profile | None = None

    @property
    def slots(self) -> int:
        return self.system.slots(self.in_flight)

    def per_thousand_jobs(self, count: int) -> float:
        return count * 1000 / self.finished if self.finished else 0.0


def _overheads_ms(rows: list[JobRow], latency_ms: int) -> list[float]:
    """Return finished minus created minus the provider latency of each succeeded job."""
    overheads = []
    for row in rows:
        if row.status != "succeeded" or row.finished_at is None:
            continue
        total_ms = (row.finished_at - row.created_at).total_seconds() * 1000
        overheads.append(total_ms - latency_ms)
    return overheads


def _timeout_s(jobs: int, slots: int, latency_ms: int) -> float:
    ideal_s = jobs * latency_ms / 1000 / max(slots, 1)
    return max(_MIN_TIMEOUT_S, ideal_s * _TIMEOUT_FACTOR)


async def _fake_stats(context: BenchContext) -> FakeStats:
    return await asyncio.to_thread(read_fake_stats, context.fake_base_url)


def skip_reason(context: BenchContext, system: System, in_flight: int) -> str | None:
    """Say why `system` cannot run at this C on this PostgreSQL server, or return None."""
    needed = system.db_connections(in_flight, context.db_pool_size)
    available = context.max_db_connections - _RESERVED_DB_CONNECTIONS
    if needed > available:
        return (
            f"needs {needed} PostgreSQL connections at once, and max_connections is "
            f"{context.max_db_connections}"
        )
    return None


async def measure(
    context: BenchContext, system: System, in_flight: int, jobs: int, *, profile: bool = False
) -> RunResult:
    """Run `jobs` jobs on a new worker of `system` with `in_flight` of them outstanding."""
    reason = skip_reason(context, system, in_flight)
    if reason is not None:
        logger.warning("skipping %s at C=%d: %s", system.name, in_flight, reason)
        return RunResult(system, in_flight, jobs, skipped=reason)

    driver = context.driver
    slots = system.slots(in_flight)
    database_at_start = await driver.database_counters()
    fake_at_start = await _fake_stats(context)
    name = f"{system.name}-c{in_flight}" + ("-profile" if profile else "")
    worker = ChildProcess(
        name,
        system.worker_args(in_flight, context.log_level),
        context.worker_environment(system, in_flight),
    )
    publisher = await create_publisher(system, context.urls.redis_url)
    sampler: Sampler | None = None
    try:
        # The warm-up also waits for the worker to start: its jobs sit in the queue until then.
        warmup_jobs = max(2, slots)
        warmup_timeout_s = _START_ALLOWANCE_S + _timeout_s(warmup_jobs, slots, context.latency_ms)
        warmup = await driver.run(
            publisher, jobs=warmup_jobs, in_flight=min(in_flight, slots), timeout_s=warmup_timeout_s
        )
        worker.check_running()
        if warmup.timed_out:
            raise RuntimeError(f"{name} did not finish its warm-up; its log is {worker.log_path}")
        await asyncio.sleep(_STATS_SETTLE_S)

        pids = process_tree(worker.pid)
        cpu_before = cpu_times(pids)
        fake_cpu_before = cpu_seconds([context.fake_pid])
        machine_before = MachineCpu.read()
        own_pids = {*pids, context.fake_pid, os.getpid()}
        others_before = other_programs_ticks(own_pids)
        database_before = await driver.database_counters()
        fake_before = await _fake_stats(context)
        if profile:
            sampler = await asyncio.to_thread(Sampler, worker.pid, name)

        window: Window = await driver.run(
            publisher,
            jobs=jobs,
            in_flight=in_flight,
            timeout_s=_timeout_s(jobs, slots, context.latency_ms),
        )

        machine_after = MachineCpu.read()
        others_after = other_programs_ticks(own_pids)
        cpu_after = cpu_times(pids)
        fake_cpu_after = cpu_seconds([context.fake_pid])
        profile_result = await asyncio.to_thread(sampler.stop) if sampler is not None else None
        sampler = None
        await asyncio.sleep(_STATS_SETTLE_S)
        database_after = await driver.database_counters()
        fake_after = await _fake_stats(context)
        memories = [found for pid in pids if (found := memory(pid)) is not None]
        worker.check_running()
    finally:
        if sampler is not None:
            await asyncio.to_thread(sampler.stop)
        await publisher.aclose()
        await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(flush_redis, context.urls)

    worker_cpu = cpu_after - cpu_before
    rows = await driver.fetch_rows(window.job_ids)
    overheads = _overheads_ms(rows, context.latency_ms)
    finished = window.finished
    throughput = finished / window.elapsed_s if window.elapsed_s > 0 else 0.0
    ideal = in_flight / (context.latency_ms / 1000)
    return RunResult(
        system,
        in_flight,
        jobs,
        finished=finished,
        succeeded=sum(1 for row in rows if row.status == "succeeded"),
        timed_out=window.timed_out,
        elapsed_s=window.elapsed_s,
        throughput_per_s=throughput,
        efficiency=throughput / ideal,
        overhead_p50_ms=percentile(overheads, 50),
        overhead_p99_ms=percentile(overheads, 99),
        cpu_ms_per_job=worker_cpu.total_s * 1000 / finished if finished else None,
        system_cpu_share=worker_cpu.system_s / worker_cpu.total_s if worker_cpu.total_s else None,
        processes=len(pids),
        rss_total_mib=sum(item.rss_kib for item in memories) / 1024,
        peak_rss_mib=max((item.peak_rss_kib for item in memories), default=0) / 1024,
        db_sessions_window=database_after.sessions - database_before.sessions,
        db_sessions_life=database_after.sessions - database_at_start.sessions,
        db_transactions_window=database_after.transactions - database_before.transactions,
        http_connections_window=fake_after.connections_opened - fake_before.connections_opened,
        http_connections_life=fake_after.connections_opened - fake_at_start.connections_opened,
        jobs_life=warmup.finished + finished,
        machine_busy=machine_after.busy_fraction_since(machine_before),
        other_programs_cores=(
            other_programs_cpu_s(others_before, others_after) / window.elapsed_s
            if window.elapsed_s > 0
            else 0.0
        ),
        fake_cpu_ms_per_job=(
            (fake_cpu_after - fake_cpu_before) * 1000 / finished if finished else None
        ),
        profile=profile_result,
    )
