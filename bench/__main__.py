"""Benchmark the Modcus worker against the naive `asyncio.run()` pattern and arq.

Run it
------

    make bench                          # the full run: writes docs/benchmarks.md and the plot
    .venv/bin/python -m bench --quick   # a short run of about 2.5 minutes, for development

`make bench` installs the `bench` extra (matplotlib, py-spy) and arq, then runs
`python -m bench`. It needs PostgreSQL and Redis on 127.0.0.1, as `make test` does, and takes
about 7 minutes on 2 cores. Run it on an otherwise idle machine: the page records whether pytest
ran at its start or end, and how busy the CPUs were.

What it does
------------

1. Drops and creates the database `modcus_bench` (BENCH_DATABASE_URL), migrates it, loads the
   sample companies of examples/companies, stores a provider key for the fake provider and an
   API client, and empties Redis database 10 (BENCH_REDIS_URL). Both URLs must be on
   127.0.0.1. A new MODCUS_SECRET_KEY is generated for each run.
2. Starts the fake LLM provider (`python -m common.fake_provider`) on 127.0.0.1 with a fixed
   latency (`--latency-ms`, 500 by default).
3. For each planned system and C (jobs in flight), starts a new worker process, warms it up,
   runs a fixed number of jobs with C in flight, reads the counters, and stops the worker.
4. Profiles the Modcus worker (and arq) at C = 64 with py-spy in separate runs.
5. Measures `POST /v1/query` on one uvicorn process with a load generator in a second process.
6. Writes the page and the plot.

Logs of every process it started are in .modcus/bench/. The code of each part is in
bench/systems.py (how each system starts), bench/driver.py (the closed loop),
bench/runner.py (one measurement), bench/suite.py (the plan) and bench/report.py (the page).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pickle
import sys
from pathlib import Path

from bench.environment import LOG_DIR, PROJECT_DIR, BenchError
from bench.suite import Options, SuiteResult, command_line, full_plan, quick_plan, run_suite

DEFAULT_PAGE = PROJECT_DIR / "docs" / "benchmarks.md"
DEFAULT_PLOT = PROJECT_DIR / "docs" / "benchmarks-throughput.png"
QUICK_PAGE = LOG_DIR / "benchmarks-quick.md"
QUICK_PLOT = LOG_DIR / "benchmarks-quick.png"
# The figures of the last full and quick runs, kept so that the page can be written again
# without measuring. Only this program writes them, so loading them with pickle runs no foreign
# code.
LAST_RUN = LOG_DIR / "last-run.pickle"
LAST_QUICK_RUN = LOG_DIR / "last-run-quick.pickle"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the Modcus worker against the naive asyncio.run pattern and arq.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run fewer C values and jobs (about 2.5 minutes); writes under .modcus/bench/",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=500,
        help="fixed latency of the fake provider per request, in milliseconds (default: 500)",
    )
    parser.add_argument("--output", type=Path, help="path of the Markdown page to write")
    parser.add_argument("--plot", type=Path, help="path of the PNG plot to write")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="log level of the worker processes, the same for every system (default: WARNING)",
    )
    parser.add_argument(
        "--arq-poll-delay-s",
        type=float,
        default=0.01,
        help="how often the arq worker polls Redis for new jobs, in seconds (default: 0.01)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--no-api", action="store_true", help="skip the API measurement")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="write the page again from the figures of the last run (with --quick, of the last "
        "quick run), for example after editing bench/findings.md, without measuring",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.latency_ms <= 0:
        print("error: --latency-ms must be positive", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Every fake provider statistics request would otherwise be logged.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    quick = args.quick
    last_run = LAST_QUICK_RUN if quick else LAST_RUN
    if args.render_only:
        if not last_run.exists():
            print(f"error: {last_run} does not exist; run the benchmark first", file=sys.stderr)
            return 1
        suite: SuiteResult = pickle.loads(last_run.read_bytes())  # noqa: S301 (our own file)
    else:
        try:
            suite = asyncio.run(run_suite(_options(args)))
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        last_run.write_bytes(pickle.dumps(suite))

    # matplotlib is imported only here, after the measurements.
    from bench.report import write_report

    page = args.output or (QUICK_PAGE if quick else DEFAULT_PAGE)
    plot = args.plot or (QUICK_PLOT if quick else DEFAULT_PLOT)
    write_report(suite, page, plot)
    print(f"wrote {page} and {plot}", file=sys.stderr)
    return 0


def _options(args: argparse.Namespace) -> Options:
    return Options(
        plan=quick_plan() if args.quick else full_plan(),
        quick=args.quick,
        latency_ms=args.latency_ms,
        log_level=args.log_level.upper(),
        arq_poll_delay_s=args.arq_poll_delay_s,
        profile=not args.no_profile,
        api=not args.no_api,
        command=command_line(),
    )


if __name__ == "__main__":
    sys.exit(main())
