"""The core's input types and the catalog signals the fleet rules read.

The core does not depend on how the gateway stores samples: an adapter turns a decoded
``schemas.Sample`` (or a stored row) into a :class:`Sample` of its time, values and seq,
and a ``schemas.Event`` into a :class:`VehicleEvent`. Values are as decoded (VSS types and
units of :data:`schemas.catalog.CATALOG`). Units send on change with a periodic full
heartbeat, so a sample holds only some signals: the rules remember the last known value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas.catalog import CATALOG
from schemas.payloads import Event, EventType, SignalValue
from schemas.payloads import Sample as ContractSample

from .geo import Point

__all__ = [
    "ENGINE_RUNNING",
    "FUEL_LEVEL",
    "HORIZONTAL_ACCURACY",
    "IGNITION",
    "IGNITION_ON_STATES",
    "IS_MOVING",
    "LATITUDE",
    "LONGITUDE",
    "ODOMETER",
    "SOC",
    "SPEED",
    "Sample",
    "Tick",
    "VehicleEvent",
    "ignition_of",
    "moving_of",
    "number_of",
    "position_of",
    "speed_of",
]

SPEED = "Vehicle.Speed"  # km/h
IS_MOVING = "Vehicle.IsMoving"
ODOMETER = "Vehicle.TraveledDistance"  # m
LATITUDE = "Vehicle.CurrentLocation.Latitude"
LONGITUDE = "Vehicle.CurrentLocation.Longitude"
HORIZONTAL_ACCURACY = "Vehicle.CurrentLocation.HorizontalAccuracy"  # m
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"  # percent
FUEL_LEVEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"  # percent
ENGINE_RUNNING = "Vehicle.Powertrain.CombustionEngine.IsRunning"
#: the 12 V system state is VSS's ignition: ON and START mean ignition on
IGNITION = "Vehicle.LowVoltageSystemState"
IGNITION_ON_STATES = frozenset({"ON", "START"})

for _name in (SPEED, IS_MOVING, ODOMETER, LATITUDE, LONGITUDE, HORIZONTAL_ACCURACY, SOC,
              FUEL_LEVEL, ENGINE_RUNNING, IGNITION):  # fmt: skip
    assert _name in CATALOG, _name  # a renamed catalog signal fails at import, not silently


@dataclass(frozen=True, slots=True)
class Sample:
    """One telemetry sample of one vehicle: when the unit took it (``ts_ms``, the unit's
    clock), what it reported, its seq, and when the gateway got it (``received_ms``, the
    gateway's clock, which "offline" compares with a :class:`Tick`; ``ts_ms`` if absent)."""

    ts_ms: int
    values: Mapping[str, SignalValue]
    seq: int | None = None
    received_ms: int | None = None

    @property
    def heard_ms(self) -> int:
        return self.ts_ms if self.received_ms is None else self.received_ms

    @classmethod
    def from_contract(cls, sample: ContractSample, received_ms: int | None = None) -> Sample:
        return cls(sample.ts, sample.signals, sample.seq, received_ms)


@dataclass(frozen=True, slots=True)
class VehicleEvent:
    """A unit's event (fault code set or cleared, ignition on or off). Fault codes come
    from events only, not from ``Vehicle.Diagnostics.DTCList``: two sources that lag each
    other would open and close the same code's alert."""

    ts_ms: int
    type: EventType
    code: str | None = None
    received_ms: int | None = None

    @property
    def heard_ms(self) -> int:
        return self.ts_ms if self.received_ms is None else self.received_ms

    @classmethod
    def from_contract(cls, event: Event, received_ms: int | None = None) -> VehicleEvent:
        return cls(event.ts, event.type, event.code, received_ms)


@dataclass(frozen=True, slots=True)
class Tick:
    """The passing of time with no sample: what lets "offline" fire. ``now_ms`` is the
    gateway's clock, given by the caller."""

    now_ms: int


def position_of(values: Mapping[str, SignalValue], last: Point | None = None) -> Point | None:
    """The sample's fix. A unit that sends on change may send one coordinate alone (moving
    due north leaves the longitude unchanged): the other is then taken from ``last``."""
    lat, lon = values.get(LATITUDE), values.get(LONGITUDE)
    if type(lat) is float and type(lon) is float:  # the usual fix: both, decoded as floats
        return Point(lon, lat)
    if lat is None and lon is None:
        return None
    if not isinstance(lat, int | float):
        lat = None if last is None else last.lat
    if not isinstance(lon, int | float):
        lon = None if last is None else last.lon
    return None if lat is None or lon is None else Point(float(lon), float(lat))


def speed_of(values: Mapping[str, SignalValue]) -> float | None:
    v = values.get(SPEED)
    if type(v) is float:  # the usual value: the checks below, in one comparison
        return v
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def ignition_of(values: Mapping[str, SignalValue]) -> bool | None:
    """Ignition from the 12 V state, else from the engine running; None when unknown."""
    state = values.get(IGNITION)
    if isinstance(state, str) and state != "UNDEFINED":
        return state in IGNITION_ON_STATES
    running = values.get(ENGINE_RUNNING)
    return running if isinstance(running, bool) else None


def number_of(values: Mapping[str, SignalValue], name: str) -> float | None:
    v = values.get(name)
    if type(v) is float or v is None:  # the usual values: the checks below, in one or two
        return v
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def moving_of(values: Mapping[str, SignalValue], still_kmh: float) -> bool | None:
    """Whether the vehicle moves: speed above ``still_kmh`` (either direction), else the
    unit's own IsMoving; None when neither is known."""
    speed = speed_of(values)
    if speed is not None:
        return abs(speed) > still_kmh
    moving = values.get(IS_MOVING)
    return moving if isinstance(moving, bool) else None
