"""Trip patterns: a commuter's daily routine in local time, and the default pattern unchanged.

The default-pattern stream is compared with ``tests/data/default_pattern_stream.json``,
recorded with the vehicle model as it was before trip patterns existed: the default must
stay byte-identical (same signals, same events, same random draws).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device_sim.city import MUNICH, haversine_m
from device_sim.scenario import ScenarioError, load, parse, render
from device_sim.vehicle import Phase, SimulatedVehicle, TripPattern, VehicleProfile, make_vin
from schemas.payloads import EventType, SignalValue, validate_signals

BASELINE = Path(__file__).parent / "data" / "default_pattern_stream.json"
COMMUTERS = Path(__file__).parent.parent / "device_sim" / "scenarios" / "commuters.toml"
MUNICH_WINTER = dt.timezone(dt.timedelta(hours=1))
#: Monday 2026-11-30, 00:00 local (Munich winter)
MONDAY = dt.datetime(2026, 11, 30, tzinfo=MUNICH_WINTER)
HOME = "Marienplatz"
LAT = "Vehicle.CurrentLocation.Latitude"
LON = "Vehicle.CurrentLocation.Longitude"
STEP_S = 5.0
STEPS_PER_HOUR = 720


def ms(when: dt.datetime) -> int:
    return round(when.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Point:
    """One step of a run, in local time."""

    when: dt.datetime
    phase: Phase
    lat: float
    lon: float
    odometer_m: float


@dataclass(slots=True)
class Run:
    vehicle: SimulatedVehicle
    start: dt.datetime
    points: list[Point]
    #: (local time, event type, node the vehicle is at or heading for)
    ignitions: list[tuple[dt.datetime, EventType, str]]
    signals: list[dict[str, SignalValue]]

    def at(self, hour: float, day: int = 0) -> Point:
        index = round((day * 24 + hour) * STEPS_PER_HOUR) - 1
        point = self.points[index]
        assert point.when == self.start + dt.timedelta(days=day, hours=hour), point.when
        return point

    def between(self, day: int, lo_h: float, hi_h: float) -> list[Point]:
        start = max(0, round((day * 24 + lo_h) * STEPS_PER_HOUR) - 1)
        end = round((day * 24 + hi_h) * STEPS_PER_HOUR)
        return self.points[start:end]


def commuter(
    seed: int | str = 1, start: dt.datetime = MONDAY, profile: VehicleProfile | None = None
) -> SimulatedVehicle:
    return SimulatedVehicle(
        make_vin(7),
        profile or VehicleProfile.ELECTRIC_CAR,
        MUNICH,
        random.Random(seed),
        HOME,
        start_ms=ms(start),
        initial_level_pct=80.0,
        pattern=TripPattern.COMMUTE,
        utc_offset_min=60,
    )


def simulate(vehicle: SimulatedVehicle, hours: float) -> Run:
    start = dt.datetime.fromtimestamp(vehicle.sim_time_ms / 1000, MUNICH_WINTER)
    run = Run(vehicle, start, [], [], [])
    for i in range(round(hours * STEPS_PER_HOUR)):
        vehicle.step(STEP_S)
        when = dt.datetime.fromtimestamp(vehicle.sim_time_ms / 1000, MUNICH_WINTER)
        lat, lon = vehicle.position()
        run.points.append(Point(when, vehicle.phase, lat, lon, vehicle.odometer_m))
        for event in vehicle.pending_events():
            if event.type in (EventType.IGNITION_ON, EventType.IGNITION_OFF):
                run.ignitions.append((when, event.type, vehicle.route[-1]))
        if i % 60 == 0:
            run.signals.append(vehicle.signals())
    return run


def near(point: Point | Mapping[str, SignalValue], node: str, within_m: float = 50.0) -> bool:
    n = MUNICH.nodes[node]
    if isinstance(point, Point):
        lat, lon = point.lat, point.lon
    else:
        lat, lon = float(point[LAT]), float(point[LON])  # type: ignore[arg-type]
    return haversine_m(lat, lon, n.lat, n.lon) <= within_m


@pytest.fixture(scope="module")
def three_days() -> Run:
    return simulate(commuter(), 72.0)


def test_commuter_has_home_and_work() -> None:
    car = commuter()
    assert car.pattern is TripPattern.COMMUTE
    assert car.home == HOME
    assert car.work is not None
    assert car.work != HOME
    assert MUNICH.neighbours(car.work)
    home, work = MUNICH.nodes[HOME], MUNICH.nodes[car.work]
    assert haversine_m(home.lat, home.lon, work.lat, work.lon) >= 1500.0
    assert commuter().work == car.work  # drawn from the seed


def test_default_vehicle_has_no_work_place() -> None:
    car = SimulatedVehicle(make_vin(1), VehicleProfile.ELECTRIC_CAR, MUNICH, random.Random(1), HOME)
    assert car.pattern is TripPattern.RANDOM
    assert (car.home, car.work) == (HOME, None)


@pytest.mark.parametrize("day", [0, 1, 2])
def test_weekday_routine(three_days: Run, day: int) -> None:
    run = three_days
    work = run.vehicle.work
    assert work is not None
    night = run.at(3.0, day)
    assert night.phase is Phase.PARKED
    assert near(night, HOME)
    morning = run.at(9.0, day)
    assert morning.phase in (Phase.DRIVING, Phase.WAITING, Phase.ALIGHTING, Phase.PARKED)
    assert not near(morning, HOME, 1.0)  # left home (driving, or at work already)
    at_work = run.at(10.0, day)
    assert at_work.phase is Phase.PARKED
    assert near(at_work, work)
    assert run.at(12.0, day).phase is Phase.PARKED
    # long parking: ignition off, not a metre between 10:00 and 16:00
    stay = run.between(day, 10.0, 16.0)
    assert {p.phase for p in stay} == {Phase.PARKED}
    assert {(p.lat, p.lon, p.odometer_m) for p in stay} == {
        (at_work.lat, at_work.lon, at_work.odometer_m)
    }
    # home in the evening, possibly after one short errand; home for the night by 23:00
    evening = run.at(21.0, day)
    assert near(evening, HOME) or any(
        t.date() == evening.when.date() and t.hour >= 19 and node != HOME
        for t, kind, node in run.ignitions
        if kind is EventType.IGNITION_ON
    )
    late = run.at(23.0, day)
    assert late.phase is Phase.PARKED
    assert near(late, HOME)
    assert {p.phase for p in run.between(day, 23.0, 24.0)} == {Phase.PARKED}
    # leaves home between 07:00 and 08:30, and from work between 16:30 and 18:30
    starts = [
        (t, node)
        for t, kind, node in run.ignitions
        if kind is EventType.IGNITION_ON and t.date() == night.when.date()
    ]
    assert starts[0][1] == work
    assert dt.time(7, 0) <= starts[0][0].time() <= dt.time(8, 31)
    assert starts[1][1] == HOME
    assert dt.time(16, 30) <= starts[1][0].time() <= dt.time(18, 31)
    assert len(starts) in (2, 4)  # to work and back, maybe an errand there and back


def test_commuter_signals_stay_in_the_catalog(three_days: Run) -> None:
    for signals in three_days.signals:
        validate_signals(signals)
    at_work = three_days.signals[10 * 12]  # one every 60 steps (5 min): Monday 10:00:05
    assert three_days.vehicle.work is not None
    assert near(at_work, three_days.vehicle.work)
    assert at_work["Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"] is True
    assert at_work["Vehicle.LowVoltageSystemState"] == "LOCK"


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_weekend_has_one_or_two_errands(seed: int) -> None:
    saturday = MONDAY + dt.timedelta(days=5)
    run = simulate(commuter(seed, saturday), 24.0)
    starts = [(t, node) for t, kind, node in run.ignitions if kind is EventType.IGNITION_ON]
    errands = [node for _, node in starts if node != HOME]
    assert 1 <= len(errands) <= 2
    assert len(starts) == 2 * len(errands)  # each errand there and back
    assert all(dt.time(10, 0) <= t.time() <= dt.time(17, 0) for t, _ in starts)
    assert run.points[-1].phase is Phase.PARKED
    assert near(run.points[-1], HOME)
    early = run.between(0, 0.0, 10.0)
    assert {p.phase for p in early} == {Phase.PARKED}


def test_started_mid_day_skips_outings_already_over() -> None:
    evening = MONDAY + dt.timedelta(hours=21, minutes=30)
    run = simulate(commuter(5, evening), 8.0)
    assert not run.ignitions  # parked at home until the next morning
    assert {p.phase for p in run.points} == {Phase.PARKED}


def test_same_seed_same_stream() -> None:
    a, b = commuter(9), commuter(9)
    for _ in range(3 * STEPS_PER_HOUR):
        a.step(60.0)
        b.step(60.0)
        assert a.signals() == b.signals()
        assert a.pending_events() == b.pending_events()


def test_commute_is_for_private_cars() -> None:
    with pytest.raises(ValueError, match="cannot commute"):
        commuter(profile=VehicleProfile.DELIVERY_VAN)
    with pytest.raises(ValueError, match="utc_offset_min"):
        SimulatedVehicle(
            make_vin(1),
            VehicleProfile.ELECTRIC_CAR,
            MUNICH,
            random.Random(1),
            HOME,
            utc_offset_min=1440,
        )


def test_default_pattern_stream_unchanged() -> None:
    recorded: dict[str, Any] = json.loads(BASELINE.read_text(encoding="utf-8"))
    assert len(recorded["vehicles"]) == 3
    for v in recorded["vehicles"]:
        rng = random.Random(v["seed"])
        vehicle = SimulatedVehicle(
            make_vin(v["index"]),
            VehicleProfile(v["profile"]),
            MUNICH,
            rng,
            v["start_node"],
            start_ms=recorded["start_ms"],
            first_event_seq=100,
        )
        samples: list[list[Any]] = []
        events: list[list[Any]] = []
        for i in range(1, recorded["steps"] + 1):
            vehicle.step(recorded["step_s"])
            events += [
                [e.seq, e.ts, str(e.type), e.code, e.detail] for e in vehicle.pending_events()
            ]
            if i % recorded["record_every"] == 0:
                signals = vehicle.signals()
                assert sorted(signals) == v["paths"]
                samples.append([vehicle.sim_time_ms, [signals[p] for p in v["paths"]]])
        assert samples == v["samples"], v["profile"]
        assert events == v["events"], v["profile"]
        assert rng.random() == v["rng_after"], v["profile"]  # the same random draws


SCENARIO = """
seed = 3
start = "2026-11-30T06:00:00+01:00"
duration = "4h"
report_interval_s = 60

[[vehicles]]
count = 1
profile = "combustion_suv"
name = "suv"
{extra}
"""


def test_scenario_pattern_key() -> None:
    sc = parse(SCENARIO.format(extra='pattern = "commute"'), source="<t>")
    assert sc.vehicles[0].pattern is TripPattern.COMMUTE
    assert sc.utc_offset_min == 60
    (suv,) = sc.fleet()
    assert suv.pattern is TripPattern.COMMUTE
    samples = [json.loads(m.payload) for m in render(sc) if m.topic.endswith("/telemetry")]
    home = MUNICH.nodes[suv.start_node]
    # parked at home until 07:00 local, gone by 10:00
    early = [s for s in samples if s["ts"] < ms(MONDAY + dt.timedelta(hours=7))]
    assert early
    assert all(s["signals"]["Vehicle.Speed"] == 0.0 for s in early)
    assert all(
        haversine_m(s["signals"][LAT], s["signals"][LON], home.lat, home.lon) < 50.0 for s in early
    )
    last = samples[-1]["signals"]
    assert haversine_m(last[LAT], last[LON], home.lat, home.lon) > 500.0
    default = parse(SCENARIO.format(extra=""), source="<t>")
    assert default.vehicles[0].pattern is TripPattern.RANDOM
    assert parse(SCENARIO.format(extra='pattern = "random"'), source="<t>") == default


@pytest.mark.parametrize(
    "extra",
    ['pattern = "commuter"', "pattern = 1", "pattern = []", 'pattern = "commute"\nprofile2 = 1'],
)
def test_scenario_pattern_errors_name_the_key(extra: str) -> None:
    key = "vehicles[1].profile2" if "profile2" in extra else "vehicles[1].pattern"
    with pytest.raises(ScenarioError, match=re.escape(f"<t>: {key}: ")):
        parse(SCENARIO.format(extra=extra), source="<t>")


def test_scenario_commute_only_for_private_cars() -> None:
    text = SCENARIO.format(extra='pattern = "commute"').replace("combustion_suv", "truck")
    with pytest.raises(ScenarioError, match=r"<t>: vehicles\[1\]\.pattern: only"):
        parse(text, source="<t>")


def test_commuters_example() -> None:
    sc = load(COMMUTERS)
    assert sc.start.weekday() == 0
    assert [v.name for v in sc.fleet()] == ["commuter-1", "commuter-2"]
    assert all(v.pattern is TripPattern.COMMUTE for v in sc.fleet())
    assert all(v.profile is VehicleProfile.ELECTRIC_CAR for v in sc.fleet())
