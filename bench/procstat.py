"""CPU time and memory of processes and of the machine, read from Linux's /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Return the fields of /proc/PID/stat after the command name; None if the process ended."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in brackets and may contain spaces, so split after its closing bracket.
    return text.rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """Return `pid` and the ids of all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree = [pid]
    for parent in tree:
        tree.extend(children.get(parent, []))
    return tree


@dataclass(frozen=True)
class CpuTimes:
    """User and system CPU time, in seconds."""

    user_s: float
    system_s: float

    @property
    def total_s(self) -> float:
        return self.user_s + self.system_s

    def __sub__(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user_s - earlier.user_s, self.system_s - earlier.system_s)


def cpu_times(pids: list[int]) -> CpuTimes:
    """Sum the user and system CPU time of `pids`; processes that ended count as zero."""
    user_ticks = system_ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the command name.
        user_ticks += int(fields[11])
        system_ticks += int(fields[12])
    return CpuTimes(user_ticks / CLOCK_TICKS_PER_S, system_ticks / CLOCK_TICKS_PER_S)


def cpu_seconds(pids: list[int]) -> float:
    """Sum the user and system CPU time of `pids`, in seconds."""
    return cpu_times(pids).total_s


# Servers that the benchmark shares with other users of the machine. Their CPU time per process
# cannot be attributed to one user, so it is left out.
_SHARED_SERVERS = ("postgres", "redis-server")


def other_programs_ticks(own_pids: set[int]) -> dict[int, int]:
    """Read the CPU ticks of every process outside `own_pids` and the shared servers."""
    ticks: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in own_pids:
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name in _SHARED_SERVERS:
            continue
        fields = text.rsplit(")", 1)[1].split()
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    return ticks


def other_programs_cpu_s(before: dict[int, int], after: dict[int, int]) -> float:
    """Return the CPU seconds between two readings of processes alive at both."""
    used = sum(after[pid] - before[pid] for pid in before.keys() & after.keys())
    return used / CLOCK_TICKS_PER_S


@dataclass(frozen=True)
class Memory:
    """Resident set size of one process now and at its peak, in KiB."""

    rss_kib: int
    peak_rss_kib: int


def memory(pid: int) -> Memory | None:
    """Read VmRSS and VmHWM of a process, or None if it is gone."""
    try:
        lines = (_PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return Memory(rss_kib=values.get("VmRSS", 0), peak_rss_kib=values.get("VmHWM", 0))


@dataclass(frozen=True)
class MachineCpu:
    """Cumulative CPU ticks of the whole machine, from the first line of /proc/stat."""

    busy_ticks: int
    total_ticks: int

    @classmethod
    def read(cls) -> MachineCpu:
        fields = [
            int(value) for value in (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
        ]
        # Fields: user nice system idle iowait irq softirq steal guest guest_nice. Guest time is
        # already counted in user, so it is left out.
        idle = fields[3] + fields[4]
        total = sum(fields[:8])
        return cls(busy_ticks=total - idle, total_ticks=total)

    def busy_fraction_since(self, earlier: MachineCpu) -> float:
        """Fraction of all cores' time that was busy between `earlier` and this reading."""
        total = self.total_ticks - earlier.total_ticks
        if total <= 0:
            return 0.0
        return (self.busy_ticks - earlier.busy_ticks) / total
