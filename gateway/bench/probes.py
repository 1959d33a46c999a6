"""What the benchmarks measure besides their figures, so a figure can be trusted or
explained: CPU per process and of the whole machine over a phase, the load average, and
stopping every child process when the benchmark is stopped (SIGTERM, SIGINT).

CPU comes from ``/proc/PID/stat`` (user + system time of all the process's threads) and
``/proc/stat`` (the machine's busy and idle time), read at the start and the end of a
phase. ``others`` is the machine's busy time minus that of the benchmark's own processes:
on a shared machine it says how much of the CPU someone else took during the phase.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "CpuFigures",
    "CpuWindow",
    "Interrupted",
    "percentile",
    "stop_children_on_signals",
    "track",
    "untrack",
    "worst",
]

_TICK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _process_cpu_s(pid: int | tuple[int, int]) -> float | None:
    """CPU seconds of a process, or of one thread of it: (pid, thread id)."""
    path = f"/proc/{pid}/stat" if isinstance(pid, int) else f"/proc/{pid[0]}/task/{pid[1]}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


@dataclass(frozen=True, slots=True)
class CpuFigures:
    """CPU over one phase, in percent of one core (200 = both cores of a 2-core machine)."""

    seconds: float
    #: process name -> percent of one core; "process.thread" names are threads of it
    #: (counted in the process's figure too)
    processes: dict[str, float]
    #: the whole machine: busy percent of one core, summed over cores
    machine: float
    #: the machine's busy time not spent in our processes
    others: float
    cores: int
    #: 1-minute load average at the end of the phase
    load_1m: float

    def line(self) -> str:
        shown = "  ".join(f"{k} {v:.0f}" for k, v in self.processes.items())
        return (
            f"CPU % of a core: {shown}; machine {self.machine:.0f} of {self.cores * 100}, "
            f"others {self.others:.0f}; load {self.load_1m:.1f}"
        )


@dataclass(slots=True)
class CpuWindow:
    """Start with the processes to watch; :meth:`end` gives the phase's figures."""

    #: name -> a process id, or (process id, thread id) for one thread of it
    pids: Mapping[str, int | tuple[int, int]]
    _start: dict[str, float] = field(default_factory=dict)
    _machine: tuple[int, int] = (0, 0)
    _at: float = 0.0

    def __post_init__(self) -> None:
        self._at = time.monotonic()
        self._machine = _machine_jiffies()
        self._start = {
            k: v for k, pid in self.pids.items() if (v := _process_cpu_s(pid)) is not None
        }

    def end(self) -> CpuFigures:
        seconds = max(1e-6, time.monotonic() - self._at)
        busy0, total0 = self._machine
        busy1, total1 = _machine_jiffies()
        cores = os.cpu_count() or 1
        machine = 100.0 * cores * (busy1 - busy0) / max(1, total1 - total0)
        processes: dict[str, float] = {}
        for name, pid in self.pids.items():
            now = _process_cpu_s(pid)
            if now is not None and name in self._start:
                processes[name] = round(100.0 * (now - self._start[name]) / seconds, 1)
        return CpuFigures(
            seconds=round(seconds, 2),
            processes=processes,
            machine=round(machine, 1),
            others=round(
                max(0.0, machine - sum(v for k, v in processes.items() if "." not in k)), 1
            ),
            cores=cores,
            load_1m=round(os.getloadavg()[0], 2),
        )


# --- children and signals ------------------------------------------------------------------

#: child processes not (yet) inside a context manager that stops them: stopped on a signal
_TRACKED: set[subprocess.Popen[Any]] = set()


def track(proc: subprocess.Popen[Any]) -> None:
    _TRACKED.add(proc)


def untrack(proc: subprocess.Popen[Any]) -> None:
    _TRACKED.discard(proc)


class Interrupted(SystemExit):
    """Raised in the benchmark's main thread by SIGTERM or SIGINT, so every ``with`` and
    ``finally`` that stops a child process runs before the benchmark exits."""


def _stop_tracked() -> None:
    for proc in list(_TRACKED):
        if proc.poll() is None:
            proc.terminate()
    for proc in list(_TRACKED):
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    _TRACKED.clear()


@contextlib.contextmanager
def stop_children_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` for the duration (the child
    processes are stopped by the context managers that started them as the exception
    unwinds; tracked ones here), and restore the previous handlers after."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the cleanup
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(128 + signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_tracked()


def worst(values: list[float], *, higher_is_worse: bool = True) -> float:
    clean = [v for v in values if v == v]  # NaN is not a figure
    if not clean:
        return float("nan")
    return max(clean) if higher_is_worse else min(clean)
