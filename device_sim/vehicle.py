"""A deterministic, sans-IO model of one connected vehicle driving around a road network.

:class:`SimulatedVehicle` owns a simulated clock and all of the vehicle's state. The caller
(the asyncio runner behind ``telematics up --demo``, or a test) drives it with
:meth:`SimulatedVehicle.step` and reads it with :meth:`SimulatedVehicle.signals` and
:meth:`SimulatedVehicle.pending_events`; the model itself never looks at a real clock, never
sleeps and never does I/O.

Time
    The vehicle keeps its own clock, :attr:`SimulatedVehicle.sim_time_ms` (milliseconds
    since the Unix epoch). It starts at the ``start_ms`` given to the constructor and moves
    only through ``step(dt_s)``. A runner that wants wall-clock timestamps passes the current
    time as ``start_ms`` and steps by the time that really elapsed; a test passes any fixed
    ``start_ms`` and gets the same run every time. Telemetry samples are stamped
    ``sim_time_ms`` after the step; events carry the simulated time at which they happened.
    The clock also sets the outside temperature (season and time of day in Munich).

Determinism
    All randomness comes from the ``random.Random`` passed in, and only ``step`` draws from
    it: ``signals()`` and ``pending_events()`` are reads. The same seed, start and sequence
    of ``step`` durations give the same signals and events, bit for bit. (``step(2.0)`` and
    two ``step(1.0)`` are both valid but not identical: a step is cut into sub-steps of at
    most :data:`MAX_SUBSTEP_S`.)

Behaviour
    A vehicle starts parked at ``start_node``. It boards (doors unlock and open), switches
    the ignition on and drives a random route: it accelerates at no more than 2.5 m/s²
    towards the edge's speed limit times a per-driver factor, brakes ahead of turns (the
    sharper the turn the slower), stops now and then at a node as at a red light, and
    brakes to a halt at the route's end. There it switches the ignition off, gets out,
    locks the doors and stays parked for a while before the next route. An electric car
    parked below 20 % state of charge plugs in and charges (DC, tapering) to its charge
    limit before leaving; a combustion vehicle parked below 15 % fuel refuels. A delivery
    van makes a round of 4-7 short delivery stops (hazard lights on) and then returns to
    its start node, its depot (pass :data:`device_sim.city.DEPOT`).

    Trip patterns (private cars: electric car, combustion SUV): with the default
    :attr:`TripPattern.RANDOM` the vehicle drives random routes as above, around the clock.
    With :attr:`TripPattern.COMMUTE` it follows a daily routine in local time (the simulated
    clock shifted by ``utc_offset_min``; daylight saving is ignored). Its start node is its
    home; its work place is a node drawn at construction (at least 1.5 km away where the
    network allows). On weekdays it leaves home between 07:00 and 08:30, drives to work and
    stays parked there (ignition off, locked) until 16:30-18:30, drives home and, on three
    evenings in ten, runs one short errand (to a random node and back) between 19:15 and
    20:30; then it stays parked overnight. At weekends it runs one or two errands (the first
    leaving 10:00-12:30, the second 14:00-16:30) and is otherwise parked. A departure time is
    the earliest the driver leaves: a vehicle that is charging, held or immobilized leaves
    later, and each day is planned (drawn from the generator) when the previous one is done.
    A commuting vehicle started in the middle of the day skips the outings that are already
    over. An electric commuter plugs in at home below 50 % (home wallbox, 11 kW), elsewhere
    below 20 % as usual. :meth:`~SimulatedVehicle.depart_now` sets off on the next trip of
    the routine at once; :meth:`~SimulatedVehicle.go_to` drives there instead, and the
    routine goes on from there.

    Energy use follows distance, speed (rolling and air resistance), acceleration (with
    regenerative braking for the electric car) and auxiliary load while the ignition is on.
    The cabin is climate-controlled towards the driver's set point while the ignition is on
    and drifts towards the outside temperature while parked; tyre pressure follows tyre
    temperature; the 12 V battery charges while driving and rests when parked. Rarely a
    diagnostic trouble code appears, and clears again some time later.

Remote commands
    The actuator methods (:meth:`~SimulatedVehicle.lock`, :meth:`~SimulatedVehicle.unlock`,
    :meth:`~SimulatedVehicle.horn_and_lights`, :meth:`~SimulatedVehicle.climate_start`, ...)
    are what an in-car unit calls to carry out a remote command (``schemas.commands``). Each
    changes the state at once, so the change shows in the next :meth:`~SimulatedVehicle.signals`;
    the slow consequences (cabin temperature, state of charge) follow in ``step``. They never
    draw from the random generator, so the same seed with the same commands at the same
    simulated times gives the same stream. A command the vehicle cannot carry out raises
    :class:`CommandRefused` with a :class:`~schemas.commands.ResultReason` (or ``None``) and a
    detail for people; the state is then unchanged. Commands that are unsafe while moving
    (unlock, close windows, immobilize) refuse while :attr:`~SimulatedVehicle.is_moving`, in
    addition to the unit's own check on receipt (the vehicle may have set off since).

    Remote climate runs for at most 30 minutes (or until ``climate_stop``); with the ignition
    on the cabin is climate-controlled anyway. Charging needs the ignition off (a parked
    electric car is assumed to be at a charger); the driver unplugs on leaving. An immobilized
    vehicle does not start its next trip: the driver gets in, the engine does not start, the
    driver gets out again and locks; a trip under way is never interrupted. A speed limit caps
    the target speed (the vehicle brakes down to it at its usual deceleration).

Scripted events
    Scenarios (``device_sim.scenario``) steer a vehicle at given simulated times with
    :meth:`~SimulatedVehicle.hold` (stay parked until told to go),
    :meth:`~SimulatedVehicle.depart_now` (the driver comes now and sets off),
    :meth:`~SimulatedVehicle.go_to` (drive to a given node) and
    :meth:`~SimulatedVehicle.set_energy_level` (say, run low on charge). Like the remote
    commands they change the state at once and never draw from the random generator, so the
    same script at the same simulated times gives the same stream. A departure takes
    :data:`SCRIPTED_BOARDING_S` (the driver gets in) before the vehicle pulls away; a
    delivery van departing from its depot starts a delivery round.

    Misbehaviour, so that every fleet rule has something to fire on (issue 13):
    :meth:`~SimulatedVehicle.speed` (the driver ignores the limits and pulls away hard for a
    while), :meth:`~SimulatedVehicle.brake_hard` (an emergency stop at
    :data:`EMERGENCY_BRAKE_MPS2`), :meth:`~SimulatedVehicle.idle` (stops with the engine
    running for a while, waiting for a customer) and :meth:`~SimulatedVehicle.raise_fault`
    (a trouble code set now, cleared after a given time).

Events
    :meth:`SimulatedVehicle.pending_events` returns (and forgets) the :class:`schemas.Event`
    values produced since the last call: ``ignition_on``, ``ignition_off``, ``dtc_set`` and
    ``dtc_cleared``. Their ``seq`` counts up per vehicle from ``first_event_seq``; a runner
    that restarts should pass a base that never repeats (for instance derived from the start
    time), because the gateway treats a repeated (vin, seq) as a duplicate.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from device_sim.city import RoadNetwork, haversine_m, random_route, shortest_path
from schemas.catalog import CATALOG
from schemas.commands import ResultReason
from schemas.payloads import Event, EventType, SignalValue
from schemas.vin import is_valid_vin, validate_vin

__all__ = [
    "MAX_SUBSTEP_S",
    "SCRIPTED_BOARDING_S",
    "CommandRefused",
    "Phase",
    "SimulatedVehicle",
    "TripPattern",
    "VehicleProfile",
    "make_vin",
]

#: the longest stretch of simulated time the model advances in one go
MAX_SUBSTEP_S: Final = 0.5

#: deceleration of a scripted emergency stop (:meth:`SimulatedVehicle.brake_hard`), m/s²
EMERGENCY_BRAKE_MPS2: Final = 7.0
#: acceleration while the driver speeds (:meth:`SimulatedVehicle.speed`), m/s²
HARD_ACCELERATION_MPS2: Final = 4.0
#: deceleration of a scripted stop to idle (:meth:`SimulatedVehicle.idle`), m/s²
_IDLE_STOP_MPS2: Final = 1.5

#: how long the driver takes to get in after a scripted departure, s
SCRIPTED_BOARDING_S: Final = 5.0

_VIN_ALPHABET: Final = frozenset("ABCDEFGHJKLMNPRSTUVWXYZ0123456789")


class CommandRefused(Exception):
    """A vehicle cannot carry out a command (the unit answers ``failed``).

    ``reason`` is the machine-readable :class:`~schemas.commands.ResultReason`, or ``None`` when
    none of the contract's reasons fits (a ``failed`` result may omit it); ``detail`` says
    what was wrong, for people.
    """

    def __init__(self, reason: ResultReason | None, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def make_vin(index: int, prefix: str = "WSMZZZ") -> str:
    """A valid 17-character VIN for simulated vehicle number ``index`` (deterministic).

    The VIN is ``prefix`` followed by ``index`` as a zero-padded decimal serial:
    ``make_vin(42) == "WSMZZZ00000000042"``. The prefix must use the VIN alphabet (digits and
    capitals without I, O and Q) and leave at least six characters for the serial.
    """
    if not 1 <= len(prefix) <= 11 or not set(prefix) <= _VIN_ALPHABET:
        raise ValueError(
            f"VIN prefix {prefix!r} must be 1-11 characters from 0-9 and A-Z without I, O, Q"
        )
    width = 17 - len(prefix)
    if not 0 <= index < 10**width:
        raise ValueError(f"index {index} does not fit in {width} digits after {prefix!r}")
    vin = f"{prefix}{index:0{width}d}"
    assert is_valid_vin(vin)
    return vin


class VehicleProfile(enum.Enum):
    """The kinds of vehicle the simulator knows."""

    ELECTRIC_CAR = "electric_car"
    COMBUSTION_SUV = "combustion_suv"
    DELIVERY_VAN = "delivery_van"
    TRUCK = "truck"

    @property
    def is_electric(self) -> bool:
        return self is VehicleProfile.ELECTRIC_CAR


class TripPattern(enum.StrEnum):
    """How a vehicle plans its trips (see the module docstring)."""

    #: random routes with short stops, around the clock (the default)
    RANDOM = "random"
    #: home - work - home on weekdays, errands at weekends, parked overnight (private cars)
    COMMUTE = "commute"


class Phase(enum.Enum):
    """What the vehicle is doing."""

    #: ignition on, moving along the route (or braking/accelerating on it)
    DRIVING = "driving"
    #: ignition on, standing at a node as at a red light
    WAITING = "waiting"
    #: ignition off, driver's door open: the driver gets out
    ALIGHTING = "alighting"
    #: ignition off, doors locked (charging or refuelling, maybe)
    PARKED = "parked"
    #: ignition off, doors unlocked and the driver's door open: the driver gets in
    BOARDING = "boarding"


@dataclass(frozen=True, slots=True)
class _Spec:
    """Constants of one vehicle profile."""

    mass_kg: float
    #: cap on the target speed, km/h (city driving)
    max_speed_kmh: float
    #: traction battery, usable kWh (electric only)
    battery_kwh: float
    #: fuel tank, litres (combustion only)
    tank_l: float
    #: electric: kWh/km at walking pace; combustion: l/km at walking pace
    base_per_km: float
    #: added per km for every (km/h)² of speed: air resistance
    drag_per_km: float
    #: combustion: litres per kWh of mechanical work (fuel energy / engine efficiency)
    l_per_kwh: float
    #: combustion: fuel burnt idling, l/h
    idle_l_per_h: float
    #: tyre pressure at 20 °C, kPa (lowest, highest)
    tyre_kpa: tuple[float, float]
    #: length of one route, m (lowest, highest)
    route_m: tuple[float, float]
    #: parking time at a route end, s (lowest, highest)
    park_s: tuple[float, float]
    #: mean ignition-on time between two trouble codes, s
    dtc_mean_interval_s: float
    #: trouble codes this vehicle can raise, with what they mean (SAE J2012 generic codes)
    dtcs: tuple[tuple[str, str], ...]
    #: scales the driver's acceleration (a loaded truck pulls away slowly)
    accel_factor: float = 1.0


_COMMON_DTCS: Final = (
    ("C0035", "Left front wheel speed sensor circuit"),
    ("U0155", "Lost communication with instrument panel cluster control module"),
)

_SPECS: Final = MappingProxyType(
    {
        VehicleProfile.ELECTRIC_CAR: _Spec(
            mass_kg=2000.0,
            max_speed_kmh=65.0,
            battery_kwh=60.0,
            tank_l=0.0,
            base_per_km=0.115,
            drag_per_km=0.000012,
            l_per_kwh=0.0,
            idle_l_per_h=0.0,
            tyre_kpa=(240.0, 255.0),
            route_m=(2000.0, 6000.0),
            park_s=(180.0, 1200.0),
            dtc_mean_interval_s=2 * 3600.0,
            dtcs=(
                *_COMMON_DTCS,
                ("P0A80", "Replace hybrid/EV battery pack"),
                ("P0AA6", "Hybrid/EV battery voltage system isolation fault"),
                ("U0111", "Lost communication with battery energy control module A"),
            ),
        ),
        VehicleProfile.COMBUSTION_SUV: _Spec(
            mass_kg=2200.0,
            max_speed_kmh=66.0,
            battery_kwh=0.0,
            tank_l=70.0,
            base_per_km=0.055,
            drag_per_km=0.0000045,
            l_per_kwh=0.40,
            idle_l_per_h=0.9,
            tyre_kpa=(250.0, 270.0),
            route_m=(2000.0, 6000.0),
            park_s=(180.0, 1200.0),
            dtc_mean_interval_s=2 * 3600.0,
            dtcs=(
                *_COMMON_DTCS,
                ("P0301", "Cylinder 1 misfire detected"),
                ("P0420", "Catalyst system efficiency below threshold (bank 1)"),
                ("P0171", "System too lean (bank 1)"),
                ("P0128", "Coolant thermostat below regulating temperature"),
            ),
        ),
        VehicleProfile.DELIVERY_VAN: _Spec(
            mass_kg=2900.0,
            max_speed_kmh=58.0,
            battery_kwh=0.0,
            tank_l=75.0,
            base_per_km=0.062,
            drag_per_km=0.0000060,
            l_per_kwh=0.33,
            idle_l_per_h=1.0,
            tyre_kpa=(360.0, 390.0),
            route_m=(800.0, 3000.0),
            park_s=(120.0, 480.0),
            dtc_mean_interval_s=2 * 3600.0,
            dtcs=(
                *_COMMON_DTCS,
                ("P2002", "Diesel particulate filter efficiency below threshold (bank 1)"),
                ("P0401", "Exhaust gas recirculation flow insufficient"),
                ("P0299", "Turbocharger underboost"),
            ),
        ),
        # a 12 t diesel distribution truck: slow off the line (0.6-1.0 m/s²), up to 80 km/h
        # where the limit allows, about 30 l/100 km in town, a 400 l tank
        VehicleProfile.TRUCK: _Spec(
            mass_kg=12000.0,
            max_speed_kmh=80.0,
            battery_kwh=0.0,
            tank_l=400.0,
            base_per_km=0.14,
            drag_per_km=0.000012,
            l_per_kwh=0.25,
            idle_l_per_h=2.0,
            tyre_kpa=(760.0, 830.0),
            route_m=(3000.0, 9000.0),
            park_s=(300.0, 1800.0),
            dtc_mean_interval_s=2 * 3600.0,
            dtcs=(
                *_COMMON_DTCS,
                ("P2002", "Diesel particulate filter efficiency below threshold (bank 1)"),
                ("P20EE", "SCR NOx catalyst efficiency below threshold (bank 1)"),
                ("P0299", "Turbocharger underboost"),
                ("C0110", "Pump motor circuit (brake system)"),
            ),
            accel_factor=0.4,
        ),
    }
)

# --- behaviour constants ---------------------------------------------------------------------

_MAX_ACCEL_MPS2: Final = 2.5
_CHARGE_BELOW_PCT: Final = 20.0
_REFUEL_BELOW_PCT: Final = 15.0
_FUEL_LOW_WARNING_PCT: Final = 12.0
_REFUEL_PCT_PER_S: Final = 0.8
_DC_CHARGE_KW: Final = 50.0
_DEPOT_PARK_S: Final = (600.0, 1500.0)
#: a turn gentler than this (degrees) is driven at full speed
_STRAIGHT_DEG: Final = 25.0
_MAX_ACTIVE_DTCS: Final = 3
_EPOCH_HOURS_TO_CET: Final = 1.0
#: remote climate (pre-conditioning) switches itself off after this long, s
_REMOTE_CLIMATE_MAX_S: Final = 1800.0
#: fuel a combustion vehicle's parking heater burns while remote climate runs, l/h
_PARKING_HEATER_L_PER_H: Final = 0.4
#: time constant of the cabin temperature while the climate control runs, s
_CLIMATE_TAU_S: Final = 300.0
#: a commuting electric car plugs in at home below this state of charge, percent
_HOME_CHARGE_BELOW_PCT: Final = 50.0
#: a home wallbox charges at most this fast, kW
_HOME_CHARGE_KW: Final = 11.0
#: a commuter's work place is at least this far from home (where the network allows), m
_MIN_COMMUTE_M: Final = 1500.0
_DAY_MS: Final = 86_400_000
#: profiles that can follow :attr:`TripPattern.COMMUTE`
_PRIVATE: Final = frozenset({VehicleProfile.ELECTRIC_CAR, VehicleProfile.COMBUSTION_SUV})

# --- signal paths ----------------------------------------------------------------------------

_SPEED = "Vehicle.Speed"
_IS_MOVING = "Vehicle.IsMoving"
_ODOMETER = "Vehicle.TraveledDistance"
_TRIP = "Vehicle.TraveledDistanceSinceStart"
_LAT = "Vehicle.CurrentLocation.Latitude"
_LON = "Vehicle.CurrentLocation.Longitude"
_HEADING = "Vehicle.CurrentLocation.Heading"
_ALTITUDE = "Vehicle.CurrentLocation.Altitude"
_ACCURACY = "Vehicle.CurrentLocation.HorizontalAccuracy"
_SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
_SOC_DISPLAYED = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed"
_IS_CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
_CHARGE_LIMIT = "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"
_RANGE = "Vehicle.Powertrain.Range"
_FUEL_LEVEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
_FUEL_LOW = "Vehicle.Powertrain.FuelSystem.IsFuelLevelLow"
_RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
_ENGINE_RUNNING = "Vehicle.Powertrain.CombustionEngine.IsRunning"
_TYRE = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"
_DOOR_LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"
_DOOR_OPEN = "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"
_WINDOW = "Vehicle.Cabin.Door.Row1.DriverSide.Window.Position"
_CABIN_TEMP = "Vehicle.Cabin.HVAC.AmbientAirTemperature"
_SET_POINT = "Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature"
_FAN = "Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed"
_HAZARD = "Vehicle.Body.Lights.Hazard.IsSignaling"
_HORN = "Vehicle.Body.Horn.IsActive"
_OUTSIDE_TEMP = "Vehicle.Exterior.AirTemperature"
_LV_STATE = "Vehicle.LowVoltageSystemState"
_LV_VOLTAGE = "Vehicle.LowVoltageBattery.CurrentVoltage"
_DTC_COUNT = "Vehicle.Diagnostics.DTCCount"
_DTC_LIST = "Vehicle.Diagnostics.DTCList"

_ALL_PATHS: Final = (
    _SPEED,
    _IS_MOVING,
    _ODOMETER,
    _TRIP,
    _LAT,
    _LON,
    _HEADING,
    _ALTITUDE,
    _ACCURACY,
    _SOC,
    _SOC_DISPLAYED,
    _IS_CHARGING,
    _CHARGE_LIMIT,
    _RANGE,
    _FUEL_LEVEL,
    _FUEL_LOW,
    _RPM,
    _ENGINE_RUNNING,
    _TYRE,
    _DOOR_LOCKED,
    _DOOR_OPEN,
    _WINDOW,
    _CABIN_TEMP,
    _SET_POINT,
    _FAN,
    _HAZARD,
    _HORN,
    _OUTSIDE_TEMP,
    _LV_STATE,
    _LV_VOLTAGE,
    _DTC_COUNT,
    _DTC_LIST,
)
assert all(path in CATALOG for path in _ALL_PATHS), "a simulator signal left the catalog"


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


def _relax(value: float, target: float, dt_s: float, tau_s: float) -> float:
    """First-order lag: move ``value`` towards ``target`` with time constant ``tau_s``."""
    return target + (value - target) * math.exp(-dt_s / tau_s)


def _outside_air_c(time_ms: int) -> float:
    """Munich's typical air temperature at ``time_ms``: season plus time of day.

    Coldest mid-January (about -1 °C daily mean), warmest mid-July (about 19 °C), with a
    daily swing of ±4.5 °C peaking at 15:00 local time (CET; daylight saving is ignored).
    """
    days = time_ms / 86_400_000
    day_of_year = days % 365.2425
    hour = (time_ms / 3_600_000 + _EPOCH_HOURS_TO_CET) % 24
    seasonal = 9.0 - 10.0 * math.cos(2 * math.pi * (day_of_year - 15) / 365.2425)
    daily = 4.5 * math.sin(2 * math.pi * (hour - 9) / 24)
    return seasonal + daily


@dataclass(frozen=True, slots=True)
class _Trip:
    """One trip of a commuter's routine."""

    #: elapsed simulated seconds from which the driver leaves; None: after the usual stop
    depart_s: float | None
    destination: str


@dataclass(frozen=True, slots=True)
class _Driver:
    """Per-vehicle habits, drawn once."""

    speed_factor: float
    accel_mps2: float
    brake_mps2: float
    light_stop_probability: float
    set_point_c: float
    charge_limit_pct: int


def _check_arguments(
    profile: VehicleProfile,
    network: RoadNetwork,
    start_node: str,
    start_ms: int,
    initial_level_pct: float | None,
    first_event_seq: int,
    pattern: TripPattern,
    utc_offset_min: int,
) -> None:
    """Raise ValueError for arguments :class:`SimulatedVehicle` cannot start from."""
    if pattern is TripPattern.COMMUTE and profile not in _PRIVATE:
        raise ValueError(f"a {profile.value} cannot commute (private cars only)")
    if isinstance(utc_offset_min, bool) or not -1440 < utc_offset_min < 1440:
        raise ValueError(f"utc_offset_min must be within ±1439, got {utc_offset_min!r}")
    if not network.neighbours(start_node):
        raise ValueError(f"start node {start_node!r} has no streets")
    if start_ms < 0 or first_event_seq < 0:
        raise ValueError("start_ms and first_event_seq must be >= 0")
    if initial_level_pct is not None and not 0.0 <= initial_level_pct <= 100.0:
        raise ValueError(f"initial_level_pct must be within [0, 100], got {initial_level_pct}")


class SimulatedVehicle:
    """One simulated vehicle; see the module docstring for the model.

    ``rng`` is owned by the vehicle from now on (give each vehicle its own). ``start_ms`` is
    the simulated clock's start, ms since the Unix epoch. ``initial_level_pct`` is the
    initial state of charge (electric) or fuel level (combustion), drawn from ``rng`` when
    None. ``first_event_seq`` is the ``seq`` of the first event. ``pattern`` chooses the
    trip pattern (:class:`TripPattern`; commute only for private cars), and
    ``utc_offset_min`` the local time a commuter lives by (+60: Munich in winter).
    """

    __slots__ = (
        "_active_dtcs",
        "_agenda",
        "_alert_until_s",
        "_alt_noise_m",
        "_cabin_c",
        "_charge_limit_pct",
        "_charging",
        "_climate_until_s",
        "_deliveries_left",
        "_destination",
        "_door_open",
        "_driver",
        "_elapsed_s",
        "_energy",
        "_errand_nodes",
        "_events",
        "_gps_accuracy_m",
        "_gps_east_m",
        "_gps_north_m",
        "_hazard",
        "_heading_deg",
        "_held",
        "_hold_s",
        "_ignition",
        "_immobilized",
        "_lead_foot",
        "_leg",
        "_leg_length_m",
        "_leg_target_mps",
        "_locked",
        "_net",
        "_next_event_seq",
        "_node",
        "_node_speed_mps",
        "_odometer_m",
        "_outside_offset_c",
        "_pattern",
        "_phase",
        "_planned_day",
        "_pos_m",
        "_profile",
        "_refuelling",
        "_returning_home",
        "_rng",
        "_route",
        "_rpm",
        "_set_point_c",
        "_spec",
        "_speed_cap_mps",
        "_speed_mps",
        "_start_ms",
        "_start_node",
        "_stop_request",
        "_timer_s",
        "_trip_m",
        "_tyre_c",
        "_tyre_kpa_20c",
        "_utc_offset_ms",
        "_vin",
        "_voltage",
        "_window_pct",
        "_work",
    )

    def __init__(
        self,
        vin: str,
        profile: VehicleProfile,
        network: RoadNetwork,
        rng: random.Random,
        start_node: str,
        *,
        start_ms: int = 0,
        initial_level_pct: float | None = None,
        first_event_seq: int = 0,
        pattern: TripPattern = TripPattern.RANDOM,
        utc_offset_min: int = 60,
    ) -> None:
        self._vin = validate_vin(vin)
        pattern = TripPattern(pattern)
        _check_arguments(
            profile,
            network,
            start_node,
            start_ms,
            initial_level_pct,
            first_event_seq,
            pattern,
            utc_offset_min,
        )
        self._profile = profile
        self._spec = _SPECS[profile]
        self._net = network
        self._rng = rng
        self._start_node = start_node
        self._start_ms = start_ms
        self._elapsed_s = 0.0
        self._next_event_seq = first_event_seq
        self._events: list[Event] = []

        self._driver = _Driver(
            speed_factor=rng.uniform(0.88, 1.06),
            accel_mps2=rng.uniform(1.5, _MAX_ACCEL_MPS2) * self._spec.accel_factor,
            brake_mps2=rng.uniform(1.8, 2.6),
            light_stop_probability=rng.uniform(0.2, 0.4),
            set_point_c=rng.choice((20.0, 20.5, 21.0, 21.5, 22.0, 22.5, 23.0)),
            charge_limit_pct=rng.choice((80, 80, 90, 100)),
        )
        level = initial_level_pct if initial_level_pct is not None else rng.uniform(35.0, 95.0)
        #: state of charge (electric) or fuel level (combustion), percent
        self._energy = level
        # the random draws below happen in this order, which the same seed must keep
        self._init_motion(network, rng, start_node)
        self._init_phase(rng, level)
        self._init_commands()
        self._init_environment(rng)
        self._init_pattern(network, rng, start_node, pattern, utc_offset_min)

    def _init_motion(self, network: RoadNetwork, rng: random.Random, start_node: str) -> None:
        """Position and motion: parked at the start node, facing along a random street."""
        self._node = start_node
        self._route: tuple[str, ...] = (start_node,)
        self._leg = 0
        self._pos_m = 0.0
        self._leg_length_m = 0.0
        self._leg_target_mps = 0.0
        self._node_speed_mps = 0.0
        self._speed_mps = 0.0
        self._odometer_m = float(rng.randrange(3_000_000, 90_000_000))
        self._trip_m = 0.0
        facing = rng.choice(network.neighbours(start_node))
        self._heading_deg = network.bearing_deg(start_node, facing)

    def _init_phase(self, rng: random.Random, level: float) -> None:
        """Phase: parked, leaving soon."""
        profile = self._profile
        self._phase = Phase.PARKED
        self._timer_s = rng.uniform(2.0, 15.0)  # leave soon: a demo should show driving
        self._hold_s = 0.0
        self._ignition = False
        self._locked = True
        self._door_open = False
        self._window_pct = 0
        self._hazard = False
        self._charging = profile.is_electric and level < _CHARGE_BELOW_PCT
        self._refuelling = not profile.is_electric and level < _REFUEL_BELOW_PCT
        self._deliveries_left = rng.randint(4, 7)
        self._returning_home = False
        self._rpm = 0.0

    def _init_commands(self) -> None:
        """Remote commands and scripted events: none yet (the driver's own settings)."""
        self._set_point_c = self._driver.set_point_c
        self._charge_limit_pct = self._driver.charge_limit_pct
        #: elapsed simulated seconds until which remote climate / horn and lights run
        self._climate_until_s = 0.0
        self._alert_until_s = 0.0
        self._immobilized = False
        #: speed limit set by command, m/s; None: none
        self._speed_cap_mps: float | None = None
        # scripted events: none yet
        self._held = False
        self._destination: str | None = None
        #: speeding: (target m/s, until elapsed s); None: the driver keeps to the limits
        self._lead_foot: tuple[float, float] | None = None
        #: a scripted stop on the road: (deceleration m/s², then standing s)
        self._stop_request: tuple[float, float] | None = None

    def _init_environment(self, rng: random.Random) -> None:
        """Environment and body."""
        self._outside_offset_c = rng.uniform(-0.8, 0.8)
        outside = self._outside_c()
        self._cabin_c = outside + rng.uniform(0.0, 3.0)
        self._tyre_c = outside
        self._tyre_kpa_20c = rng.uniform(*self._spec.tyre_kpa)
        self._voltage = rng.uniform(12.4, 12.7)
        self._gps_accuracy_m = rng.uniform(3.0, 6.0)
        self._gps_north_m = 0.0
        self._gps_east_m = 0.0
        self._alt_noise_m = 0.0
        #: active trouble code -> elapsed simulated seconds at which it clears
        self._active_dtcs: dict[str, float] = {}

    def _init_pattern(
        self,
        network: RoadNetwork,
        rng: random.Random,
        start_node: str,
        pattern: TripPattern,
        utc_offset_min: int,
    ) -> None:
        """Trip pattern: a commuter draws its work place now (and nothing else); the default
        pattern draws nothing here, so its stream stays as it was."""
        self._pattern = pattern
        self._utc_offset_ms = utc_offset_min * 60_000
        self._work: str | None = None
        self._errand_nodes: tuple[str, ...] = ()
        #: a commuter's next trips, in order
        self._agenda: list[_Trip] = []
        #: the last local day (days since the epoch) planned into the agenda; None: none yet
        self._planned_day: int | None = None
        if pattern is TripPattern.COMMUTE:
            home = network.nodes[start_node]
            others = sorted(n for n in network.nodes if n != start_node and network.neighbours(n))
            if not others:
                raise ValueError("a commuter needs a network with more than one node")
            far = [
                n
                for n in others
                if haversine_m(home.lat, home.lon, network.nodes[n].lat, network.nodes[n].lon)
                >= _MIN_COMMUTE_M
            ]
            self._work = rng.choice(far or others)
            self._errand_nodes = tuple(n for n in others if n != self._work) or (self._work,)

    # --- public reads -----------------------------------------------------------------------

    @property
    def vin(self) -> str:
        return self._vin

    @property
    def next_event_seq(self) -> int:
        """The ``seq`` of the vehicle's next event."""
        return self._next_event_seq

    @property
    def profile(self) -> VehicleProfile:
        return self._profile

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def pattern(self) -> TripPattern:
        return self._pattern

    @property
    def home(self) -> str:
        """The start node (a commuter's home)."""
        return self._start_node

    @property
    def work(self) -> str | None:
        """A commuter's work place (a node); None for other patterns."""
        return self._work

    @property
    def sim_time_ms(self) -> int:
        """The simulated clock: ms since the Unix epoch."""
        return self._start_ms + round(self._elapsed_s * 1000)

    @property
    def odometer_m(self) -> float:
        return self._odometer_m

    @property
    def speed_kmh(self) -> float:
        return self._speed_mps * 3.6

    @property
    def is_moving(self) -> bool:
        """Whether the vehicle moves: exactly the ``Vehicle.IsMoving`` of :meth:`signals` (the
        signal a gateway checks before it sends a command that is unsafe while moving)."""
        return round(self._speed_mps * 3.6, 1) > 0.0

    @property
    def immobilized(self) -> bool:
        return self._immobilized

    @property
    def speed_limit_kmh(self) -> float | None:
        """The speed limit set by :meth:`set_speed_limit`, km/h; None when there is none."""
        return None if self._speed_cap_mps is None else self._speed_cap_mps * 3.6

    @property
    def climate_on(self) -> bool:
        """Whether the climate control runs: remote climate, or the ignition is on."""
        return self._climate_active()

    @property
    def route(self) -> tuple[str, ...]:
        """The current route (nodes, start to end); just the parking node while parked."""
        return self._route

    def position(self) -> tuple[float, float]:
        """True ``(lat, lon)`` on the network, without GPS error."""
        if self._phase in (Phase.DRIVING, Phase.WAITING) and self._leg_length_m > 0:
            a, b = self._route[self._leg], self._route[self._leg + 1]
            fraction = _clamp(self._pos_m / self._leg_length_m, 0.0, 1.0)
            return self._net.interpolate(a, b, fraction)
        node = self._net.nodes[self._node]
        return node.lat, node.lon

    def pending_events(self) -> list[Event]:
        """The events since the last call, oldest first (the list is handed over)."""
        events, self._events = self._events, []
        return events

    def signals(self) -> dict[str, SignalValue]:
        """Current values keyed by catalog path, typed and bounded as the catalog says."""
        lat, lon = self.position()
        lat += self._gps_north_m / 111_320.0
        lon += self._gps_east_m / (111_320.0 * math.cos(math.radians(lat)))
        heading = round(self._heading_deg % 360.0, 1)
        if heading >= 360.0:
            heading = 0.0
        speed_kmh = round(self._speed_mps * 3.6, 1)
        out: dict[str, SignalValue] = {
            _SPEED: speed_kmh,
            _IS_MOVING: speed_kmh > 0.0,
            _ODOMETER: int(self._odometer_m),
            _TRIP: int(self._trip_m),
            _LAT: round(lat, 6),
            _LON: round(lon, 6),
            _HEADING: heading,
            _ALTITUDE: round(self._net.elevation_m + self._alt_noise_m, 1),
            _ACCURACY: round(self._gps_accuracy_m, 1),
            _TYRE: round(self._tyre_kpa_20c * (self._tyre_c + 273.15) / 293.15),
            _DOOR_LOCKED: self._locked,
            _DOOR_OPEN: self._door_open,
            _WINDOW: self._window_pct,
            _CABIN_TEMP: round(_clamp(self._cabin_c, -60.0, 90.0), 1),
            _SET_POINT: self._set_point_c,
            _FAN: self._fan_pct(),
            _HAZARD: self._hazard or self._alerting(),
            _HORN: self._alerting(),
            _OUTSIDE_TEMP: round(_clamp(self._outside_c(), -60.0, 70.0), 1),
            _LV_STATE: "ON" if self._ignition else "LOCK" if self._locked else "OFF",
            _LV_VOLTAGE: round(self._voltage, 2),
            _DTC_COUNT: len(self._active_dtcs),
            _DTC_LIST: sorted(self._active_dtcs),
        }
        if self._profile.is_electric:
            soc = _clamp(self._energy, 0.0, 100.0)
            displayed = _clamp((soc - 2.5) / 95.0 * 100.0, 0.0, 100.0)
            usable_kwh = displayed / 100.0 * self._spec.battery_kwh
            out[_SOC] = round(soc, 1)
            out[_SOC_DISPLAYED] = round(displayed, 1)
            out[_IS_CHARGING] = self._charging
            out[_CHARGE_LIMIT] = self._charge_limit_pct
            out[_RANGE] = int(usable_kwh / 0.18 * 1000)
        else:
            level = _clamp(self._energy, 0.0, 100.0)
            litres = level / 100.0 * self._spec.tank_l
            out[_FUEL_LEVEL] = round(level)
            out[_FUEL_LOW] = level < _FUEL_LOW_WARNING_PCT
            out[_RPM] = float(round(self._rpm))
            out[_ENGINE_RUNNING] = self._ignition
            out[_RANGE] = int(litres / (self._spec.base_per_km * 1.8) * 1000)
        return out

    # --- remote commands --------------------------------------------------------------------

    def _refuse_while_moving(self, what: str) -> None:
        if self.is_moving:
            raise CommandRefused(
                ResultReason.VEHICLE_MOVING,
                f"{what} is refused while moving ({self.speed_kmh:.0f} km/h)",
            )

    def _require_electric(self, what: str) -> None:
        if not self._profile.is_electric:
            raise CommandRefused(
                ResultReason.UNSUPPORTED,
                f"{what}: a {self._profile.value.replace('_', ' ')} has no traction battery",
            )

    def lock(self) -> None:
        """Lock the doors (also while driving: the doors lock as on the move)."""
        self._locked = True

    def unlock(self) -> None:
        """Unlock the doors; refused while moving."""
        self._refuse_while_moving("unlocking")
        self._locked = False

    def horn_and_lights(self, duration_s: float = 3.0) -> None:
        """Sound the horn and flash the hazard lights for ``duration_s`` simulated seconds."""
        if not (math.isfinite(duration_s) and duration_s > 0.0):
            raise CommandRefused(
                ResultReason.BAD_PARAMS, f"duration_s must be > 0, got {duration_s}"
            )
        self._alert_until_s = max(self._alert_until_s, self._elapsed_s + duration_s)

    def climate_start(self, target_c: float) -> None:
        """Run the climate control towards ``target_c`` (16-30 °C) for up to 30 minutes; the
        cabin follows with a time constant of 5 minutes."""
        if not (math.isfinite(target_c) and 16.0 <= target_c <= 30.0):
            raise CommandRefused(
                ResultReason.BAD_PARAMS, f"target temperature must be 16-30 °C, got {target_c}"
            )
        self._set_point_c = float(target_c)
        self._climate_until_s = self._elapsed_s + _REMOTE_CLIMATE_MAX_S

    def climate_stop(self) -> None:
        """Stop the remote climate (with the ignition on the driver's climate keeps running)."""
        self._climate_until_s = self._elapsed_s

    def charging_start(self) -> None:
        """Start charging (electric only, ignition off) up to the charge limit."""
        self._require_electric("charging")
        if self._ignition or self.is_moving:
            raise CommandRefused(
                ResultReason.VEHICLE_MOVING,
                "the vehicle is being driven (ignition on); it charges only when parked",
            )
        if self._energy >= self._charge_limit_pct:
            raise CommandRefused(
                ResultReason.PRECONDITION_FAILED,
                f"state of charge {self._energy:.1f} % is at the charge limit "
                f"({self._charge_limit_pct} %)",
            )
        self._charging = True

    def charging_stop(self) -> None:
        """Stop charging (electric only; nothing to do when not charging)."""
        self._require_electric("charging")
        self._charging = False

    def set_charge_limit(self, percent: int) -> None:
        """Set the state of charge at which charging stops (electric only, 50-100 %)."""
        self._require_electric("charge limit")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 50 <= percent <= 100:
            raise CommandRefused(
                ResultReason.BAD_PARAMS, f"charge limit must be 50-100 %, got {percent!r}"
            )
        self._charge_limit_pct = percent
        if self._charging and self._energy >= percent:
            self._charging = False

    def close_windows(self) -> None:
        """Close the windows; refused while moving (a closing window can trap a hand)."""
        self._refuse_while_moving("closing the windows")
        self._window_pct = 0

    def immobilize(self) -> None:
        """Keep the vehicle from starting its next trip; refused while moving. A trip under
        way goes on (the engine is never cut while driving)."""
        self._refuse_while_moving("immobilizing")
        self._immobilized = True

    def release_immobilizer(self) -> None:
        """Let the vehicle start again."""
        self._immobilized = False

    def set_speed_limit(self, kmh: float | None) -> None:
        """Cap the speed at ``kmh`` (the vehicle brakes down to it); None clears the cap."""
        if kmh is None:
            self._speed_cap_mps = None
            return
        if isinstance(kmh, bool) or not (math.isfinite(kmh) and kmh > 0):
            raise CommandRefused(
                ResultReason.BAD_PARAMS, f"speed limit must be > 0 km/h or None, got {kmh!r}"
            )
        cap = kmh / 3.6
        self._speed_cap_mps = cap
        self._leg_target_mps = min(self._leg_target_mps, cap)
        self._node_speed_mps = min(self._node_speed_mps, cap)

    # --- scripted events ---------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """Whether the vehicle waits for :meth:`depart_now` (see :meth:`hold`)."""
        return self._held

    def hold(self) -> None:
        """Keep the vehicle parked until :meth:`depart_now` or :meth:`go_to`: a trip under way
        ends as usual, then the driver does not come back (charging and refuelling go on)."""
        self._held = True

    def depart_now(self) -> None:
        """End parking and set off now: the driver comes (or turns back to the car), gets in
        for :data:`SCRIPTED_BOARDING_S` seconds and drives the next route (a delivery van at
        its depot starts a delivery round). Charging and refuelling stop (the driver unplugs).
        Releases :meth:`hold`. A vehicle already on the road just drives on; an immobilized
        one does not start (see :meth:`immobilize`)."""
        self._held = False
        phase = self._phase
        if phase in (Phase.DRIVING, Phase.WAITING):
            return
        if phase is Phase.BOARDING:
            self._timer_s = min(self._timer_s, SCRIPTED_BOARDING_S)
            return
        self._refuelling = False
        self._phase = Phase.BOARDING
        self._timer_s = SCRIPTED_BOARDING_S
        self._locked = False
        self._door_open = True

    def go_to(self, node: str) -> None:
        """Drive to ``node`` by the shortest path, and park there. Parked: as
        :meth:`depart_now`, with ``node`` as the destination. On the road: the vehicle
        finishes the street it is on, then turns towards ``node``. Raises ``ValueError`` for a
        node that is not on the network."""
        if node not in self._net.nodes or not self._net.neighbours(node):
            raise ValueError(f"{node!r} is not a node of the road network")
        if self._phase not in (Phase.DRIVING, Phase.WAITING):
            self._destination = node
            self.depart_now()
            return
        self._held = False
        leg = self._leg
        head = self._route[: leg + 2]
        self._route = head + shortest_path(self._net, head[-1], node)[1:]
        if leg + 1 == len(self._route) - 1:
            self._node_speed_mps = 0.0  # the street ahead ends the trip now: stop at its end

    def set_energy_level(self, percent: float) -> None:
        """Set the state of charge (electric) or fuel level (combustion), 0-100 %. A parked
        vehicle then decides again, as on arrival, whether to plug in (below 20 %) or refuel
        (below 15 %); charging above the charge limit stops."""
        if isinstance(percent, bool) or not (math.isfinite(percent) and 0.0 <= percent <= 100.0):
            raise ValueError(f"energy level must be within [0, 100] %, got {percent!r}")
        self._energy = float(percent)
        if self._profile.is_electric:
            if self._charging and self._energy >= self._charge_limit_pct:
                self._charging = False
            elif self._phase is Phase.PARKED and self._energy < _CHARGE_BELOW_PCT:
                self._charging = True
        elif self._phase is Phase.PARKED:
            self._refuelling = self._energy < _REFUEL_BELOW_PCT

    def speed(self, kmh: float, duration_s: float) -> None:
        """The driver ignores the limits for ``duration_s``: aims for ``kmh`` on every street
        (a command's speed limit still caps it) and pulls away at
        :data:`HARD_ACCELERATION_MPS2`. Takes effect on the road; parked, from departure."""
        _check_positive("kmh", kmh)
        _check_positive("duration_s", duration_s)
        self._lead_foot = (kmh / 3.6, self._elapsed_s + duration_s)
        if self._phase is Phase.DRIVING:
            self._leg_target_mps = max(self._leg_target_mps, self._capped(kmh / 3.6))

    def brake_hard(self) -> None:
        """An emergency stop: from the current speed to standing at
        :data:`EMERGENCY_BRAKE_MPS2`, then on after a few seconds. Only on the road."""
        if self._phase is Phase.DRIVING and self._speed_mps > 0.0:
            self._stop_request = (EMERGENCY_BRAKE_MPS2, 5.0)

    def idle(self, duration_s: float) -> None:
        """Stop on the road and stand with the engine running for ``duration_s`` (waiting
        for a customer), then drive on. Standing at a light already: it stands that long.
        Parked (ignition off): nothing."""
        _check_positive("duration_s", duration_s)
        if self._phase is Phase.WAITING:
            self._hold_s = max(self._hold_s, duration_s)
        elif self._phase is Phase.DRIVING:
            self._stop_request = (_IDLE_STOP_MPS2, duration_s)

    def raise_fault(self, code: str, duration_s: float = 900.0) -> None:
        """Diagnostic trouble code ``code`` is set now (a ``dtc_set`` event) and clears
        after ``duration_s`` (``dtc_cleared``, at the next step with the ignition on)."""
        _check_positive("duration_s", duration_s)
        clears = self._elapsed_s + duration_s
        description = dict(self._spec.dtcs).get(code, "scripted fault")
        if code not in self._active_dtcs:
            self._emit(EventType.DTC_SET, code, description)
        self._active_dtcs[code] = clears

    def _capped(self, mps: float) -> float:
        return mps if self._speed_cap_mps is None else min(mps, self._speed_cap_mps)

    def diagnostics(self) -> list[str]:
        """The active diagnostic trouble codes, sorted (what ``Vehicle.Diagnostics.DTCList``
        reports)."""
        return sorted(self._active_dtcs)

    def _alerting(self) -> bool:
        return self._elapsed_s < self._alert_until_s

    def _climate_active(self) -> bool:
        return self._ignition or self._elapsed_s < self._climate_until_s

    # --- stepping ---------------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        """Advance the simulated clock and the vehicle by ``dt_s`` seconds (> 0)."""
        if not (dt_s > 0.0 and math.isfinite(dt_s)):
            raise ValueError(f"dt_s must be a finite number > 0, got {dt_s}")
        substeps = max(1, math.ceil(dt_s / MAX_SUBSTEP_S - 1e-9))
        sub = dt_s / substeps
        for _ in range(substeps):
            self._tick(sub)

    def _tick(self, dt: float) -> None:
        self._elapsed_s += dt
        v0 = self._speed_mps
        travelled = 0.0
        phase = self._phase
        if phase is Phase.DRIVING:
            travelled = self._drive(dt)
        elif phase is Phase.WAITING:
            self._hold_s -= dt
            if self._hold_s <= 0.0:
                self._phase = Phase.DRIVING
        elif phase is Phase.ALIGHTING:
            self._timer_s -= dt
            if self._charging:  # only by command
                self._charge(dt)
            if self._timer_s <= 0.0:
                self._door_open = False
                self._locked = True
                self._phase = Phase.PARKED
                self._timer_s = self._park_duration_s()
                if self._profile.is_electric:
                    self._charging = self._charging or self._energy < self._plug_in_below_pct()
                else:
                    self._refuelling = self._energy < _REFUEL_BELOW_PCT
        elif phase is Phase.PARKED:
            self._parked(dt)
        else:  # BOARDING
            if self._charging:  # only by command: charging waits for the driver to unplug
                self._charge(dt)
            self._timer_s -= dt
            if self._timer_s <= 0.0:
                self._depart()
        self._odometer_m += travelled
        self._trip_m += travelled
        self._use_energy(dt, travelled, v0, self._speed_mps)
        self._update_engine(dt, v0)
        self._update_body(dt)
        self._update_dtcs(dt)
        self._update_gps(dt)

    # --- driving ----------------------------------------------------------------------------

    def _drive(self, dt: float) -> float:
        """Move along the route for ``dt``; return the distance travelled."""
        if self._stop_request is not None:
            return self._scripted_stop(dt)
        driver = self._driver
        v0 = self._speed_mps
        v_node = self._node_speed_mps
        remaining = self._leg_length_m - self._pos_m
        needed = 0.0
        if v0 > v_node and remaining > 0.0:
            needed = (v0 * v0 - v_node * v_node) / (2.0 * remaining)
        if needed >= driver.brake_mps2:
            # on the braking curve: brake evenly so as to reach the node at exactly v_node
            to_node_s = (v0 - v_node) / needed
            if to_node_s <= dt:
                v1 = v_node
                travel = remaining + v_node * (dt - to_node_s)
            else:
                v1 = v0 - needed * dt
                travel = 0.5 * (v0 + v1) * dt
        else:
            allowed = math.sqrt(v_node * v_node + 2.0 * driver.brake_mps2 * remaining)
            desired = min(self._leg_target_mps, allowed)
            if v0 < desired:
                # acceleration fades as the speed approaches the target
                headroom = 1.0 - 0.5 * v0 / max(self._leg_target_mps, 1.0)
                accel = driver.accel_mps2 * max(headroom, 0.3)
                if self._lead_foot is not None and self._elapsed_s < self._lead_foot[1]:
                    accel = HARD_ACCELERATION_MPS2
                v1 = min(desired, v0 + accel * dt)
            else:
                v1 = max(desired, v0 - driver.brake_mps2 * dt)
            travel = 0.5 * (v0 + v1) * dt
        self._speed_mps = v1
        if travel < remaining:
            self._pos_m += travel
            return travel
        # reached the node at the end of the leg
        self._pos_m = self._leg_length_m
        self._node = self._route[self._leg + 1]
        if self._leg + 1 == len(self._route) - 1:
            self._arrive()
            return remaining
        stop_here = self._node_speed_mps == 0.0
        self._start_leg(self._leg + 1)
        if stop_here:
            self._speed_mps = 0.0
            self._phase = Phase.WAITING
            self._hold_s = self._rng.uniform(8.0, 45.0)
            return remaining
        carried = min(travel - remaining, 0.5 * self._leg_length_m)
        self._pos_m = carried
        return remaining + carried

    def _scripted_stop(self, dt: float) -> float:
        """Brake at the requested rate to standing on this street, then wait (engine on)."""
        assert self._stop_request is not None
        decel, stand_s = self._stop_request
        v0 = self._speed_mps
        v1 = max(0.0, v0 - decel * dt)
        travel = min(0.5 * (v0 + v1) * dt, max(0.0, self._leg_length_m - self._pos_m - 0.1))
        self._pos_m += travel
        self._speed_mps = v1
        if v1 == 0.0:
            self._stop_request = None
            self._phase = Phase.WAITING
            self._hold_s = stand_s
        return travel

    def _start_leg(self, leg: int) -> None:
        """Enter leg ``leg`` of the route: fix its target speed and the speed at its end."""
        net, rng, route = self._net, self._rng, self._route
        a, b = route[leg], route[leg + 1]
        self._leg = leg
        self._pos_m = 0.0
        self._leg_length_m = net.edge_length_m(a, b)
        self._leg_target_mps = self._target_mps(a, b) * rng.uniform(0.95, 1.02)
        if self._speed_cap_mps is not None:
            self._leg_target_mps = min(self._leg_target_mps, self._speed_cap_mps)
        self._heading_deg = net.bearing_deg(a, b)
        if leg + 1 == len(route) - 1 or rng.random() < self._driver.light_stop_probability:
            self._node_speed_mps = 0.0
            return
        c = route[leg + 2]
        node_speed = min(self._leg_target_mps, self._target_mps(b, c))
        turn = abs((net.bearing_deg(b, c) - self._heading_deg + 180.0) % 360.0 - 180.0)
        if turn > _STRAIGHT_DEG:
            node_speed = min(node_speed, (30.0 - 22.0 * turn / 180.0) / 3.6)
        self._node_speed_mps = node_speed

    def _target_mps(self, a: str, b: str) -> float:
        limit = self._net.edge(a, b).speed_limit_kmh * self._driver.speed_factor
        target = min(limit, self._spec.max_speed_kmh) / 3.6
        lead = self._lead_foot
        if lead is not None and self._elapsed_s < lead[1]:
            target = max(target, lead[0])
        return self._capped(target)

    def _arrive(self) -> None:
        """Stop at the end of the route: ignition off, the driver gets out."""
        self._speed_mps = 0.0
        self._route = (self._node,)
        self._set_ignition(on=False)
        self._phase = Phase.ALIGHTING
        self._timer_s = self._rng.uniform(4.0, 15.0)
        self._locked = False
        self._door_open = True
        self._window_pct = 0
        if self._profile is VehicleProfile.DELIVERY_VAN:
            at_depot = self._node == self._start_node
            self._hazard = not at_depot
            if at_depot and self._returning_home:
                self._returning_home = False
                self._deliveries_left = self._rng.randint(4, 7)
            elif not at_depot:
                self._deliveries_left -= 1

    def _park_duration_s(self) -> float:
        if self._profile is VehicleProfile.DELIVERY_VAN and self._node == self._start_node:
            return self._rng.uniform(*_DEPOT_PARK_S)
        return self._rng.uniform(*self._spec.park_s)

    def _at_home_commuting(self) -> bool:
        return self._pattern is TripPattern.COMMUTE and self._node == self._start_node

    def _plug_in_below_pct(self) -> float:
        return _HOME_CHARGE_BELOW_PCT if self._at_home_commuting() else _CHARGE_BELOW_PCT

    def _charge(self, dt: float) -> None:
        kw = _DC_CHARGE_KW if self._energy < 50.0 else max(12.0, 50.0 - 0.8 * (self._energy - 50))
        if self._at_home_commuting():
            kw = min(kw, _HOME_CHARGE_KW)
        self._energy += kw * dt / 3600.0 / self._spec.battery_kwh * 100.0
        if self._energy >= self._charge_limit_pct:
            self._energy = float(self._charge_limit_pct)
            self._charging = False

    def _parked(self, dt: float) -> None:
        if self._charging:
            self._charge(dt)
        if self._refuelling:
            self._energy += _REFUEL_PCT_PER_S * dt
            if self._energy >= 100.0:
                self._energy = 100.0
                self._refuelling = False
        self._timer_s -= dt
        # an immobilized vehicle stays where it is (the driver does not come)
        busy = self._charging or self._refuelling or self._immobilized or self._held
        if self._timer_s <= 0.0 and not busy and self._trip_due():
            self._phase = Phase.BOARDING
            self._timer_s = self._rng.uniform(3.0, 10.0)
            self._locked = False
            self._door_open = True

    # --- commuting ---------------------------------------------------------------------------

    def _trip_due(self) -> bool:
        """Whether the routine lets the driver leave now (always, for random trips)."""
        if self._pattern is TripPattern.RANDOM:
            return True
        trip = self._next_trip()
        return trip.depart_s is None or self._elapsed_s >= trip.depart_s

    def _next_trip(self) -> _Trip:
        """A commuter's next trip (not to where it is), planning days as needed."""
        while True:
            while self._agenda and self._agenda[0].destination == self._node:
                self._agenda.pop(0)
            if self._agenda:
                return self._agenda[0]
            now_ms = self.sim_time_ms
            today = (now_ms + self._utc_offset_ms) // _DAY_MS
            day = today if self._planned_day is None else max(self._planned_day + 1, today)
            self._planned_day = day
            self._plan_day(day, now_ms)

    def _plan_day(self, day: int, now_ms: int) -> None:
        """Put local day ``day``'s outings on the agenda, leaving out those already over."""
        rng, home, work = self._rng, self._start_node, self._work
        assert work is not None
        day_start_s = (day * _DAY_MS - self._utc_offset_ms - self._start_ms) / 1000.0

        def at(hours: float) -> float:
            return day_start_s + hours * 3600.0

        outings: list[list[_Trip]] = []
        if (day + 3) % 7 < 5:  # Monday-Friday (1970-01-01 was a Thursday)
            outings.append(
                [_Trip(at(rng.uniform(7.0, 8.5)), work), _Trip(at(rng.uniform(16.5, 18.5)), home)]
            )
            if rng.random() < 0.3:
                errand = rng.choice(self._errand_nodes)
                outings.append([_Trip(at(rng.uniform(19.25, 20.5)), errand), _Trip(None, home)])
        else:
            windows = ((10.0, 12.5), (14.0, 16.5))[: rng.randint(1, 2)]
            for lo, hi in windows:
                errand = rng.choice(self._errand_nodes)
                outings.append([_Trip(at(rng.uniform(lo, hi)), errand), _Trip(None, home)])
        now_s = (now_ms - self._start_ms) / 1000.0
        for outing in outings:
            last = max(t.depart_s for t in outing if t.depart_s is not None)
            if last >= now_s:
                self._agenda.extend(outing)

    def _depart(self) -> None:
        """The driver is in: close the door, ignition on, pick the next route and go."""
        rng = self._rng
        self._charging = False  # the driver unplugs
        if self._immobilized:
            # immobilized while the driver got in: the engine does not start, so the driver
            # gets out again (and locks up)
            self._phase = Phase.ALIGHTING
            self._timer_s = rng.uniform(4.0, 15.0)
            return
        self._door_open = False
        self._hazard = False
        self._set_ignition(on=True)
        self._trip_m = 0.0
        route: tuple[str, ...] = ()
        if self._destination is not None:
            route = shortest_path(self._net, self._node, self._destination)
            self._destination = None
        elif self._pattern is TripPattern.COMMUTE:
            route = shortest_path(self._net, self._node, self._next_trip().destination)
            self._agenda.pop(0)
        elif self._profile is VehicleProfile.DELIVERY_VAN and self._deliveries_left <= 0:
            route = shortest_path(self._net, self._node, self._start_node)
            self._returning_home = len(route) > 1
            if not self._returning_home:
                self._deliveries_left = rng.randint(4, 7)
        if len(route) < 2:
            route = random_route(self._net, rng, self._node, rng.uniform(*self._spec.route_m))
        self._route = route
        self._start_leg(0)
        if self._outside_c() > 18.0 and rng.random() < 0.3:
            self._window_pct = rng.randrange(10, 45, 5)
        self._phase = Phase.DRIVING

    def _set_ignition(self, *, on: bool) -> None:
        self._ignition = on
        kind = EventType.IGNITION_ON if on else EventType.IGNITION_OFF
        self._emit(kind)

    def _emit(self, kind: EventType, code: str | None = None, detail: str | None = None) -> None:
        seq = self._next_event_seq
        self._next_event_seq += 1
        self._events.append(Event(self._vin, seq, self.sim_time_ms, kind, code, detail))

    # --- energy, engine, body, diagnostics, GPS ---------------------------------------------

    def _use_energy(self, dt: float, travelled_m: float, v0: float, v1: float) -> None:
        spec = self._spec
        km = travelled_m / 1000.0
        v_kmh = 1.8 * (v0 + v1)
        kinetic_kwh = 0.5 * spec.mass_kg * (v1 * v1 - v0 * v0) / 3.6e6
        if self._profile.is_electric:
            used = (spec.base_per_km + spec.drag_per_km * v_kmh * v_kmh) * km
            used += kinetic_kwh / 0.9 if kinetic_kwh > 0 else kinetic_kwh * 0.6
            if self._climate_active():
                climate_kw = 0.4 + 0.1 * abs(self._outside_c() - self._set_point_c)
                used += min(climate_kw, 3.0) * dt / 3600.0
            self._energy = max(0.0, self._energy - used / spec.battery_kwh * 100.0)
        elif self._ignition:
            litres = (spec.base_per_km + spec.drag_per_km * v_kmh * v_kmh) * km
            litres += max(kinetic_kwh, 0.0) * spec.l_per_kwh
            litres += spec.idle_l_per_h * dt / 3600.0
            self._energy = max(0.0, self._energy - litres / spec.tank_l * 100.0)
        elif self._climate_active():  # remote climate while parked: the parking heater
            litres = _PARKING_HEATER_L_PER_H * dt / 3600.0
            self._energy = max(0.0, self._energy - litres / spec.tank_l * 100.0)

    def _update_engine(self, dt: float, v0: float) -> None:
        if self._profile.is_electric or not self._ignition:
            self._rpm = 0.0
            return
        v_kmh = self._speed_mps * 3.6
        if v_kmh < 1.0:
            rpm = 760.0
        else:
            # six gears, shifting up every 17 km/h; rpm climbs through each gear's band
            low = min(v_kmh // 17.0, 5.0) * 17.0
            rpm = 1100.0 + 1400.0 * min((v_kmh - low) / 17.0, 1.0)
            if self._speed_mps > v0 + 0.1 * dt:
                rpm += 350.0
        self._rpm = _clamp(rpm + self._rng.gauss(0.0, 15.0), 600.0, 4500.0)

    def _outside_c(self) -> float:
        return _outside_air_c(self.sim_time_ms) + self._outside_offset_c

    def _fan_pct(self) -> int:
        if not self._climate_active():
            return 0
        return int(_clamp(20.0 + 8.0 * abs(self._cabin_c - self._set_point_c), 0.0, 100.0))

    def _update_body(self, dt: float) -> None:
        outside = self._outside_c()
        moving = self._speed_mps > 0.0
        if self._climate_active():
            self._cabin_c = _relax(self._cabin_c, self._set_point_c, dt, _CLIMATE_TAU_S)
        else:
            self._cabin_c = _relax(self._cabin_c, outside, dt, 2400.0)
        if self._ignition:
            self._voltage = _relax(self._voltage, 14.2, dt, 20.0)
        else:
            self._voltage = _relax(self._voltage, 12.45, dt, 900.0)
        self._voltage = _clamp(self._voltage + self._rng.gauss(0.0, 0.003), 11.8, 14.6)
        tyre_target = outside + (15.0 + 0.2 * self._speed_mps * 3.6 if moving else 0.0)
        self._tyre_c = _relax(self._tyre_c, tyre_target, dt, 600.0 if moving else 1800.0)

    def _update_dtcs(self, dt: float) -> None:
        if not self._ignition:
            return
        now = self._elapsed_s
        for code in sorted(self._active_dtcs):
            if self._active_dtcs[code] <= now:
                del self._active_dtcs[code]
                self._emit(EventType.DTC_CLEARED, code)
        rng = self._rng
        if rng.random() < dt / self._spec.dtc_mean_interval_s:
            free = [(c, d) for c, d in self._spec.dtcs if c not in self._active_dtcs]
            if free and len(self._active_dtcs) < _MAX_ACTIVE_DTCS:
                code, description = rng.choice(free)
                self._active_dtcs[code] = now + rng.uniform(600.0, 2700.0)
                self._emit(EventType.DTC_SET, code, description)

    def _update_gps(self, dt: float) -> None:
        rng = self._rng
        self._gps_accuracy_m = _clamp(
            self._gps_accuracy_m + rng.gauss(0.0, 0.15 * math.sqrt(dt)), 2.5, 12.0
        )
        keep = math.exp(-dt / 20.0)
        spread = math.sqrt(1.0 - keep * keep) * self._gps_accuracy_m / 2.0
        self._gps_north_m = keep * self._gps_north_m + rng.gauss(0.0, spread)
        self._gps_east_m = keep * self._gps_east_m + rng.gauss(0.0, spread)
        self._alt_noise_m = keep * self._alt_noise_m + rng.gauss(0.0, 1.5 * spread)
        if self._speed_mps > 0.5:
            self._heading_deg = self._net.bearing_deg(
                self._route[self._leg], self._route[self._leg + 1]
            ) + rng.gauss(0.0, 0.4)
