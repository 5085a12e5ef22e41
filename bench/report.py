"""The benchmark page (Markdown) and its throughput plot (PNG)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.profiling import Profile
from bench.runner import RunResult
from bench.suite import SuiteResult
from bench.systems import ARQ, MODCUS_PREFORK_1, MODCUS_THREADS, NAIVE, Kind, System

FINDINGS_PATH = Path(__file__).with_name("findings.md")
_TOP_FRAMES = 15
_TOP_PACKAGES = 10

# The targets of Modcus. Unless a target names another C, it applies at C = 64 with one process.
TARGET_EFFICIENCY = 0.9
TARGET_CPU_MS_PER_JOB = 5.0
TARGET_OVERHEAD_P50_MS = 15.0
TARGET_OVERHEAD_P99_MS = 40.0
TARGET_NAIVE_FACTOR = 3.0
TARGET_IN_FLIGHT = 64


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _find(runs: Iterable[RunResult], system: System, in_flight: int) -> RunResult | None:
    for run in runs:
        if run.system == system and run.in_flight == in_flight and run.skipped is None:
            return run
    return None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def write_plot(suite: SuiteResult, path: Path) -> None:
    """Plot throughput against C, one line per system, with the ideal C / latency."""
    latency_s = suite.options.latency_ms / 1000
    all_in_flight = sorted({run.in_flight for run in suite.runs})
    systems: list[System] = []
    for run in suite.runs:
        if run.system not in systems:
            systems.append(run.system)

    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    axes.plot(
        all_in_flight,
        [in_flight / latency_s for in_flight in all_in_flight],
        linestyle="--",
        color="grey",
        label=f"ideal: C / {suite.options.latency_ms} ms",
    )
    for system in systems:
        points = sorted(
            (run.in_flight, run.throughput_per_s)
            for run in suite.runs
            if run.system == system and run.skipped is None and run.finished
        )
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=system.title)

    # Both axes are logarithmic, so the ideal line is straight, labelled in plain numbers.
    axes.set_xscale("log", base=2)
    axes.set_yscale("log", base=2)
    axes.set_xticks(all_in_flight, [str(value) for value in all_in_flight])
    top = 1.5 * max(all_in_flight) / latency_s
    y_ticks = [2.0**power for power in range(-1, 12) if 2.0**power <= top]
    axes.set_yticks(y_ticks, [f"{value:g}" for value in y_ticks])
    axes.set_ylim(0.5, top)
    axes.set_xlabel("jobs in flight (C)")
    axes.set_ylabel("throughput (jobs/s)")
    axes.set_title(f"Throughput against jobs in flight, provider latency {latency_s * 1000:g} ms")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None
    gap: str


def _ratio_verdict(
    target: str, measured: RunResult | None, other: RunResult | None, factor: float
) -> Verdict:
    if measured is None or other is None or other.throughput_per_s == 0:
        return Verdict(target, "not measured", None, "")
    ratio = measured.throughput_per_s / other.throughput_per_s
    measured_text = (
        f"{measured.throughput_per_s:.1f} vs {other.throughput_per_s:.1f} jobs/s "
        f"({ratio:.2f}x; RSS {measured.rss_total_mib:.0f} vs {other.rss_total_mib:.0f} MiB)"
    )
    met = ratio >= factor
    gap = "" if met else f"{factor - ratio:.2f}x short"
    return Verdict(target, measured_text, met, gap)


def evaluate_targets(suite: SuiteResult) -> list[Verdict]:
    """Check the Modcus targets against the measured runs."""
    runs = suite.runs
    latency_s = suite.options.latency_ms / 1000
    threads = _find(runs, MODCUS_THREADS, TARGET_IN_FLIGHT)
    verdicts = []

    ideal = TARGET_IN_FLIGHT / latency_s
    if threads is None:
        verdicts.append(Verdict("throughput at C = 64", "not measured", None, ""))
    else:
        needed = TARGET_EFFICIENCY * ideal
        verdicts.append(
            Verdict(
                f"throughput at C = 64, one process >= {TARGET_EFFICIENCY} x C / latency "
                f"({needed:.0f} jobs/s)",
                f"{threads.throughput_per_s:.1f} jobs/s ({threads.efficiency:.2f} of ideal)",
                threads.throughput_per_s >= needed,
                _shortfall(needed - threads.throughput_per_s, needed, "jobs/s"),
            )
        )
        cpu = threads.cpu_ms_per_job
        verdicts.append(
            Verdict(
                f"worker CPU <= {TARGET_CPU_MS_PER_JOB:g} ms per job (C = 64)",
                f"{_number(cpu)} ms",
                None if cpu is None else cpu <= TARGET_CPU_MS_PER_JOB,
                "" if cpu is None else _excess(cpu, TARGET_CPU_MS_PER_JOB, "ms"),
            )
        )

    for system in (MODCUS_THREADS, MODCUS_PREFORK_1):
        single = _find(runs, system, 1)
        if single is None or single.overhead_p50_ms is None or single.overhead_p99_ms is None:
            verdicts.append(Verdict(f"overhead at C = 1, {system.title}", "not measured", None, ""))
            continue
        p50, p99 = single.overhead_p50_ms, single.overhead_p99_ms
        gaps = [
            _excess(p50, TARGET_OVERHEAD_P50_MS, "ms at p50"),
            _excess(p99, TARGET_OVERHEAD_P99_MS, "ms at p99"),
        ]
        verdicts.append(
            Verdict(
                f"overhead at C = 1 ({system.title}): p50 <= {TARGET_OVERHEAD_P50_MS:g} ms, "
                f"p99 <= {TARGET_OVERHEAD_P99_MS:g} ms",
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({single.finished} jobs)",
                p50 <= TARGET_OVERHEAD_P50_MS and p99 <= TARGET_OVERHEAD_P99_MS,
                ", ".join(gap for gap in gaps if gap),
            )
        )

    verdicts.append(_connections_verdict(suite))
    verdicts.append(
        _ratio_verdict(
            f"throughput >= {TARGET_NAIVE_FACTOR:g}x the naive pattern at equal memory "
            "(one process each, C = 64)",
            threads,
            _find(runs, NAIVE, TARGET_IN_FLIGHT),
            TARGET_NAIVE_FACTOR,
        )
    )
    verdicts.append(
        _ratio_verdict(
            "throughput >= arq with the same number of processes (one, C = 64)",
            threads,
            _find(runs, ARQ, TARGET_IN_FLIGHT),
            1.0,
        )
    )
    return verdicts


def _shortfall(missing: float, needed: float, unit: str) -> str:
    if missing <= 0:
        return ""
    return f"{missing:.1f} {unit} short ({missing / needed:.0%})"


def _excess(value: float, limit: float, unit: str) -> str:
    if value <= limit:
        return ""
    return f"{value - limit:.1f} {unit} over ({value / limit:.1f}x the target)"


def _connections_verdict(suite: SuiteResult) -> Verdict:
    pool = int(suite.settings.get("MODCUS_DB_POOL_SIZE", "10"))
    db_limit = 2 * pool
    http_limit = 200
    modcus_runs = [
        run
        for run in suite.runs
        if run.skipped is None and run.finished and run.system.kind is Kind.MODCUS
    ]
    if not modcus_runs:
        return Verdict("connections opened per 1,000 jobs", "not measured", None, "")

    def db_rate(run: RunResult) -> float:
        """PostgreSQL connections opened per 1,000 jobs and per worker process."""
        return run.per_thousand_jobs(run.db_sessions_window) / (run.system.processes or 1)

    def http_rate(run: RunResult) -> float:
        return run.per_thousand_jobs(run.http_connections_window)

    worst_db = max(modcus_runs, key=db_rate)
    worst_http = max(modcus_runs, key=http_rate)
    gaps = []
    if db_rate(worst_db) > db_limit:
        gaps.append(f"PostgreSQL {db_rate(worst_db) - db_limit:.0f} per process over")
    if http_rate(worst_http) > http_limit:
        gaps.append(f"HTTP {http_rate(worst_http) - http_limit:.0f} over")
    return Verdict(
        f"connections opened per 1,000 jobs <= pool sizes (PostgreSQL {pool} + {pool} overflow "
        f"per process, HTTP {http_limit})",
        f"worst PostgreSQL {db_rate(worst_db):.0f} per process ({worst_db.system.name}, "
        f"C = {worst_db.in_flight}), worst HTTP {http_rate(worst_http):.0f} "
        f"({worst_http.system.name}, C = {worst_http.in_flight})",
        not gaps,
        ", ".join(gaps),
    )


def _skipped_row(run: RunResult, columns: int) -> list[str]:
    return [run.system.title, str(run.in_flight), run.skipped or "", *[""] * (columns - 3)]


_SPEED_HEADER = [
    "system",
    "C",
    "jobs",
    "jobs/s",
    "of C / latency",
    "overhead p50 ms",
    "overhead p99 ms",
    "worker CPU ms/job",
    "of which kernel",
    "machine CPU busy",
    "other programs, cores",
]


def _speed_rows(runs: list[RunResult]) -> list[list[str]]:
    rows = []
    for run in runs:
        if run.skipped is not None:
            rows.append(_skipped_row(run, len(_SPEED_HEADER)))
            continue
        failed = run.jobs - run.succeeded
        rows.append(
            [
                run.system.title,
                str(run.in_flight),
                f"{run.jobs}" + (f" ({failed} failed)" if failed else ""),
                f"{run.throughput_per_s:.1f}",
                f"{run.efficiency:.2f}",
                _number(run.overhead_p50_ms),
                _number(run.overhead_p99_ms),
                _number(run.cpu_ms_per_job),
                "n/a" if run.system_cpu_share is None else f"{run.system_cpu_share:.0%}",
                f"{run.machine_busy:.0%}",
                f"{run.other_programs_cores:.2f}",
            ]
        )
    return rows


_RESOURCE_HEADER = [
    "system",
    "C",
    "processes",
    "RSS MiB, sum",
    "peak RSS MiB, largest process",
    "PostgreSQL connections opened per 1,000 jobs",
    "HTTP connections opened per 1,000 jobs",
    "PostgreSQL / HTTP connections opened since start",
    "PostgreSQL transactions per job",
    "fake provider CPU ms/job",
]


def _resource_rows(runs: list[RunResult]) -> list[list[str]]:
    rows = []
    for run in runs:
        if run.skipped is not None:
            rows.append(_skipped_row(run, len(_RESOURCE_HEADER)))
            continue
        transactions = run.db_transactions_window / run.finished if run.finished else 0.0
        rows.append(
            [
                run.system.title,
                str(run.in_flight),
                f"{run.processes}",
                f"{run.rss_total_mib:.0f}",
                f"{run.peak_rss_mib:.0f}",
                f"{run.per_thousand_jobs(run.db_sessions_window):.0f}",
                f"{run.per_thousand_jobs(run.http_connections_window):.0f}",
                f"{run.db_sessions_life} / {run.http_connections_life} in {run.jobs_life} jobs",
                f"{transactions:.1f}",
                _number(run.fake_cpu_ms_per_job),
            ]
        )
    return rows


def _share_rows(counts: list[tuple[str, int]], samples: int, *, code: bool) -> list[list[str]]:
    return [
        [f"`{name}`" if code else name, str(count), f"{count / samples:.0%}"]
        for name, count in counts
    ]


def _profile_section(run: RunResult, profile: Profile) -> list[str]:
    samples = max(profile.samples, 1)
    header = ["function (file)", "samples", "share"]
    lines = [
        f"### {run.system.title}, C = {run.in_flight}, {run.finished} jobs",
        "",
        f"{profile.samples} samples of the thread holding the GIL at 100 Hz over "
        f"{run.elapsed_s:.1f} s, so about {profile.samples / max(run.elapsed_s, 0.001):.0f}% "
        f"of one core. Throughput in the profiled run: {run.throughput_per_s:.1f} jobs/s; "
        f"worker CPU {_number(run.cpu_ms_per_job)} ms per job.",
        "",
        "CPU by activity (what the whole stack was doing; the last column spreads the "
        "worker CPU per job over the shares):",
        "",
    ]

    cpu_ms = run.cpu_ms_per_job or 0.0
    activity_counts = profile.by_activity.most_common()
    activity_rows = [
        [*row, f"{cpu_ms * count / samples:.1f}"]
        for row, (_, count) in zip(
            _share_rows(activity_counts, samples, code=False), activity_counts, strict=True
        )
    ]
    lines += _table(["activity", "samples", "share", "about ms per job"], activity_rows)

    lines += ["", "CPU by package (the package of the innermost frame):", ""]
    package_counts = profile.self_by_package.most_common(_TOP_PACKAGES)
    lines += _table(
        ["package", "samples", "share"], _share_rows(package_counts, samples, code=False)
    )

    lines += ["", "Top frames by own time:", ""]
    self_counts = profile.self_by_function.most_common(_TOP_FRAMES)
    lines += _table(header, _share_rows(self_counts, samples, code=True))

    lines += ["", "Top frames by time including callees:", ""]
    total_counts = profile.total_by_function.most_common(_TOP_FRAMES)
    lines += _table(header, _share_rows(total_counts, samples, code=True))

    project_counts = [
        (name, count)
        for name, count in profile.total_by_function.most_common()
        if _is_project_frame(name)
    ][:_TOP_FRAMES]
    if project_counts:
        lines += ["", "Frames of `common/` and `worker/`, time including callees:", ""]
        lines += _table(header, _share_rows(project_counts, samples, code=True))
    lines.append("")
    return lines


def _is_project_frame(name: str) -> bool:
    return "(common/" in name or "(worker/" in name


# Other programs' CPU, in cores, up to which a run counts as one on an otherwise idle machine.
_IDLE_OTHER_CORES = 0.1


def _machine_state(suite: SuiteResult) -> str:
    checks = [check for check in (suite.idle_before, suite.idle_after) if check is not None]
    pytest_seen = [line for check in checks for line in check.pytest_processes]
    before = suite.idle_before
    busy = f"{before.busy_fraction:.0%}" if before is not None else "n/a"
    load = before.load_average if before is not None else "n/a"
    measured = [run for run in [*suite.runs, *suite.profiles] if run.skipped is None]
    other_cores = max((run.other_programs_cores for run in measured), default=0.0)
    idle = not pytest_seen and other_cores <= _IDLE_OTHER_CORES
    verdict = "The machine was otherwise idle" if idle else "The machine was not idle"
    pytest_text = (
        f"pytest ran at the start or the end ({len(pytest_seen)} processes)"
        if pytest_seen
        else "no pytest process ran at the start or at the end"
    )
    return (
        f"{verdict}: {pytest_text}, and the CPUs were {busy} busy in the 2 s before the start "
        f"(load average {load}). Programs outside the benchmark used at most "
        f"{other_cores:.2f} cores during any run. In the tables, 'machine CPU busy' is the "
        "busy share of both cores during a run, this benchmark's processes included. 'Other "
        "programs' is the CPU of programs outside the benchmark that ran throughout the run, "
        "leaving out PostgreSQL and Redis, which other users share."
    )


def _jobs_by_in_flight(suite: SuiteResult, systems: Callable[[System], bool]) -> str:
    """List the job count of each C for the systems that `systems` selects, by system title."""
    by_title: dict[str, list[str]] = {}
    for run in suite.options.plan.runs:
        if systems(run.system):
            counts = by_title.setdefault(run.system.title, [])
            text = f"C = {run.in_flight}: {run.jobs}"
            if text not in counts:
                counts.append(text)
    if len({", ".join(counts) for counts in by_title.values()}) == 1:
        return ", ".join(next(iter(by_title.values())))
    return "; ".join(f"{title}: {', '.join(counts)}" for title, counts in by_title.items())


def render(suite: SuiteResult, plot_name: str) -> str:
    """Render the whole page."""
    options = suite.options
    finished = suite.finished_at or suite.started_at
    duration_s = (finished - suite.started_at).total_seconds()
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{options.command}`"
        + (
            " (which runs `.venv/bin/python -m bench`)"
            if options.command.startswith("make")
            else ""
        )
        + f" on {suite.started_at:%Y-%m-%d}, from "
        f"{suite.started_at:%H:%M} to {finished:%H:%M} UTC ({duration_s / 60:.1f} minutes)"
        + (
            ", in its short form (`--quick`); the figures are indicative only."
            if options.quick
            else "."
        ),
        "",
        _machine_state(suite),
        "",
        "## What runs",
        "",
        "Every system runs the same job against the same PostgreSQL, Redis and fake LLM "
        "provider, in one session. The job loads the job row and the company documents of "
        f"`GOTO` ({suite.documents} sample documents from `examples/companies` are loaded "
        "once) and builds the prompt. It calls the LLM through llama-index's "
        "OpenAI-compatible class (`OpenAILike`, on the openai SDK and httpx), then writes the "
        "answer into the job row.",
        "",
        "- **Modcus, threads pool**: `celery -A worker worker --pool threads --concurrency C`, "
        "one process whose tasks share its event loop. Each job runs the full Modcus path: "
        "claim under a lease, key rotation (keys from PostgreSQL, cooldowns from Redis), usage "
        "counters, an attempt record, a cancellation watch, and the result.",
        "- **Modcus, prefork**: `--pool prefork --concurrency N`, N processes, one job each "
        "at a time, so at most N jobs are in flight whatever C is. It runs at C = N and at "
        "C = 8 to show that ceiling.",
        "- **naive**: a Celery task (`bench/naive.py`) that calls `asyncio.run()` for each job "
        "and creates its SQLAlchemy async engine, httpx client and LLM client inside it. It "
        "has its own app and queue, on the same Redis database with the same broker settings, "
        "and runs in one process with the threads pool and concurrency C.",
        "- **arq**: one `arq` worker process (`bench/arq_worker.py`) with `max_jobs = C`. The "
        "engine, httpx client and LLM client are created once in its startup hook.",
        "",
        "The naive and arq jobs (`bench/peer_job.py`) reuse Modcus's prompt builder and LLM "
        "class, and skip what Modcus adds around the call (lease, rotation, attempt records, "
        "cancellation), so they do less work per job than Modcus.",
        "",
        "A closed-loop driver (`bench/driver.py`) keeps C jobs in flight. It inserts a job row "
        "and publishes it, through `common.queue.enqueue_analysis` for Modcus as the API "
        "does. When PostgreSQL notifies it that a job got its `finished_at` (through a trigger "
        "that the benchmark adds to its own database), it submits the next job. Each worker "
        "is started anew for each C and first runs a warm-up of max(2, slots) jobs that is "
        "not counted.",
        "",
        "- throughput: finished jobs divided by the time from the first insert to the last "
        "finish; 'of C / latency' divides it by the physical limit C / latency.",
        "- overhead: `finished_at` minus `created_at` of the job row minus the provider "
        "latency. It includes the fake provider's own time per request (below) and, for "
        "prefork at C above its process count, the wait in the queue.",
        "- worker CPU: user and system time of the worker process and its children "
        "(`/proc/PID/stat`), over the measured jobs. 'Of which kernel' is the system time's "
        "share. RSS: `VmRSS` summed over the worker's processes at the end, and the largest "
        "`VmHWM`.",
        "- PostgreSQL connections: the change of `pg_stat_database.sessions` of the benchmark "
        "database. HTTP connections: the change of the fake provider's `connections_opened`. "
        "'Per 1,000 jobs' counts the measured jobs only, and 'opened since start' counts from "
        "the worker's start, warm-up included.",
        "- PostgreSQL transactions per job: the change of `xact_commit + xact_rollback` of the "
        "benchmark database per measured job. It includes the driver's insert of the job row "
        "and the pings of `pool_pre_ping`.",
        "- fake provider CPU: the fake provider process's CPU time per measured job.",
        "",
        "## Machine, versions and settings",
        "",
    ]
    lines += _table(["", ""], [[name, value] for name, value in suite.machine.items()])
    lines += [""]
    lines += _table(
        ["package", "version"], [[name, value] for name, value in suite.versions.items()]
    )
    lines += [""]
    floor = suite.floor
    settings_rows = [
        ["provider latency (fake provider, fixed)", f"{options.latency_ms} ms"],
        [
            "fake provider's own time per request (one at a time, httpx, job prompt)",
            (
                f"p50 {floor.round_trip_p50_ms:.1f} ms, p99 {floor.round_trip_p99_ms:.1f} ms "
                f"over the latency; {floor.cpu_ms_per_request:.1f} ms of its CPU"
                if floor is not None
                else "n/a"
            ),
        ],
        [
            "jobs per run (one process, C jobs at once)",
            _jobs_by_in_flight(suite, lambda system: system.processes is None),
        ],
        [
            "jobs per run (prefork)",
            _jobs_by_in_flight(suite, lambda system: system.processes is not None),
        ],
        *[[name, value] for name, value in suite.settings.items()],
        [
            "Celery settings (Modcus and naive)",
            "late acknowledgement, prefetch multiplier 1, results ignored, "
            "`--without-gossip --without-mingle --without-heartbeat`",
        ],
        ["arq settings", "keep_result 0, max_tries 1, otherwise arq's defaults"],
    ]
    lines += _table(["setting", "value"], settings_rows)
    lines += [
        "",
        "## Results",
        "",
        f"![Throughput against jobs in flight]({plot_name})",
        "",
    ]
    lines += _table(_SPEED_HEADER, _speed_rows(suite.runs))
    lines += [
        "",
        "Resources of the worker processes, and connections and transactions counted by "
        "PostgreSQL and by the fake provider:",
        "",
    ]
    lines += _table(_RESOURCE_HEADER, _resource_rows(suite.runs))
    lines += [""]

    if suite.api is not None:
        api = suite.api
        lines += [
            "## API: `POST /v1/query`",
            "",
            "One uvicorn process (`--log-level warning`), loaded by `bench/api_load.py` in a "
            f"second process: {api.requests} requests after a warm-up of "
            f"{options.plan.api_warmup_requests}, {api.concurrency} in flight, over loopback. "
            "No worker runs meanwhile; the queued jobs are deleted afterwards.",
            "",
        ]
        lines += _table(
            [
                "requests/s",
                "latency p50 ms",
                "latency p99 ms",
                "API CPU ms/request",
                "PostgreSQL connections opened",
                "statuses",
                "machine CPU busy",
            ],
            [
                [
                    f"{api.requests_per_s:.0f}",
                    f"{api.latency_p50_ms:.1f}",
                    f"{api.latency_p99_ms:.1f}",
                    f"{api.cpu_ms_per_request:.1f}",
                    str(api.db_sessions),
                    ", ".join(f"{code}: {count}" for code, count in api.statuses.items()),
                    f"{api.machine_busy:.0%}",
                ]
            ],
        )
        lines += [""]

    lines += ["## Targets of Modcus", ""]
    verdict_rows = [
        [
            verdict.target,
            verdict.measured,
            {True: "met", False: "**missed**", None: "not measured"}[verdict.met],
            verdict.gap,
        ]
        for verdict in evaluate_targets(suite)
    ]
    lines += _table(["target", "measured", "verdict", "by how much"], verdict_rows)
    lines += [""]

    profiled = [run for run in suite.profiles if run.profile is not None]
    if profiled:
        lines += [
            "## Profiles",
            "",
            "`py-spy record --gil --nonblocking` against the worker process during a separate "
            "run with the same settings, so the figures above are not slowed by sampling. "
            "SQLAlchemy's asyncio layer runs the ORM inside greenlets, and py-spy shows that "
            "work as stacks of their own that start at `Session.execute` or `Session.scalar`: "
            "those samples are not counted under the Modcus function that awaited them.",
            "",
        ]
        for run in profiled:
            assert run.profile is not None
            lines += _profile_section(run, run.profile)

    if FINDINGS_PATH.exists():
        lines += [FINDINGS_PATH.read_text().rstrip(), ""]
    return "\n".join(lines)


def write_report(suite: SuiteResult, page_path: Path, plot_path: Path) -> None:
    """Write the plot and the page, which links the plot by a path relative to itself."""
    write_plot(suite, plot_path)
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text(render(suite, os.path.relpath(plot_path, page_path.parent)))
