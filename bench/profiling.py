"""CPU profiles of a worker with py-spy, summarised as top frames and packages.

py-spy samples the worker from outside without changing its code. The benchmark records only
the threads that hold the GIL (`--gil`), so the samples show where the process spends CPU
rather than where its threads wait, and samples without pausing the process (`--nonblocking`).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.environment import LOG_DIR, BenchError, ChildProcess, wait_for_log

SAMPLING_RATE_HZ = 100
_STOP_TIMEOUT_S = 30.0
# A frame of py-spy's raw output with --nolineno: "function (path/to/file.py)".
_FRAME_RE = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")

# Packages by the path py-spy shows for a frame, first match wins.
_PACKAGE_PATTERNS = (
    ("Modcus (common/, worker/)", ("common/", "worker/")),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("asyncpg", ("asyncpg/",)),
    ("httpx, httpcore, h11", ("httpx/", "httpcore/", "h11/", "anyio/")),
    ("openai SDK", ("openai/",)),
    ("llama-index", ("llama_index/",)),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("Celery, kombu, billiard", ("celery/", "kombu/", "billiard/", "vine/")),
    ("asgiref", ("asgiref/",)),
    ("redis-py", ("redis/",)),
    ("arq", ("arq/",)),
    ("cryptography", ("cryptography/",)),
    ("asyncio", ("asyncio/",)),
    ("logging", ("logging/",)),
    ("threading, concurrent", ("threading.py", "concurrent/", "queue.py")),
)


# Activities of a whole stack, by the packages anywhere in it. The first match wins: the database
# comes after the LLM call because the rotator's callbacks run inside it, and arq and Celery
# come before Redis because their broker traffic goes through redis-py.
_ACTIVITY_PATTERNS = (
    ("LLM call: llama-index, openai SDK, httpx", ("llama_index", "openai/", "httpx/", "httpcore/")),
    ("database: SQLAlchemy, asyncpg", ("sqlalchemy/", "asyncpg/")),
    ("arq: polling and job bookkeeping", ("arq/",)),
    (
        "Celery, kombu, pool threads, asgiref",
        ("celery/", "kombu/", "billiard/", "asgiref/", "concurrent/futures"),
    ),
    ("Redis: redis-py commands", ("redis/",)),
    ("logging", ("logging/",)),
)


def _activity_of(paths: list[str]) -> str:
    for name, patterns in _ACTIVITY_PATTERNS:
        if any(pattern in path for path in paths for pattern in patterns):
            return name
    return "event loop and other"


def _package_of(path: str) -> str:
    for name, patterns in _PACKAGE_PATTERNS:
        if any(pattern in path for pattern in patterns):
            return name
    return "other"


@dataclass
class Profile:
    """Counts of GIL-holding samples by function, by package and by activity."""

    samples: int = 0
    self_by_function: Counter[str] = field(default_factory=Counter)
    total_by_function: Counter[str] = field(default_factory=Counter)
    self_by_package: Counter[str] = field(default_factory=Counter)
    by_activity: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_raw(cls, text: str) -> Profile:
        """Read py-spy's raw format: one stack per line, frames joined by ';', then a count."""
        profile = cls()
        for line in text.splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame_name(frame) for frame in stack.split(";")]
            profile.samples += count
            leaf_name, leaf_file = frames[-1]
            profile.self_by_function[f"{leaf_name} ({leaf_file})"] += count
            profile.self_by_package[_package_of(leaf_file)] += count
            profile.by_activity[_activity_of([path for _, path in frames])] += count
            for name, path in set(frames):
                profile.total_by_function[f"{name} ({path})"] += count
        return profile


def _frame_name(frame: str) -> tuple[str, str]:
    match = _FRAME_RE.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    return match.group("function"), match.group("file")


class Sampler:
    """A running `py-spy record` attached to one process."""

    def __init__(self, pid: int, name: str) -> None:
        self.output_path = LOG_DIR / f"{name}.pyspy.txt"
        py_spy = Path(sys.executable).with_name("py-spy")
        args = [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(SAMPLING_RATE_HZ),
            "--gil",
            "--nonblocking",
            "--nolineno",
            "--format",
            "raw",
            "--output",
            str(self.output_path),
        ]
        self._child = ChildProcess(f"{name}.pyspy", args, env=None)
        wait_for_log(self._child, r"Sampling process")

    def stop(self) -> Profile:
        """Stop sampling; py-spy writes its output when it gets SIGINT."""
        process = self._child.process
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise BenchError(f"py-spy did not stop; its log is {self._child.log_path}") from None
        finally:
            self._child.stop()
        if not self.output_path.exists():
            raise BenchError(f"py-spy wrote no profile; its log is {self._child.log_path}")
        return Profile.from_raw(self.output_path.read_text())
