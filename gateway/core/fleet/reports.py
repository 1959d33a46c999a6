"""Fleet reports: daily rows and totals per vehicle or per driver, from stored trips and
alerts (never from raw telemetry: a 30-day report of 1,000 vehicles reads some 100,000
trips, not a billion samples). Pure.

A trip counts on the UTC day it started (a trip over midnight is not split: its distance
and time belong to the day it began, so a day's rows add up to whole trips and the totals
equal the sum of the trips, tested). Idle time is the duration of the ended ``idling``
alerts started that day. Energy and fuel are the sums of the trips' used percentages.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

__all__ = ["ReportAlert", "ReportLine", "ReportTrip", "daily_report"]

_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class ReportTrip:
    """A trip, or ``count`` trips of one key and day already summed (what the database's
    GROUP BY gives: a 30-day report of 1,000 vehicles is 30,000 sums, not 90,000 trips)."""

    key: Hashable
    start_ms: int
    duration_ms: int
    distance_m: float
    max_speed_kmh: float | None
    energy_used_pct: float | None
    fuel_used_pct: float | None
    count: int = 1


@dataclass(frozen=True, slots=True)
class ReportAlert:
    key: Hashable
    kind: str
    start_ms: int
    end_ms: int | None


@dataclass(frozen=True, slots=True)
class ReportLine:
    """One key's day (``day`` None: its total over the range)."""

    key: str
    day: str | None
    trips: int = 0
    distance_m: float = 0.0
    driving_ms: int = 0
    idle_ms: int = 0
    energy_used_pct: float = 0.0
    fuel_used_pct: float = 0.0
    max_speed_kmh: float | None = None
    alerts: int = 0


@functools.lru_cache(maxsize=4096)
def _date(day_number: int) -> str:
    return (_EPOCH + dt.timedelta(days=day_number)).isoformat()


def _day(ms: int) -> str:
    return _date(ms // 86_400_000)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(slots=True)
class _Sum:
    """A line being summed (mutable: a report adds tens of thousands of items)."""

    trips: int = 0
    distance_m: float = 0.0
    driving_ms: int = 0
    idle_ms: int = 0
    energy_used_pct: float = 0.0
    fuel_used_pct: float = 0.0
    max_speed_kmh: float | None = None
    alerts: int = 0

    def add(self, other: _Sum) -> None:
        self.trips += other.trips
        self.distance_m += other.distance_m
        self.driving_ms += other.driving_ms
        self.idle_ms += other.idle_ms
        self.energy_used_pct += other.energy_used_pct
        self.fuel_used_pct += other.fuel_used_pct
        self.max_speed_kmh = _max(self.max_speed_kmh, other.max_speed_kmh)
        self.alerts += other.alerts

    def line(self, key: str, day: str | None) -> ReportLine:
        return ReportLine(
            key,
            day,
            self.trips,
            self.distance_m,
            self.driving_ms,
            self.idle_ms,
            self.energy_used_pct,
            self.fuel_used_pct,
            self.max_speed_kmh,
            self.alerts,
        )


def daily_report(
    trips: Iterable[ReportTrip], alerts: Iterable[ReportAlert]
) -> tuple[list[ReportLine], list[ReportLine]]:
    """(daily rows by key then day, totals by key)."""
    days: dict[tuple[str, str], _Sum] = {}
    for t in trips:
        line = days.setdefault((str(t.key), _day(t.start_ms)), _Sum())
        line.add(
            _Sum(
                t.count,
                t.distance_m,
                t.duration_ms,
                0,
                t.energy_used_pct or 0.0,
                t.fuel_used_pct or 0.0,
                t.max_speed_kmh,
            )
        )
    for a in alerts:
        line = days.setdefault((str(a.key), _day(a.start_ms)), _Sum())
        line.alerts += 1
        if a.kind == "idling" and a.end_ms is not None:
            line.idle_ms += a.end_ms - a.start_ms
    totals: dict[str, _Sum] = {}
    rows = []
    for key, day in sorted(days):
        line = days[(key, day)]
        totals.setdefault(key, _Sum()).add(line)
        rows.append(line.line(key, day))
    return rows, [totals[k].line(k, None) for k in sorted(totals)]
