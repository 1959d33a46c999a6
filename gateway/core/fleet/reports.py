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
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DaySums",
    "FaultLine",
    "ReportAlert",
    "ReportLine",
    "ReportTrip",
    "UtilizationLine",
    "daily_report",
    "faults_by_model",
    "model_of_vin",
    "report_cells",
    "report_from_sums",
    "utilization",
]

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
    """An alert, or ``count`` alerts of one key and day already summed with their idle
    time ``idle_ms`` (what the database's GROUP BY gives); for one alert, idle time is its
    duration when its kind is ``idling`` and it has ended."""

    key: Hashable
    kind: str
    start_ms: int
    end_ms: int | None
    count: int = 1
    idle_ms: int | None = None


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
        line.alerts += a.count
        if a.idle_ms is not None:
            line.idle_ms += a.idle_ms
        elif a.kind == "idling" and a.end_ms is not None:
            line.idle_ms += a.end_ms - a.start_ms
    totals: dict[str, _Sum] = {}
    rows = []
    for key, day in sorted(days):
        line = days[(key, day)]
        totals.setdefault(key, _Sum()).add(line)
        rows.append(line.line(key, day))
    return rows, [totals[k].line(k, None) for k in sorted(totals)]


# --- fleet utilization ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UtilizationLine:
    """One vehicle's use of the range (``key`` None: the whole scope). ``days_used``:
    days with a trip started (for the scope: vehicle-days); ``driving_share``: driving
    time over the range's length (for the scope: over length x vehicles). A trip counts
    on the day it started, as in the daily report."""

    key: str | None
    vehicles: int
    vehicles_used: int
    days_used: int
    trips: int
    driving_ms: int
    driving_share: float
    distance_m: float


def utilization(
    vehicles: Iterable[Hashable], trips: Iterable[ReportTrip], start_ms: int, end_ms: int
) -> tuple[list[UtilizationLine], UtilizationLine]:
    """(a line per vehicle, by key, the scope's line). ``vehicles``: every vehicle of the
    scope (one without a trip is a line of zeros, and counts in the scope's share);
    ``trips``: single or summed per key and day (:class:`ReportTrip`)."""
    span = max(1, end_ms - start_ms)
    days: dict[str, set[int]] = {str(v): set() for v in vehicles}
    sums: dict[str, list[float]] = {k: [0, 0, 0.0] for k in days}
    for t in trips:
        key = str(t.key)
        days.setdefault(key, set()).add(t.start_ms // 86_400_000)
        s = sums.setdefault(key, [0, 0, 0.0])
        s[0] += t.count
        s[1] += t.duration_ms
        s[2] += t.distance_m
    lines = [
        UtilizationLine(
            key,
            1,
            1 if sums[key][0] else 0,
            len(days[key]),
            int(sums[key][0]),
            int(sums[key][1]),
            sums[key][1] / span,
            float(sums[key][2]),
        )
        for key in sorted(sums)
    ]
    driving = sum(x.driving_ms for x in lines)
    total = UtilizationLine(
        None,
        len(lines),
        sum(x.vehicles_used for x in lines),
        sum(x.days_used for x in lines),
        sum(x.trips for x in lines),
        driving,
        driving / (span * len(lines)) if lines else 0.0,
        sum(x.distance_m for x in lines),
    )
    return lines, total


# --- fault codes by model ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultLine:
    """One fault code of one model over the range: the vehicles that reported it and how
    many times it was set (alerts of kind ``fault_code`` started in the range)."""

    model: str
    code: str
    vehicles: int
    occurrences: int


def model_of_vin(vin: str) -> str:
    """The model line as the VIN encodes it: the manufacturer (WMI, characters 1-3) and the
    vehicle descriptor (4-8). No model name is stored for a vehicle; this groups vehicles
    of one line the same way across every manufacturer without a decoding table."""
    return vin[:8]


def faults_by_model(faults: Iterable[tuple[str, str, int]]) -> list[FaultLine]:
    """``faults``: (vin, code, occurrences) per vehicle and code; lines by model then code."""
    vins: dict[tuple[str, str], set[str]] = {}
    counts: dict[tuple[str, str], int] = {}
    for vin, code, n in faults:
        key = (model_of_vin(vin), code)
        vins.setdefault(key, set()).add(vin)
        counts[key] = counts.get(key, 0) + n
    return [FaultLine(m, c, len(vins[(m, c)]), counts[(m, c)]) for m, c in sorted(counts)]


#: one key's day as the database sums it: (key, UTC day number, trips, driving ms,
#: distance m, max speed, energy %, fuel %, alerts, idle ms)
DaySums = tuple[Hashable, int, int, int, float, float | None, float | None, float | None, int, int]


def report_from_sums(days: Iterable[DaySums]) -> tuple[list[ReportLine], list[ReportLine]]:
    """What :func:`daily_report` gives, from lines the database already summed per key and
    day (one pass, no regrouping: a 30-day report of 1,000 vehicles is 30,000 of them).
    ``days`` in any order; rows by key then day, totals by key."""
    rows: list[ReportLine] = []
    totals: dict[str, _Sum] = {}
    for key, day, trips, driving, distance, top, energy, fuel, alerts, idle in days:
        k = str(key)
        line = _Sum(int(trips), float(distance or 0.0), int(driving or 0), int(idle or 0),
                    float(energy or 0.0), float(fuel or 0.0), top, int(alerts))  # fmt: skip
        rows.append(line.line(k, _date(int(day))))
        total = totals.get(k)
        if total is None:
            totals[k] = total = _Sum()
        total.add(line)
    rows.sort(key=lambda r: (r.key, r.day or ""))
    return rows, [totals[k].line(k, None) for k in sorted(totals)]


def report_cells(days: Iterable[DaySums]) -> Iterator[list[Any]]:
    """What :func:`report_from_sums` gives, as lists of a :class:`ReportLine`'s values, one
    at a time: the rows as they come, then the totals by key. ``days`` must come sorted by
    key (as text) and day, as the database's ``ORDER BY`` gives them: a CSV is then written
    while the database answers, without a list of lines or a sort (decision 0024). Counts
    and durations must be ints (or None), sums floats (or None), as the database gives
    them. A key's total is summed in local variables while its rows go by (decision 0030),
    in the order of ``_Sum.add``, so the float sums are the same to the bit."""
    totals: list[list[Any]] = []
    k = None
    n = drive = idle_sum = alerts_sum = 0
    dist = energy_sum = fuel_sum = 0.0
    best: float | None = None
    for key, day, trips, driving, distance, top, energy, fuel, alerts, idle in days:
        key = key if key.__class__ is str else str(key)
        distance, driving, idle = distance or 0.0, driving or 0, idle or 0
        energy, fuel = energy or 0.0, fuel or 0.0
        yield [key, _date(day), trips, distance, driving, idle, energy, fuel, top, alerts]
        if key != k:
            if k is not None:
                totals.append([k, None, n, dist, drive, idle_sum, energy_sum, fuel_sum, best,
                               alerts_sum])  # fmt: skip
            k, n, dist, drive, idle_sum = key, trips, distance, driving, idle
            energy_sum, fuel_sum, best, alerts_sum = energy, fuel, top, alerts
        else:
            n += trips
            dist += distance
            drive += driving
            idle_sum += idle
            energy_sum += energy
            fuel_sum += fuel
            if top is not None and (best is None or top > best):
                best = top  # as _max: the first of equal ones stays
            alerts_sum += alerts
    if k is not None:
        totals.append([k, None, n, dist, drive, idle_sum, energy_sum, fuel_sum, best, alerts_sum])
    yield from totals
