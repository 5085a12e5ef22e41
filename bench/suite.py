"""The whole benchmark: the plan of runs, the shared environment, and the API measurement."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import httpx
import redis
from sqlalchemy.ext.asyncio import async_sessionmaker

from bench.driver import JOB_LEVEL, JOB_MODE, JOB_QUERY, JOB_TICKER, Driver
from bench.environment import (
    PROJECT_DIR,
    PROVIDER_MODEL,
    PROVIDER_SECRET,
    BenchError,
    BenchUrls,
    ChildProcess,
    fake_provider_args,
    flush_redis,
    max_connections,
    prepare_database,
    recreate_database,
    wait_for_http,
    wait_for_log,
)
from bench.procstat import MachineCpu, cpu_seconds, process_tree
from bench.runner import BenchContext, RunResult, measure
from bench.stats import percentile
from bench.systems import (
    ARQ,
    MODCUS_PREFORK_1,
    MODCUS_PREFORK_2,
    MODCUS_THREADS,
    NAIVE,
    System,
)
from common.analysis import AnalysisRequest, Level, Mode, build_messages
from common.companies import load_company_context
from common.db import create_async_db_engine
from common.settings import get_settings

logger = logging.getLogger(__name__)

# Packages whose versions the report lists.
VERSIONED_PACKAGES = (
    "celery",
    "kombu",
    "openai",
    "httpx",
    "sqlalchemy",
    "asyncpg",
    "arq",
    "redis",
    "asgiref",
    "llama-index-core",
    "llama-index-llms-openai-like",
    "fastapi",
    "uvicorn",
)
_IDLE_SAMPLE_S = 2.0
# Time for PostgreSQL to publish the statistics of connections opened just before a reading.
_STATS_SETTLE_S = 0.5
_FLOOR_REQUESTS = 20


@dataclass(frozen=True)
class PlannedRun:
    system: System
    in_flight: int
    jobs: int


@dataclass(frozen=True)
class Plan:
    """The runs of one benchmark (system, C, jobs), its profiles and its API load."""

    runs: list[PlannedRun]
    profiles: list[PlannedRun]
    api_requests: int
    api_warmup_requests: int
    api_concurrency: int


def _compared_runs(jobs_by_in_flight: dict[int, int]) -> list[PlannedRun]:
    """Plan the systems that share one process, grouped by C so that each group runs together."""
    return [
        PlannedRun(system, in_flight, jobs)
        for in_flight, jobs in jobs_by_in_flight.items()
        for system in (MODCUS_THREADS, NAIVE, ARQ)
    ]


def full_plan() -> Plan:
    """Plan `make bench`: about 7 minutes on 2 cores."""
    runs = _compared_runs({1: 30, 8: 160, 32: 320, 64: 512, 128: 768})
    # Prefork runs one job per process, so beyond its process count C only queues jobs. It is
    # measured at its own count, and at C = 8 to show its ceiling.
    runs[3:3] = [
        PlannedRun(MODCUS_PREFORK_1, 1, 30),
        PlannedRun(MODCUS_PREFORK_2, 2, 30),
        PlannedRun(MODCUS_PREFORK_1, 8, 16),
        PlannedRun(MODCUS_PREFORK_2, 8, 24),
    ]
    profiles = [PlannedRun(MODCUS_THREADS, 64, 512), PlannedRun(ARQ, 64, 512)]
    return Plan(runs, profiles, api_requests=2000, api_warmup_requests=200, api_concurrency=32)


def quick_plan() -> Plan:
    """Plan `python -m bench --quick`: every system once or twice, about 2.5 minutes."""
    runs = _compared_runs({1: 5, 8: 24, 64: 128})
    runs[3:3] = [PlannedRun(MODCUS_PREFORK_1, 1, 5), PlannedRun(MODCUS_PREFORK_2, 2, 6)]
    profiles = [PlannedRun(MODCUS_THREADS, 64, 128)]
    return Plan(runs, profiles, api_requests=300, api_warmup_requests=50, api_concurrency=32)


@dataclass(frozen=True)
class Options:
    plan: Plan
    quick: bool
    latency_ms: int
    log_level: str
    arq_poll_delay_s: float
    profile: bool
    api: bool
    command: str


@dataclass(frozen=True)
class IdleCheck:
    """Other load on the machine: pytest processes, and the CPU busy fraction over 2 s."""

    pytest_processes: list[str]
    busy_fraction: float
    load_average: str


@dataclass(frozen=True)
class ProviderFloor:
    """The fake provider's own time on top of its fixed latency, for one request at a time."""

    round_trip_p50_ms: float
    round_trip_p99_ms: float
    cpu_ms_per_request: float


@dataclass(frozen=True)
class ApiResult:
    requests: int
    concurrency: int
    requests_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    statuses: dict[str, int]
    cpu_ms_per_request: float
    machine_busy: float
    # PostgreSQL connections the API opened during the measured requests.
    db_sessions: int


@dataclass
class SuiteResult:
    options: Options
    started_at: datetime
    finished_at: datetime | None = None
    idle_before: IdleCheck | None = None
    idle_after: IdleCheck | None = None
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    floor: ProviderFloor | None = None
    runs: list[RunResult] = field(default_factory=list)
    profiles: list[RunResult] = field(default_factory=list)
    api: ApiResult | None = None
    documents: int = 0


def check_idle() -> IdleCheck:
    """List running pytest processes and measure how busy the CPUs are for 2 s."""
    pgrep = ["pgrep", "-af", "pytest"]
    found = subprocess.run(pgrep, capture_output=True, text=True, check=False).stdout.splitlines()
    own = {str(os.getpid())}
    pytest_processes = [line for line in found if line.split(" ", 1)[0] not in own]
    before = MachineCpu.read()
    time.sleep(_IDLE_SAMPLE_S)
    busy = MachineCpu.read().busy_fraction_since(before)
    load_average = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return IdleCheck(pytest_processes, busy, load_average)


def describe_machine() -> dict[str, str]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    return {
        "cores (nproc)": str(os.cpu_count()),
        "CPU": cpu_model,
        "memory": f"{memory_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
    }


def describe_versions(urls: BenchUrls) -> dict[str, str]:
    versions = {"Python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    client = redis.Redis.from_url(urls.redis_url)
    try:
        versions["Redis server"] = str(client.info("server")["redis_version"])
    finally:
        client.close()
    return versions


async def measure_provider_floor(
    fake_base_url: str, fake_pid: int, latency_ms: int
) -> ProviderFloor:
    """Time single requests with a job's prompt straight to the fake provider through httpx."""
    engine = create_async_db_engine(get_settings())
    try:
        async with async_sessionmaker(engine)() as session:
            company = await load_company_context(session, JOB_TICKER)
    finally:
        await engine.dispose()
    request = AnalysisRequest(
        query=JOB_QUERY, mode=Mode(JOB_MODE), level=Level(JOB_LEVEL), ticker=JOB_TICKER
    )
    messages = [
        {"role": message.role.value, "content": message.content}
        for message in build_messages(request, company)
    ]
    body = {"model": PROVIDER_MODEL, "messages": messages}
    headers = {"Authorization": f"Bearer {PROVIDER_SECRET}"}

    round_trips_ms: list[float] = []
    async with httpx.AsyncClient(base_url=fake_base_url, headers=headers) as client:
        await client.post("/v1/chat/completions", json=body)
        cpu_before = cpu_seconds([fake_pid])
        for _ in range(_FLOOR_REQUESTS):
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            round_trips_ms.append((time.perf_counter() - started) * 1000)
        cpu_ms = (cpu_seconds([fake_pid]) - cpu_before) * 1000
    p50 = percentile(round_trips_ms, 50)
    p99 = percentile(round_trips_ms, 99)
    assert p50 is not None
    assert p99 is not None
    return ProviderFloor(p50 - latency_ms, p99 - latency_ms, cpu_ms / _FLOOR_REQUESTS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_load(url: str, client_key: str, requests: int, concurrency: int) -> dict[str, object]:
    args = [
        sys.executable,
        "-m",
        "bench.api_load",
        "--url",
        url,
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
    ]
    env = dict(os.environ, BENCH_CLIENT_KEY=client_key)
    completed = subprocess.run(
        args, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    if completed.returncode != 0:
        raise BenchError(
            f"the API load generator failed with status {completed.returncode}:\n"
            f"{completed.stderr[-2000:]}"
        )
    result: dict[str, object] = json.loads(completed.stdout)
    return result


async def measure_api(urls: BenchUrls, driver: Driver, client_key: str, plan: Plan) -> ApiResult:
    """Measure POST /v1/query on one uvicorn process while no worker runs."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    uvicorn = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1"]
    args = [*uvicorn, "--port", str(port), "--log-level", "warning"]
    api = ChildProcess("api", args, urls.child_environment())
    try:
        await asyncio.to_thread(wait_for_http, api, f"{url}/healthz")
        concurrency = plan.api_concurrency
        await asyncio.to_thread(_run_load, url, client_key, plan.api_warmup_requests, concurrency)
        pids = process_tree(api.pid)
        cpu_before = cpu_seconds(pids)
        machine_before = MachineCpu.read()
        database_before = await driver.database_counters()
        result = await asyncio.to_thread(_run_load, url, client_key, plan.api_requests, concurrency)
        machine_busy = MachineCpu.read().busy_fraction_since(machine_before)
        cpu_ms = (cpu_seconds(pids) - cpu_before) * 1000
        await asyncio.sleep(_STATS_SETTLE_S)
        database_after = await driver.database_counters()
        api.check_running()
    finally:
        await asyncio.to_thread(api.stop)
        await asyncio.to_thread(flush_redis, urls)
        deleted = await driver.delete_queued_jobs()
        logger.info("deleted %d jobs that the API benchmark queued", deleted)

    statuses = result["statuses"]
    assert isinstance(statuses, dict)
    return ApiResult(
        requests=plan.api_requests,
        concurrency=concurrency,
        requests_per_s=float(str(result["requests_per_s"])),
        latency_p50_ms=float(str(result["latency_p50_ms"])),
        latency_p99_ms=float(str(result["latency_p99_ms"])),
        statuses={str(code): int(count) for code, count in statuses.items()},
        cpu_ms_per_request=cpu_ms / plan.api_requests,
        machine_busy=machine_busy,
        db_sessions=database_after.sessions - database_before.sessions,
    )


async def _measure_logged(
    context: BenchContext, run: PlannedRun, *, profile: bool = False
) -> RunResult:
    label = f"{run.system.name} C={run.in_flight} jobs={run.jobs}" + (
        " (profiled)" if profile else ""
    )
    logger.info("running %s", label)
    started = time.monotonic()
    try:
        result = await measure(context, run.system, run.in_flight, run.jobs, profile=profile)
    except (BenchError, RuntimeError, OSError) as exc:
        logger.error("%s failed: %s", label, exc)
        return RunResult(run.system, run.in_flight, run.jobs, skipped=f"failed: {exc}")
    if result.skipped is None:
        logger.info(
            "%s: %.1f jobs/s (%.2f of ideal), overhead p50 %.1f ms, CPU %.1f ms/job, %.0f s",
            label,
            result.throughput_per_s,
            result.efficiency,
            result.overhead_p50_ms or 0.0,
            result.cpu_ms_per_job or 0.0,
            time.monotonic() - started,
        )
    return result


async def run_suite(options: Options) -> SuiteResult:
    """Set up the environment, run the plan and return every figure."""
    suite = SuiteResult(options=options, started_at=datetime.now(UTC))
    urls = BenchUrls.from_environment()
    urls.apply_to_this_process()
    settings = get_settings()
    suite.idle_before = await asyncio.to_thread(check_idle)
    suite.machine = describe_machine()
    await asyncio.to_thread(recreate_database, urls)
    await asyncio.to_thread(flush_redis, urls)
    suite.versions = describe_versions(urls)

    async with AsyncExitStack() as stack:
        fake = ChildProcess("fake-provider", fake_provider_args(options.latency_ms), None)
        stack.callback(fake.stop)
        match = await asyncio.to_thread(
            wait_for_log, fake, r"listening on (http://127\.0\.0\.1:\d+)"
        )
        fake_base_url = match.group(1)
        seeded = await asyncio.to_thread(prepare_database, urls, fake_base_url)
        suite.documents = seeded.documents
        driver = await Driver.connect(urls.database_url, seeded.client_id)
        stack.push_async_callback(driver.aclose)
        suite.versions["PostgreSQL server"] = await driver.server_version()

        suite.floor = await measure_provider_floor(fake_base_url, fake.pid, options.latency_ms)
        context = BenchContext(
            urls=urls,
            fake_base_url=fake_base_url,
            fake_pid=fake.pid,
            driver=driver,
            latency_ms=options.latency_ms,
            log_level=options.log_level,
            arq_poll_delay_s=options.arq_poll_delay_s,
            db_pool_size=settings.db_pool_size,
            max_db_connections=await asyncio.to_thread(max_connections, urls),
        )
        suite.settings = {
            "MODCUS_DB_POOL_SIZE": str(settings.db_pool_size),
            "PostgreSQL max_connections": str(context.max_db_connections),
            "arq poll_delay": f"{options.arq_poll_delay_s:g} s",
            "worker log level": options.log_level,
        }

        for run in options.plan.runs:
            suite.runs.append(await _measure_logged(context, run))
        if options.profile:
            for run in options.plan.profiles:
                suite.profiles.append(await _measure_logged(context, run, profile=True))
        if options.api:
            logger.info("measuring POST /v1/query")
            suite.api = await measure_api(urls, driver, seeded.client_key, options.plan)

    suite.idle_after = await asyncio.to_thread(check_idle)
    suite.finished_at = datetime.now(UTC)
    return suite


def command_line() -> str:
    """Return how this process was started, as a shell command."""
    if os.environ.get("BENCH_MAKE_TARGET"):
        return f"make {os.environ['BENCH_MAKE_TARGET']}"
    return shlex.join([".venv/bin/python", "-m", "bench", *sys.argv[1:]])
