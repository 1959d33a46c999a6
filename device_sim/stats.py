"""The counters of a simulator run, shared by one process and the ``--procs`` parent.

What a fleet run measures (:class:`LatencyHistogram`, progress and summary counters, CPU and
memory) and how the shards of one fleet (:class:`Shard`) add up, without any IO beyond
``getrusage``. Both :mod:`device_sim.fleet` (one process) and :mod:`device_sim.procs` (the
parent of N children) use it; it is its own module so that neither imports the other
(issue 12, docs/decisions/0013-architecture-step.md).

Imports: the standard library only.
"""

from __future__ import annotations

import math
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "PER_1000_MIN_UNITS",
    "PROGRESS_KEYS",
    "SUMMED_KEYS",
    "UNIT_DETAIL_LIMIT",
    "LatencyHistogram",
    "Shard",
    "merge_progress",
    "process_usage",
    "resources_summary",
]

#: the summary lists every unit's counters only for fleets up to this size
UNIT_DETAIL_LIMIT: Final = 1000


#: the counters of a progress snapshot (summed over shards)
PROGRESS_KEYS: Final = (
    "vehicles",
    "started",
    "connected",
    "published",
    "acknowledged",
    "buffered",
    "errors",
    "reconnects",
    "rejected_by_broker",
    "taken_over",
    "commands_received",
    "commands_answered",
)


#: the counters of a summary that add up over shards
SUMMED_KEYS: Final = (
    "vehicles",
    "connected",
    "connected_peak",
    "published",
    "acknowledged",
    "acked",
    "rejected_by_broker",
    "taken_over",
    "samples",
    "samples_published",
    "buffered",
    "dropped",
    "pending",
    "lost_in_flight",
    "batches",
    "events",
    "events_dropped",
    "connects",
    "reconnects",
    "commands_received",
    "commands_ignored",
    "commands_duplicate",
    "commands_rejected",
    "commands_accepted",
    "commands_succeeded",
    "commands_failed",
    "commands_answered",
)


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: vehicles index+1, index+1+count, ..."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"invalid shard {self}: expected I/N with 0 <= I < N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def numbers(self, vehicles: int) -> range:
        """The vehicle numbers (1-based, as in ``make_vin``) of this shard."""
        return range(self.index + 1, vehicles + 1, self.count)


class LatencyHistogram:
    """Latencies in milliseconds, in logarithmic buckets 2 % wide: small, and mergeable over
    processes; percentiles are accurate to about 1 %."""

    _LOG_BASE: Final = math.log(1.02)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        bucket = math.floor(math.log(max(ms, 0.001)) / self._LOG_BASE)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1
        if ms > self.max_ms:
            self.max_ms = ms

    def merge(self, other: LatencyHistogram) -> None:
        for bucket, n in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + n
        self.count += other.count
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) in ms (the middle of its bucket), None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(math.exp((bucket + 0.5) * self._LOG_BASE), self.max_ms)
        return self.max_ms

    def as_json(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            "count": self.count,
            "p50": r(self.percentile(0.5)),
            "p90": r(self.percentile(0.9)),
            "p99": r(self.percentile(0.99)),
            "max": round(self.max_ms, 2),
        }

    def to_wire(self) -> dict[str, Any]:
        return {"counts": {str(b): n for b, n in self.counts.items()}, "max_ms": self.max_ms}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> LatencyHistogram:
        histogram = cls()
        histogram.counts = {int(b): int(n) for b, n in wire["counts"].items()}
        histogram.count = sum(histogram.counts.values())
        histogram.max_ms = float(wire["max_ms"])
        return histogram


def process_usage() -> tuple[float, float]:
    """(CPU seconds, user + system; peak RSS in MB) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0  # ru_maxrss: KB on Linux


#: fewest units for figures "per 1,000 units": a smaller fleet would only extrapolate the
#: interpreter's own memory and start-up CPU (5 units: "12 GB per 1,000 units")
PER_1000_MIN_UNITS: Final = 1000


def resources_summary(
    processes: Sequence[Mapping[str, Any]], vehicles: int, duration_s: float
) -> dict[str, Any]:
    """CPU and memory of the simulator processes, in total and per 1,000 units (None for
    fleets under :data:`PER_1000_MIN_UNITS`)."""
    cpu = sum(float(p["cpu_s"]) for p in processes)
    rss = sum(float(p["max_rss_mb"]) for p in processes)
    thousands = max(vehicles, 1) / 1000.0
    cpu_percent = 100.0 * cpu / duration_s if duration_s > 0 else 0.0
    per_1000 = None
    if vehicles >= PER_1000_MIN_UNITS:
        per_1000 = {
            "cpu_s": round(cpu / thousands, 3),
            "cpu_percent": round(cpu_percent / thousands, 2),
            "max_rss_mb": round(rss / thousands, 1),
        }
    return {
        "processes": list(processes),
        "cpu_s": round(cpu, 3),
        "cpu_percent": round(cpu_percent, 1),
        "max_rss_mb": round(rss, 1),
        "per_1000_units": per_1000,
    }


def merge_progress(parts: Sequence[Mapping[str, Any]], *, elapsed_s: float) -> dict[str, Any]:
    """One progress snapshot from those of several shards (counters summed)."""
    merged: dict[str, Any] = dict.fromkeys(PROGRESS_KEYS, 0)
    for part in parts:
        for key in PROGRESS_KEYS:
            merged[key] += int(part.get(key, 0))
    merged["elapsed_s"] = elapsed_s
    return merged
