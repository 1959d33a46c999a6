"""Trips and stops from one vehicle's ordered samples.

A trip starts at the first sample that moves (speed above ``moving_kmh``, or the unit's
IsMoving) while the ignition is not known to be off. It ends at ignition off (that sample is
the trip's last), or, standing with the ignition on, once the vehicle has stood for
``parking_ms`` (the trip ends where it stopped: a delivery stop ends a trip, a red light does
not), or at a hole in the data longer than ``max_gap_ms`` (we cannot tell what happened; a
late upload that fills the hole joins the two parts again, see :func:`recompute`). A trip
shorter than ``min_duration_ms`` or ``min_distance_m`` is dropped (moving the van across the
yard is not a trip). Stops are the times between trips.

Units send on change, so ignition and motion carry over from earlier samples until a sample
says otherwise.

:func:`feed` is the incremental detector (``(state, sample) -> (state, closed trips)``);
:func:`recompute` folds it over a window of samples sorted by time, from scratch. When a
sample arrives older than the newest one fed (store-and-forward), ``feed`` reports it
``late``; the adapter then takes :func:`window_start` (the start of the last trip that began
at or before the late sample), recomputes from there over the stored samples and replaces
the trips that began there or later. Starting at a trip's start is what makes the window
exact: just before it the full run is parked, with nothing carried but ignition and motion,
and each trip records those two (``prior_ignition``, ``prior_moving``: a trip that starts
after a hole in the data while cruising may have a first sample without a speed).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from schemas.payloads import SignalValue

from .geo import Point, distance_m
from .signals import (
    FUEL_LEVEL,
    ODOMETER,
    SOC,
    Sample,
    ignition_of,
    moving_of,
    number_of,
    position_of,
    speed_of,
)

__all__ = [
    "Feed",
    "Stop",
    "Trip",
    "TripResult",
    "TripSettings",
    "TripState",
    "Window",
    "feed",
    "feed_many",
    "open_trip",
    "recompute",
    "stops",
    "window_start",
]

EndReason = Literal["ignition_off", "parked", "data_gap", "open"]


@dataclass(frozen=True, slots=True)
class TripSettings:
    """Thresholds; the reasons for the defaults are in decision 0014."""

    moving_kmh: float = 3.0
    min_duration_ms: int = 60_000
    min_distance_m: float = 200.0
    parking_ms: int = 3 * 60_000
    max_gap_ms: int = 10 * 60_000


@dataclass(frozen=True, slots=True)
class Trip:
    """A trip; ``ended_by`` is "open" for the provisional trip still under way."""

    start_ms: int
    end_ms: int
    start_place: Point | None
    end_place: Point | None
    distance_m: float
    max_speed_kmh: float | None
    energy_used_pct: float | None
    fuel_used_pct: float | None
    ended_by: EndReason
    #: ignition and motion as known just before the trip's first sample (carried over from
    #: earlier samples): what a recompute starting at this trip begins with
    prior_ignition: bool | None = None
    prior_moving: bool | None = None

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms

    @property
    def avg_speed_kmh(self) -> float:
        return self.distance_m / self.duration_ms * 3600 if self.duration_ms > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Stop:
    """Where and how long a vehicle stood between two trips."""

    start_ms: int
    end_ms: int
    place: Point | None


@dataclass(frozen=True, slots=True)
class _Acc:
    """A trip being built: its first and latest readings."""

    start_ms: int
    last_ms: int
    start_place: Point | None = None
    last_place: Point | None = None
    path_m: float = 0.0
    odometer: tuple[float, float] | None = None
    max_speed: float | None = None
    soc: tuple[float, float] | None = None
    fuel: tuple[float, float] | None = None
    prior: tuple[bool | None, bool | None] = (None, None)


@dataclass(frozen=True, slots=True)
class TripState:
    """The detector's memory: the open trip, and its snapshot from when it stopped moving."""

    last_ts_ms: int | None = None
    ignition: bool | None = None
    moving: bool | None = None
    trip: _Acc | None = None
    stopped: _Acc | None = None


class Feed(NamedTuple):
    state: TripState
    closed: tuple[Trip, ...]
    late: bool = False


class FeedMany(NamedTuple):
    state: TripState
    closed: tuple[Trip, ...]
    #: the oldest late sample's time (None: none was late)
    late_ms: int | None = None


class TripResult(NamedTuple):
    trips: tuple[Trip, ...]
    open: Trip | None
    state: TripState


class Window(NamedTuple):
    """Where a recompute starts: ``start_ms`` (None: from the first stored sample) and the
    detector's state just before it (parked, with the ignition and motion carried over)."""

    start_ms: int | None
    initial: TripState


def _first_last(
    pair: tuple[float, float] | None, value: float | None
) -> tuple[float, float] | None:
    if value is None:
        return pair
    return (value, value) if pair is None else (pair[0], value)


def _add(acc: _Acc, s: Sample) -> _Acc:
    """``acc`` with the sample's readings added."""
    place = position_of(s.values, acc.last_place)
    path = acc.path_m
    if place is not None and acc.last_place is not None:
        path += distance_m(acc.last_place, place)
    speed = speed_of(s.values)
    top = acc.max_speed if speed is None else max(abs(speed), acc.max_speed or 0.0)
    return _Acc(  # every field, not dataclasses.replace: a third of the cost, per sample
        acc.start_ms,
        s.ts_ms,
        acc.start_place or place,
        place or acc.last_place,
        path,
        _first_last(acc.odometer, number_of(s.values, ODOMETER)),
        top,
        _first_last(acc.soc, number_of(s.values, SOC)),
        _first_last(acc.fuel, number_of(s.values, FUEL_LEVEL)),
        acc.prior,
    )


def _trip(acc: _Acc, ended_by: EndReason) -> Trip:
    odo = acc.odometer
    distance = odo[1] - odo[0] if odo is not None and odo[1] > odo[0] else acc.path_m
    return Trip(
        start_ms=acc.start_ms,
        end_ms=acc.last_ms,
        start_place=acc.start_place,
        end_place=acc.last_place,
        distance_m=distance,
        max_speed_kmh=acc.max_speed,
        energy_used_pct=None if acc.soc is None else acc.soc[0] - acc.soc[1],
        fuel_used_pct=None if acc.fuel is None else acc.fuel[0] - acc.fuel[1],
        ended_by=ended_by,
        prior_ignition=acc.prior[0],
        prior_moving=acc.prior[1],
    )


def _finish(acc: _Acc, ended_by: EndReason, cfg: TripSettings) -> tuple[Trip, ...]:
    """The finished trip, or nothing when it is too short to count."""
    trip = _trip(acc, ended_by)
    if trip.duration_ms < cfg.min_duration_ms or trip.distance_m < cfg.min_distance_m:
        return ()
    return (trip,)


def feed(state: TripState, s: Sample, cfg: TripSettings) -> Feed:
    """One sample into the detector: the new state and the trips it closed."""
    if state.last_ts_ms is not None and s.ts_ms < state.last_ts_ms:
        return Feed(state, (), late=True)
    ign = ignition_of(s.values)
    ignition = state.ignition if ign is None else ign
    mov = moving_of(s.values, cfg.moving_kmh)
    moving = state.moving if mov is None else mov
    trip, stopped, closed = _ended_before(state, s.ts_ms, cfg)
    if trip is not None:
        trip = _add(trip, s)
        if ignition is False:
            closed += _finish(trip, "ignition_off", cfg)
            trip = stopped = None
        elif moving:
            stopped = None
        elif stopped is None:
            stopped = trip
    elif moving and ignition is not False:
        trip = _add(_Acc(s.ts_ms, s.ts_ms, prior=(state.ignition, state.moving)), s)
    return Feed(TripState(s.ts_ms, ignition, moving, trip, stopped), closed)


class _Run:
    """A trip being built within one :func:`feed_many`: an :class:`_Acc`'s fields, changed
    in place per sample (the same arithmetic as :func:`_add`), frozen once at the end or
    when a snapshot is taken: no new ``_Acc`` per sample (decision 0056)."""

    __slots__ = ("fuel", "last_ms", "last_place", "max_speed", "odometer", "path_m", "prior",
                 "soc", "start_ms", "start_place")  # fmt: skip

    def __init__(self, a: _Acc) -> None:
        self.start_ms, self.last_ms = a.start_ms, a.last_ms
        self.start_place, self.last_place, self.path_m = a.start_place, a.last_place, a.path_m
        self.odometer, self.max_speed, self.soc, self.fuel = a.odometer, a.max_speed, a.soc, a.fuel
        self.prior = a.prior

    def add(self, values: Mapping[str, SignalValue], ts_ms: int) -> None:
        last = self.last_place
        place = position_of(values, last)
        if place is not None:
            if last is not None:
                self.path_m += distance_m(last, place)
            if self.start_place is None:
                self.start_place = place
            self.last_place = place
        self.last_ms = ts_ms
        speed = speed_of(values)
        if speed is not None:
            self.max_speed = max(abs(speed), self.max_speed or 0.0)
        odo = number_of(values, ODOMETER)
        if odo is not None:
            self.odometer = _first_last(self.odometer, odo)
        soc = number_of(values, SOC)
        if soc is not None:
            self.soc = _first_last(self.soc, soc)
        fuel = number_of(values, FUEL_LEVEL)
        if fuel is not None:
            self.fuel = _first_last(self.fuel, fuel)

    def freeze(self) -> _Acc:
        return _Acc(
            self.start_ms,
            self.last_ms,
            self.start_place,
            self.last_place,
            self.path_m,
            self.odometer,
            self.max_speed,
            self.soc,
            self.fuel,
            self.prior,
        )


def feed_many(state: TripState, samples: Sequence[Sample], cfg: TripSettings) -> FeedMany:
    """:func:`feed` folded over one vehicle's samples in order, a late one (older than the
    newest fed) skipped and reported by the oldest such time: the last state and every trip
    closed (property test: the same as the fold). The open trip accumulates in place and
    is built once (the trip fast path, decision 0056); a single sample goes to ``feed``."""
    if len(samples) == 1:  # a one-sample pass: nothing to accumulate
        one = feed(state, samples[0], cfg)
        if one.late:
            return FeedMany(state, (), samples[0].ts_ms)
        return FeedMany(one.state, one.closed)
    last_ts, ignition, moving = state.last_ts_ms, state.ignition, state.moving
    run = None if state.trip is None else _Run(state.trip)
    stopped = state.stopped
    closed: list[Trip] = []
    late: int | None = None
    fed = False
    still = cfg.moving_kmh
    for s in samples:
        ts, values = s.ts_ms, s.values
        if last_ts is not None and ts < last_ts:
            late = ts if late is None else min(late, ts)
            continue
        fed = True
        before_ignition, before_moving = ignition, moving
        ign = ignition_of(values)
        if ign is not None:
            ignition = ign
        mov = moving_of(values, still)
        if mov is not None:
            moving = mov
        last_ts = ts
        if run is not None or stopped is not None:
            run, stopped = _run_ended_before(run, stopped, ts, cfg, closed)
        if run is not None:
            run.add(values, ts)
            if ignition is False:
                closed += _finish(run.freeze(), "ignition_off", cfg)
                run = stopped = None
            elif moving:
                stopped = None
            elif stopped is None:
                stopped = run.freeze()
        elif moving and ignition is not False:
            run = _Run(_Acc(ts, ts, prior=(before_ignition, before_moving)))
            run.add(values, ts)
    if not fed:
        return FeedMany(state, (), late)
    trip = None if run is None else run.freeze()
    return FeedMany(TripState(last_ts, ignition, moving, trip, stopped), tuple(closed), late)


def _run_ended_before(
    run: _Run | None, stopped: _Acc | None, ts_ms: int, cfg: TripSettings, closed: list[Trip]
) -> tuple[_Run | None, _Acc | None]:
    """:func:`_ended_before` for :func:`feed_many`'s trip being built (a trip it ends is
    added to ``closed``)."""
    if run is not None and ts_ms - run.last_ms > cfg.max_gap_ms:
        closed += _finish(stopped or run.freeze(), "data_gap", cfg)
        return None, None
    if stopped is not None and ts_ms - stopped.last_ms >= cfg.parking_ms:
        closed += _finish(stopped, "parked", cfg)
        return None, None
    return run, stopped


def _ended_before(
    state: TripState, ts_ms: int, cfg: TripSettings
) -> tuple[_Acc | None, _Acc | None, tuple[Trip, ...]]:
    """Whether the time up to ``ts_ms`` ended the open trip: a hole in the data longer than
    ``max_gap_ms``, or standing for ``parking_ms``. Returns (trip, stopped, closed)."""
    trip, stopped = state.trip, state.stopped
    if trip is not None and ts_ms - trip.last_ms > cfg.max_gap_ms:
        return None, None, _finish(stopped or trip, "data_gap", cfg)
    if stopped is not None and ts_ms - stopped.last_ms >= cfg.parking_ms:
        return None, None, _finish(stopped, "parked", cfg)
    return trip, stopped, ()


def recompute(
    samples: Iterable[Sample], cfg: TripSettings, initial: TripState | None = None
) -> TripResult:
    """Trips over a window of samples in time order (a stable sort, so samples with equal
    times keep the order given), from ``initial`` (a :class:`Window`'s) or from scratch."""
    state, trips = initial or TripState(), list[Trip]()
    for s in sorted(samples, key=lambda x: x.ts_ms):
        state, closed, _ = feed(state, s, cfg)
        trips.extend(closed)
    return TripResult(tuple(trips), open_trip(state), state)


def open_trip(state: TripState) -> Trip | None:
    """The trip under way, provisionally (what a live view shows)."""
    return None if state.trip is None else _trip(state.trip, "open")


def window_start(trips: Sequence[Trip], state: TripState, late_ts_ms: int) -> Window:
    """Where to recompute from after a late sample: the start of the last trip (closed or
    open) that began at or before it, with what the detector knew just before."""
    candidates = [t for t in trips if t.start_ms <= late_ts_ms]
    current = open_trip(state)
    if current is not None and current.start_ms <= late_ts_ms:
        candidates.append(current)
    if not candidates:
        return Window(None, TripState())
    last = max(candidates, key=lambda t: t.start_ms)
    return Window(last.start_ms, TripState(ignition=last.prior_ignition, moving=last.prior_moving))


def stops(trips: Sequence[Trip]) -> tuple[Stop, ...]:
    """The stops between consecutive trips (ordered by start)."""
    return tuple(Stop(a.end_ms, b.start_ms, a.end_place) for a, b in itertools.pairwise(trips))
