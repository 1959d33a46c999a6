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
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, replace

__all__ = ["ReportAlert", "ReportLine", "ReportTrip", "daily_report"]


@dataclass(frozen=True, slots=True)
class ReportTrip:
    key: Hashable
    start_ms: int
    duration_ms: int
    distance_m: float
    max_speed_kmh: float | None
    energy_used_pct: float | None
    fuel_used_pct: float | None


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


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date().isoformat()


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _add_trip(line: ReportLine, t: ReportTrip) -> ReportLine:
    return replace(
        line,
        trips=line.trips + 1,
        distance_m=line.distance_m + t.distance_m,
        driving_ms=line.driving_ms + t.duration_ms,
        energy_used_pct=line.energy_used_pct + (t.energy_used_pct or 0.0),
        fuel_used_pct=line.fuel_used_pct + (t.fuel_used_pct or 0.0),
        max_speed_kmh=_max(line.max_speed_kmh, t.max_speed_kmh),
    )


def _add_alert(line: ReportLine, a: ReportAlert) -> ReportLine:
    idle = a.end_ms - a.start_ms if a.kind == "idling" and a.end_ms is not None else 0
    return replace(line, alerts=line.alerts + 1, idle_ms=line.idle_ms + idle)


def daily_report(
    trips: Iterable[ReportTrip], alerts: Iterable[ReportAlert]
) -> tuple[list[ReportLine], list[ReportLine]]:
    """(daily rows by key then day, totals by key)."""
    days: dict[tuple[str, str], ReportLine] = {}
    for trip in trips:
        k = (str(trip.key), _day(trip.start_ms))
        days[k] = _add_trip(days.get(k) or ReportLine(*k), trip)
    for a in alerts:
        k = (str(a.key), _day(a.start_ms))
        days[k] = _add_alert(days.get(k) or ReportLine(*k), a)
    rows = [days[k] for k in sorted(days)]
    totals: dict[str, ReportLine] = {}
    for r in rows:
        t = totals.get(r.key) or ReportLine(r.key, None)
        totals[r.key] = replace(
            t,
            trips=t.trips + r.trips,
            distance_m=t.distance_m + r.distance_m,
            driving_ms=t.driving_ms + r.driving_ms,
            idle_ms=t.idle_ms + r.idle_ms,
            energy_used_pct=t.energy_used_pct + r.energy_used_pct,
            fuel_used_pct=t.fuel_used_pct + r.fuel_used_pct,
            max_speed_kmh=_max(t.max_speed_kmh, r.max_speed_kmh),
            alerts=t.alerts + r.alerts,
        )
    return rows, [totals[k] for k in sorted(totals)]
