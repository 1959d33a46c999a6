"""Trips and stops (issue 13): scripted ignition and motion patterns split and join
correctly, the incremental detector agrees with a recompute, and a store-and-forward batch
that arrives late ends up in the right trip."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.fleet.geo import Point
from gateway.core.fleet.signals import IGNITION, LATITUDE, LONGITUDE, ODOMETER, SOC, SPEED, Sample
from gateway.core.fleet.trips import (
    FeedMany,
    Trip,
    TripSettings,
    TripState,
    feed,
    feed_many,
    open_trip,
    recompute,
    stops,
    window_start,
)
from schemas.payloads import SignalValue

T0 = 1_796_630_400_000
ORIGIN = Point(11.5755, 48.1374)
M_PER_DEG = math.pi / 180 * 6_371_008.8
CFG = TripSettings()


class Script:
    """A vehicle's life at one sample every ``step_s`` seconds, sent on change (every
    ``heartbeat`` samples in full), with position, odometer and state of charge."""

    def __init__(self, step_s: int = 5, heartbeat: int = 12) -> None:
        self.t, self.step_ms, self.heartbeat = T0, step_s * 1000, heartbeat
        self.north_m, self.soc, self.ignition = 0.0, 80.0, "OFF"
        self.samples: list[Sample] = []
        self._sent: dict[str, SignalValue] = {}

    def _emit(self, speed: float) -> None:
        self.t += self.step_ms
        self.north_m += speed / 3.6 * self.step_ms / 1000
        self.soc -= speed * 1e-4
        full: dict[str, SignalValue] = {
            SPEED: speed,
            IGNITION: self.ignition,
            LATITUDE: ORIGIN.lat + self.north_m / M_PER_DEG,
            LONGITUDE: ORIGIN.lon,
            ODOMETER: round(self.north_m),
            SOC: round(self.soc, 1),
        }
        heartbeat = len(self.samples) % self.heartbeat == 0
        values = {k: v for k, v in full.items() if heartbeat or self._sent.get(k) != v}
        if LATITUDE in values or LONGITUDE in values:  # a fix is sent whole, as units do
            values |= {LATITUDE: full[LATITUDE], LONGITUDE: full[LONGITUDE]}
        self._sent.update(values)
        self.samples.append(Sample(self.t, values, len(self.samples)))

    def on(self) -> Script:
        self.ignition = "ON"
        self._emit(0.0)
        return self

    def off(self) -> Script:
        self.ignition = "OFF"
        self._emit(0.0)
        return self

    def drive(self, seconds: int, kmh: float = 50.0) -> Script:
        for _ in range(seconds * 1000 // self.step_ms):
            self._emit(kmh)
        return self

    def stand(self, seconds: int) -> Script:
        for _ in range(seconds * 1000 // self.step_ms):
            self._emit(0.0)
        return self

    def silent(self, seconds: int) -> Script:
        self.t += seconds * 1000
        return self


def trips_of(samples: Iterable[Sample]) -> tuple[tuple[Trip, ...], Trip | None]:
    result = recompute(samples, CFG)
    return result.trips, result.open


def live(batches: Iterable[list[Sample]]) -> tuple[tuple[Trip, ...], Trip | None]:
    """What an adapter does with each committed batch: feed its samples; when the batch
    holds a late one, recompute once from :func:`window_start` over the stored samples and
    replace the trips from there."""
    stored: list[Sample] = []
    trips: list[Trip] = []
    state = TripState()
    for batch in batches:
        stored.extend(batch)
        oldest = min((s.ts_ms for s in batch), default=None)
        if oldest is None or state.last_ts_ms is None or oldest >= state.last_ts_ms:
            for s in batch:
                state, closed, _ = feed(state, s, CFG)
                trips.extend(closed)
            continue
        start, initial = window_start(trips, state, oldest)
        kept = [t for t in trips if start is not None and t.start_ms < start]
        redone = recompute((x for x in stored if start is None or x.ts_ms >= start), CFG, initial)
        trips, state = kept + list(redone.trips), redone.state
    return tuple(trips), open_trip(state)


def singles(samples: list[Sample]) -> list[list[Sample]]:
    return [[s] for s in samples]


def test_a_drive_between_ignition_on_and_off_is_one_trip() -> None:
    s = Script().on().stand(30).drive(600).stand(20).off().stand(60)
    (trip,), open_ = trips_of(s.samples)
    assert open_ is None
    assert trip.ended_by == "ignition_off"
    assert trip.duration_ms == pytest.approx(620_000, abs=5_000)
    assert trip.distance_m == pytest.approx(50 / 3.6 * 600, rel=0.01)
    assert trip.max_speed_kmh == 50.0
    assert trip.avg_speed_kmh == pytest.approx(50 * 600 / 620, rel=0.02)
    assert trip.energy_used_pct == pytest.approx(600 / 5 * 50 * 1e-4, abs=0.1)
    assert trip.start_place is not None
    assert trip.end_place is not None


def test_a_red_light_does_not_split_a_trip_but_a_delivery_stop_does() -> None:
    s = Script().on().drive(300).stand(60).drive(300).stand(5 * 60).drive(300).off()
    trips, _ = trips_of(s.samples)
    assert [t.ended_by for t in trips] == ["parked", "ignition_off"]
    (stop,) = stops(trips)
    assert stop.end_ms - stop.start_ms == pytest.approx(5 * 60_000, abs=10_000)
    assert stop.place == trips[0].end_place


def test_moving_across_the_yard_is_not_a_trip() -> None:
    s = Script().on().drive(30, kmh=10).off().on().drive(300).off()
    trips, _ = trips_of(s.samples)
    assert len(trips) == 1
    assert trips[0].distance_m > 4000


def test_distance_uses_positions_when_there_is_no_odometer() -> None:
    s = Script().on().drive(600).off()
    bare = [Sample(x.ts_ms, {k: v for k, v in x.values.items() if k != ODOMETER}, x.seq)
            for x in s.samples]  # fmt: skip
    (with_odo,), _ = trips_of(s.samples)
    (without,), _ = trips_of(bare)
    assert without.distance_m == pytest.approx(with_odo.distance_m, rel=0.01)


def test_an_open_trip_is_provisional() -> None:
    s = Script().on().drive(300)
    trips, open_ = trips_of(s.samples)
    assert trips == ()
    assert open_ is not None
    assert open_.ended_by == "open"


def test_a_late_batch_joins_the_two_halves_of_a_trip() -> None:
    """A unit in a tunnel for 15 minutes buffers its samples and uploads them after live
    data resumed: before the batch the trip is split by the hole, after it, it is one."""
    s = Script().on().drive(600).drive(15 * 60).drive(600).off()
    hole = [x for x in s.samples if T0 + 605_000 <= x.ts_ms < T0 + 1_505_000]
    live_part = [x for x in s.samples if x not in hole]
    before, _ = live(singles(live_part))
    assert [t.ended_by for t in before] == ["data_gap", "ignition_off"]
    after, open_ = live([*singles(live_part), hole])
    assert (after, open_) == trips_of(s.samples)
    assert [t.ended_by for t in after] == ["ignition_off"]


def test_a_trip_that_starts_cruising_after_a_hole_recomputes_exactly() -> None:
    """Found by the property below: after a hole in the data the vehicle is still cruising,
    so its first sample sends no speed (unchanged); a recompute from that trip's start must
    begin knowing it moves (``prior_moving``), or it starts the trip a sample later."""
    samples = Script(step_s=10, heartbeat=6).on().drive(870, 8.0).silent(591).drive(30, 8.0)
    s = samples.samples
    assert SPEED not in s[-3].values
    (first,), second = trips_of(s)
    assert first.ended_by == "data_gap"
    assert second is not None
    assert second.prior_moving is True
    assert live([*singles(s[:-2]), [s[-1]], [s[-2]]]) == trips_of(s)


# --- properties ---------------------------------------------------------------------------

drive = st.tuples(st.just("drive"), st.integers(10, 900), st.sampled_from([8.0, 30.0, 90.0]))
segment = st.one_of(
    drive,
    drive,  # twice: half the segments drive, so most scripts have trips to split and join
    st.tuples(st.just("stand"), st.integers(5, 600), st.just(0.0)),
    st.tuples(st.just("off"), st.integers(0, 600), st.just(0.0)),
    st.tuples(st.just("on"), st.just(0), st.just(0.0)),
    st.tuples(st.just("silent"), st.integers(60, 1_800), st.just(0.0)),
)


def scripted(segments: list[tuple[str, int, float]]) -> list[Sample]:
    s = Script(step_s=10, heartbeat=6).on()
    for kind, seconds, kmh in segments:
        if kind == "drive":
            s.drive(seconds, kmh)
        elif kind == "stand":
            s.stand(seconds)
        elif kind == "off":
            s.off().stand(seconds)
        elif kind == "on":
            s.on()
        else:
            s.silent(seconds)
    return s.samples


@settings(max_examples=80, deadline=None)
@given(st.lists(segment, max_size=14), st.data())
def test_incremental_with_a_late_batch_equals_recompute(
    segments: list[tuple[str, int, float]], data: st.DataObject
) -> None:
    """Hold back any contiguous run of samples and deliver it later as one batch, at any
    point after its own time: the live detector (with its recompute on late samples) ends
    with the same trips as a recompute over everything."""
    samples = scripted(segments)
    n = len(samples)
    i = data.draw(st.integers(0, n))
    j = data.draw(st.integers(i, n))
    k = data.draw(st.integers(j, n))
    arrivals = [*singles(samples[:i] + samples[j:k]), samples[i:j], *singles(samples[k:])]
    assert live(arrivals) == trips_of(samples)


@settings(max_examples=80, deadline=None)
@given(st.lists(segment, max_size=14))
def test_trips_are_ordered_disjoint_and_within_bounds(
    segments: list[tuple[str, int, float]],
) -> None:
    trips, open_ = trips_of(scripted(segments))
    every = [*trips, *([open_] if open_ else [])]
    for a, b in itertools.pairwise(every):
        assert a.end_ms <= b.start_ms
    for t in trips:
        assert t.duration_ms >= CFG.min_duration_ms
        assert t.distance_m >= CFG.min_distance_m
        assert t.max_speed_kmh is not None
        assert t.avg_speed_kmh <= t.max_speed_kmh * 1.05 + 1


def fold(state: TripState, samples: list[Sample]) -> FeedMany:
    """:func:`feed` over ``samples``, a late one skipped (what the worker did before)."""
    closed: list[Trip] = []
    late: int | None = None
    for s in samples:
        fed = feed(state, s, CFG)
        if fed.late:
            late = s.ts_ms if late is None else min(late, s.ts_ms)
        else:
            state = fed.state
            closed.extend(fed.closed)
    return FeedMany(state, tuple(closed), late)


@settings(max_examples=150, deadline=None)
@given(st.lists(segment, max_size=14), st.data())
def test_feed_many_is_feed_folded_pass_by_pass(
    segments: list[tuple[str, int, float]], data: st.DataObject
) -> None:
    """The trip fast path (decision 0056): a vehicle's samples cut into passes of any
    sizes, some samples moved later (late ones), some signals dropped from some samples
    (a fix without the odometer, a sample with no position): ``feed_many`` pass by pass
    gives every pass the same state, closed trips and oldest late time as ``feed``
    folded over it."""
    samples = scripted(segments)
    if data.draw(st.booleans()):  # drop signals from some samples
        dropped = data.draw(
            st.lists(st.sampled_from([SPEED, IGNITION, LATITUDE, LONGITUDE, ODOMETER, SOC]))
        )
        samples = [
            Sample(s.ts_ms, {k: v for k, v in s.values.items() if k not in dropped}, s.seq)
            if i % 3 == 0
            else s
            for i, s in enumerate(samples)
        ]
    if len(samples) > 2:  # move a few samples later in the order: late ones
        for _ in range(data.draw(st.integers(0, 3))):
            i = data.draw(st.integers(0, len(samples) - 1))
            j = data.draw(st.integers(i, len(samples) - 1))
            samples.insert(j, samples.pop(i))
    state = many = TripState()
    at = 0
    while at < len(samples):
        size = data.draw(st.integers(1, 12))
        batch = samples[at : at + size]
        at += size
        expected = fold(state, batch)
        got = feed_many(many, batch, CFG)
        assert got == expected
        state, many = expected.state, got.state


@pytest.mark.parametrize(
    "segments",
    [
        # a stop shorter than parking_ms, then a hole: the trip ends where it stopped
        [("drive", 300, 50.0), ("stand", 60, 0.0), ("silent", 900, 0.0), ("drive", 300, 40.0)],
        # a delivery stop (parked), a red light, ignition off while driving
        [
            ("drive", 300, 50.0),
            ("stand", 240, 0.0),
            ("drive", 200, 30.0),
            ("stand", 30, 0.0),
            ("drive", 100, 60.0),
            ("off", 60, 0.0),
            ("on", 0, 0.0),
            ("drive", 120, 20.0),
        ],
    ],
)
def test_feed_many_is_feed_folded_for_each_way_a_trip_ends(
    segments: list[tuple[str, int, float]],
) -> None:
    samples = scripted(segments)
    for size in (1, 2, 7, len(samples)):
        state = many = TripState()
        for at in range(0, len(samples), size):
            expected = fold(state, samples[at : at + size])
            got = feed_many(many, samples[at : at + size], CFG)
            assert got == expected
            state, many = expected.state, got.state
        assert many.last_ts_ms == samples[-1].ts_ms
    closed, open_ = trips_of(samples)
    assert len(closed) + (open_ is not None) >= 2  # the trip did end
