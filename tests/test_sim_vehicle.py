"""The simulator's pure core: the Munich road network, routing and the vehicle model.

No servers: everything runs on simulated time. The long runs check every sample against the
catalog exactly as the gateway will (``schemas.payloads.validate_signals``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sim.city import (
    DEPOT,
    MUNICH,
    Edge,
    Node,
    RoadNetwork,
    path_length_m,
    random_route,
    shortest_path,
)
from device_sim.vehicle import Phase, SimulatedVehicle, VehicleProfile, make_vin
from schemas.payloads import (
    DEFAULT_LIMITS,
    Event,
    EventType,
    SignalValue,
    decode_event,
    encode_event,
    validate_signals,
)
from schemas.vin import is_valid_vin

# 2025-06-15 12:00 UTC: a fixed, realistic start for the simulated clock
START_MS = 1_749_988_800_000
NODES = sorted(MUNICH.nodes)

SPEED = "Vehicle.Speed"
ODOMETER = "Vehicle.TraveledDistance"
LAT = "Vehicle.CurrentLocation.Latitude"
LON = "Vehicle.CurrentLocation.Longitude"
HEADING = "Vehicle.CurrentLocation.Heading"
LV_STATE = "Vehicle.LowVoltageSystemState"
LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
IS_CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
FUEL_LOW = "Vehicle.Powertrain.FuelSystem.IsFuelLevelLow"
RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
HAZARD = "Vehicle.Body.Lights.Hazard.IsSignaling"
DTC_COUNT = "Vehicle.Diagnostics.DTCCount"
DTC_LIST = "Vehicle.Diagnostics.DTCList"

EV_ONLY = {SOC, IS_CHARGING, "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"}
COMBUSTION_ONLY = {FUEL, FUEL_LOW, RPM, "Vehicle.Powertrain.CombustionEngine.IsRunning"}


def vehicle(
    profile: VehicleProfile,
    seed: int,
    *,
    start: str = DEPOT,
    start_ms: int = START_MS,
    level: float | None = None,
) -> SimulatedVehicle:
    return SimulatedVehicle(
        make_vin(seed % 10**6),
        profile,
        MUNICH,
        random.Random(seed),
        start,
        start_ms=start_ms,
        initial_level_pct=level,
    )


def in_munich(lat: float, lon: float) -> bool:
    return 48.05 <= lat <= 48.25 and 11.40 <= lon <= 11.75


def num(signals: Mapping[str, SignalValue], path: str) -> float:
    """A numeric signal's value (bools are not numbers here)."""
    value = signals[path]
    assert isinstance(value, int | float)
    assert not isinstance(value, bool)
    return float(value)


# --- the road network ------------------------------------------------------------------------


def test_network_is_connected_and_lies_in_central_munich() -> None:
    assert 40 <= len(MUNICH.nodes) <= 80
    assert DEPOT in MUNICH.nodes
    seen = {NODES[0]}
    queue = deque(seen)
    while queue:
        for nxt in MUNICH.neighbours(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    assert seen == set(MUNICH.nodes)
    for node in MUNICH.nodes.values():
        assert in_munich(node.lat, node.lon), node
    for edge in MUNICH.edges:
        assert edge.name
        assert edge.speed_limit_kmh in (30, 50, 60)
        assert 50 < MUNICH.edge_length_m(edge.a, edge.b) < 2000, edge


def test_network_geometry() -> None:
    # Marienplatz to the Isartor along the Tal: about half a kilometre, east-south-east
    length = MUNICH.edge_length_m("Marienplatz", "Isartor")
    assert 400 < length < 600
    assert length == MUNICH.edge_length_m("Isartor", "Marienplatz")
    assert 100 < MUNICH.bearing_deg("Marienplatz", "Isartor") < 135
    back = MUNICH.bearing_deg("Isartor", "Marienplatz")
    assert back == pytest.approx((MUNICH.bearing_deg("Marienplatz", "Isartor") + 180) % 360, abs=1)
    start, end = MUNICH.nodes["Marienplatz"], MUNICH.nodes["Isartor"]
    assert MUNICH.interpolate("Marienplatz", "Isartor", 0.0) == (start.lat, start.lon)
    assert MUNICH.interpolate("Marienplatz", "Isartor", 1.0) == (end.lat, end.lon)
    mid_lat, mid_lon = MUNICH.interpolate("Marienplatz", "Isartor", 0.5)
    assert mid_lat == pytest.approx((start.lat + end.lat) / 2)
    assert mid_lon == pytest.approx((start.lon + end.lon) / 2)
    assert MUNICH.edge("Isartor", "Marienplatz").name == "Tal"
    assert "Isartor" in MUNICH.neighbours("Marienplatz")
    with pytest.raises(ValueError, match="fraction"):
        MUNICH.interpolate("Marienplatz", "Isartor", 1.5)
    with pytest.raises(KeyError):
        MUNICH.edge_length_m("Marienplatz", "Münchner Freiheit")
    with pytest.raises(KeyError):
        MUNICH.neighbours("Atlantis")


def test_network_rejects_bad_data() -> None:
    a, b = Node("A", 48.1, 11.5), Node("B", 48.2, 11.6)
    with pytest.raises(ValueError, match="unknown node"):
        RoadNetwork.build([a], [Edge("A", "B", "x", 50)])
    with pytest.raises(ValueError, match="joined twice"):
        RoadNetwork.build([a, b], [Edge("A", "B", "x", 50), Edge("B", "A", "y", 30)])
    with pytest.raises(ValueError, match="duplicate"):
        RoadNetwork.build([a, a], [])


def test_shortest_path_is_shortest() -> None:
    # Floyd-Warshall as the reference
    inf = math.inf
    dist = {(x, y): 0.0 if x == y else inf for x in NODES for y in NODES}
    for edge in MUNICH.edges:
        length = MUNICH.edge_length_m(edge.a, edge.b)
        dist[edge.a, edge.b] = dist[edge.b, edge.a] = length
    for k, i, j in itertools.product(NODES, NODES, NODES):
        if dist[i, k] + dist[k, j] < dist[i, j]:
            dist[i, j] = dist[i, k] + dist[k, j]
    for a, b in itertools.product(NODES[::7], NODES[::5]):
        path = shortest_path(MUNICH, a, b)
        assert path[0] == a
        assert path[-1] == b
        assert path_length_m(MUNICH, path) == pytest.approx(dist[a, b])
    assert shortest_path(MUNICH, "Marienplatz", "Marienplatz") == ("Marienplatz",)
    assert shortest_path(MUNICH, "Marienplatz", "Isartor") == ("Marienplatz", "Isartor")
    with pytest.raises(KeyError):
        shortest_path(MUNICH, "Marienplatz", "Atlantis")


def test_random_route_is_long_enough_drivable_and_deterministic() -> None:
    for seed in range(20):
        route = random_route(MUNICH, random.Random(seed), DEPOT, 3000.0)
        assert route[0] == DEPOT
        assert path_length_m(MUNICH, route) >= 3000.0  # also checks every step is an edge
        assert all(a != b for a, b in itertools.pairwise(route))
        assert route == random_route(MUNICH, random.Random(seed), DEPOT, 3000.0)
    assert len(random_route(MUNICH, random.Random(1), "Marienplatz", 0.0)) >= 2


# --- VINs --------------------------------------------------------------------------------------


def test_make_vin() -> None:
    vins = [make_vin(i) for i in range(1000)]
    assert all(len(v) == 17 and is_valid_vin(v) for v in vins)
    assert len(set(vins)) == len(vins)
    assert make_vin(42) == make_vin(42) == "WSMZZZ00000000042"
    assert make_vin(7, prefix="WVW") == "WVW00000000000007"
    for prefix in ("WSIM", "wsm", "WQ", ""):
        with pytest.raises(ValueError, match="prefix"):
            make_vin(1, prefix=prefix)
    with pytest.raises(ValueError, match="index"):
        make_vin(-1)


# --- the vehicle model -------------------------------------------------------------------------


def test_vehicle_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="VIN"):
        SimulatedVehicle("WSIM1", VehicleProfile.ELECTRIC_CAR, MUNICH, random.Random(1), DEPOT)
    with pytest.raises(KeyError):
        vehicle(VehicleProfile.ELECTRIC_CAR, 1, start="Atlantis")
    with pytest.raises(ValueError, match="initial_level_pct"):
        vehicle(VehicleProfile.ELECTRIC_CAR, 1, level=101.0)
    car = vehicle(VehicleProfile.ELECTRIC_CAR, 1)
    for dt in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="dt_s"):
            car.step(dt)


def test_same_seed_gives_identical_streams() -> None:
    def stream(seed: int) -> list[tuple[dict[str, SignalValue], list[Event]]]:
        car = vehicle(VehicleProfile.COMBUSTION_SUV, seed)
        out: list[tuple[dict[str, SignalValue], list[Event]]] = []
        for _ in range(1800):
            car.step(1.0)
            out.append((car.signals(), car.pending_events()))
        return out

    first = stream(7)
    assert first == stream(7)
    assert first != stream(8)


@dataclass
class RunRecord:
    """What a long run saw."""

    samples: int = 0
    max_speed_kmh: float = 0.0
    parked_samples: int = 0
    charging_samples: int = 0
    min_soc: float = 100.0
    depot_visits: int = 0
    hazard_samples: int = 0
    has_driven: bool = False
    events: list[Event] = field(default_factory=list)


def run_and_check(car: SimulatedVehicle, seconds: int, dt: float = 1.0) -> RunRecord:
    """Step ``car`` and check every sample against the catalog and basic physics."""
    record = RunRecord()
    previous = car.signals()
    validate_signals(previous)
    time_ms = car.sim_time_ms
    for _ in range(round(seconds / dt)):
        car.step(dt)
        signals = car.signals()
        validate_signals(signals)  # types, integer ranges, min/max, allowed values
        assert car.sim_time_ms > time_ms
        time_ms = car.sim_time_ms
        speed = num(signals, SPEED)
        assert 0.0 <= speed <= 70.0
        # no more than 2.5 m/s² (plus rounding) of acceleration between samples
        assert speed - num(previous, SPEED) <= 2.5 * 3.6 * dt + 0.2
        assert num(signals, ODOMETER) >= num(previous, ODOMETER)
        assert in_munich(num(signals, LAT), num(signals, LON))
        dtcs = signals[DTC_LIST]
        assert isinstance(dtcs, list)
        assert num(signals, DTC_COUNT) == len(dtcs)
        if car.profile.is_electric:
            assert not EV_ONLY.isdisjoint(signals)
            assert COMBUSTION_ONLY.isdisjoint(signals)
            record.min_soc = min(record.min_soc, num(signals, SOC))
            if signals[IS_CHARGING]:
                record.charging_samples += 1
                assert signals[LV_STATE] != "ON"
        else:
            assert EV_ONLY.isdisjoint(signals)
            assert signals.keys() >= COMBUSTION_ONLY
        if signals[LV_STATE] == "LOCK":
            assert signals[LOCKED] is True
            assert speed == 0.0
            record.parked_samples += 1
            if car.route == (DEPOT,) and record.has_driven:
                record.depot_visits += 1
        if signals[HAZARD]:
            record.hazard_samples += 1
        record.max_speed_kmh = max(record.max_speed_kmh, speed)
        record.has_driven |= speed > 0.0
        record.events.extend(car.pending_events())
        record.samples += 1
        previous = signals
    return record


def check_events(car: SimulatedVehicle, events: list[Event]) -> None:
    """Events are well formed, in order, and ignition events alternate."""
    assert [e.seq for e in events] == list(range(len(events)))
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
    ignition = [e.type for e in events if e.type in (EventType.IGNITION_ON, EventType.IGNITION_OFF)]
    assert ignition[::2] == [EventType.IGNITION_ON] * len(ignition[::2])
    assert ignition[1::2] == [EventType.IGNITION_OFF] * len(ignition[1::2])
    for event in events:
        assert event.vin == car.vin
        decoded = decode_event(encode_event(event), topic_vin=car.vin, now_ms=event.ts)
        assert decoded == event


@pytest.mark.parametrize("profile", list(VehicleProfile))
def test_three_hours_stay_inside_the_catalog_and_move(profile: VehicleProfile) -> None:
    car = vehicle(profile, 2024)
    start_odometer = car.odometer_m
    record = run_and_check(car, 3 * 3600)
    assert record.max_speed_kmh > 30.0
    assert car.odometer_m - start_odometer > 5000.0
    assert record.parked_samples > 600
    check_events(car, record.events)
    assert sum(e.type is EventType.IGNITION_OFF for e in record.events) >= 3
    if profile is VehicleProfile.DELIVERY_VAN:
        assert record.hazard_samples > 0  # delivery stops
        assert record.depot_visits > 0  # back at the depot after a round


def test_ev_below_twenty_percent_charges() -> None:
    car = vehicle(VehicleProfile.ELECTRIC_CAR, 11, level=22.0)
    soc_when_plugged: float | None = None
    charging_socs: list[float] = []
    for _ in range(4 * 3600):
        car.step(1.0)
        signals = car.signals()
        if signals[IS_CHARGING]:
            soc = num(signals, SOC)
            if soc_when_plugged is None:
                soc_when_plugged = soc
            charging_socs.append(soc)
            assert car.phase is Phase.PARKED
            assert signals[LV_STATE] == "LOCK"
        elif charging_socs:
            break
    assert soc_when_plugged is not None, "the car never charged"
    assert soc_when_plugged < 20.5  # plugged in below 20 % (plus one sample of charging)
    assert charging_socs == sorted(charging_socs)
    assert charging_socs[-1] >= 79.0  # charged to its limit (80, 90 or 100 %)


def test_combustion_refuels_when_low() -> None:
    van = vehicle(VehicleProfile.DELIVERY_VAN, 3, level=9.0)
    signals = van.signals()
    assert signals[FUEL] == 9
    assert signals[FUEL_LOW] is True
    levels: list[float] = []
    for _ in range(1800):  # it refuels before it leaves
        van.step(1.0)
        if van.phase is Phase.DRIVING:
            break
        signals = van.signals()
        levels.append(num(signals, FUEL))
        assert signals[LV_STATE] != "ON"
    assert levels == sorted(levels)
    assert levels[-1] == 100
    assert signals[FUEL_LOW] is False


def test_trouble_codes_appear_and_clear() -> None:
    for seed in range(10):
        car = vehicle(VehicleProfile.COMBUSTION_SUV, seed)
        events: list[Event] = []
        for _ in range(6 * 3600 // 5):
            car.step(5.0)
            events.extend(car.pending_events())
            if car.signals()[DTC_COUNT]:
                assert car.signals()[DTC_LIST]
        set_codes = [e.code for e in events if e.type is EventType.DTC_SET]
        cleared = [e.code for e in events if e.type is EventType.DTC_CLEARED]
        if set_codes and cleared:
            assert set(cleared) <= set(set_codes)
            assert all(e.detail for e in events if e.type is EventType.DTC_SET)
            check_events(car, events)
            return
    pytest.fail("no trouble code was set and cleared in 10 vehicles x 6 hours")


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    profile=st.sampled_from(list(VehicleProfile)),
    start=st.sampled_from(NODES),
    # from 2020 (the contract refuses earlier clocks as implausible) up to 2100
    start_ms=st.integers(min_value=DEFAULT_LIMITS.min_plausible_ts_ms, max_value=4_102_444_800_000),
    level=st.none() | st.floats(min_value=0.0, max_value=100.0),
    dt=st.sampled_from([0.2, 1.0, 2.5]),
)
def test_any_vehicle_stays_inside_the_catalog(
    seed: int,
    profile: VehicleProfile,
    start: str,
    start_ms: int,
    level: float | None,
    dt: float,
) -> None:
    car = vehicle(profile, seed, start=start, start_ms=start_ms, level=level)
    record = run_and_check(car, 1800, dt)
    check_events(car, record.events)
