"""The signal catalog: every telemetry signal the product accepts, typed after COVESA VSS.

Each entry is a real VSS path (a test checks them all against the VSS catalog export
vendored in ``third_party/vss``). Datatype and unit are the ones VSS gives. Where VSS gives a
minimum or maximum we use it; where it gives none, the product sets a plausibility bound
(a car that reports 900 km/h is broken, not fast) and marks it with ``bounds="product"``.
Anything outside the catalog is rejected as ``unknown_signal``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = ["CATALOG", "Datatype", "SignalSpec", "signal"]


class Datatype(enum.StrEnum):
    """VSS datatypes the catalog uses."""

    BOOLEAN = "boolean"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    INT16 = "int16"
    INT32 = "int32"
    FLOAT = "float"
    DOUBLE = "double"
    STRING = "string"
    STRING_ARRAY = "string[]"

    @property
    def is_integer(self) -> bool:
        return self in _INTEGER_RANGES

    @property
    def is_number(self) -> bool:
        return self.is_integer or self in (Datatype.FLOAT, Datatype.DOUBLE)

    @property
    def integer_range(self) -> tuple[int, int]:
        return _INTEGER_RANGES[self]


_INTEGER_RANGES = {
    Datatype.UINT8: (0, 2**8 - 1),
    Datatype.UINT16: (0, 2**16 - 1),
    Datatype.UINT32: (0, 2**32 - 1),
    Datatype.INT16: (-(2**15), 2**15 - 1),
    Datatype.INT32: (-(2**31), 2**31 - 1),
}


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """One catalog entry."""

    path: str
    datatype: Datatype
    unit: str | None
    description: str
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    #: where min/max come from: the VSS specification or a product plausibility bound
    bounds: Literal["vss", "product", "none"] = "vss"

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "datatype": self.datatype.value,
            "unit": self.unit,
            "min": self.min,
            "max": self.max,
            "allowed": list(self.allowed) if self.allowed is not None else None,
            "bounds": self.bounds,
            "description": self.description,
        }


def signal(
    path: str,
    datatype: Datatype,
    unit: str | None,
    description: str,
    *,
    min: float | None = None,
    max: float | None = None,
    allowed: Iterable[str] | None = None,
    bounds: Literal["vss", "product", "none"] | None = None,
) -> SignalSpec:
    if bounds is None:
        bounds = "none" if min is None and max is None else "vss"
    return SignalSpec(
        path=path,
        datatype=datatype,
        unit=unit,
        description=description,
        min=min,
        max=max,
        allowed=tuple(allowed) if allowed is not None else None,
        bounds=bounds,
    )


D = Datatype
_P: Literal["product"] = "product"

_ENTRIES: tuple[SignalSpec, ...] = (
    # --- motion and position -------------------------------------------------------
    signal("Vehicle.Speed", D.FLOAT, "km/h", "Vehicle speed.", min=-60, max=400, bounds=_P),
    signal("Vehicle.IsMoving", D.BOOLEAN, None, "Whether the vehicle is moving."),
    signal("Vehicle.TraveledDistance", D.UINT32, "m", "Odometer reading, total distance."),
    signal(
        "Vehicle.TraveledDistanceSinceStart", D.UINT32, "m", "Distance since the ignition cycle."
    ),
    signal(
        "Vehicle.CurrentLocation.Latitude", D.DOUBLE, "degrees", "WGS 84 latitude.", min=-90, max=90
    ),
    signal(
        "Vehicle.CurrentLocation.Longitude",
        D.DOUBLE,
        "degrees",
        "WGS 84 longitude.",
        min=-180,
        max=180,
    ),
    signal(
        "Vehicle.CurrentLocation.Heading",
        D.DOUBLE,
        "degrees",
        "Heading relative to true north, clockwise.",
        min=0,
        max=360,
    ),
    signal(
        "Vehicle.CurrentLocation.Altitude",
        D.DOUBLE,
        "m",
        "Altitude above sea level.",
        min=-500,
        max=9000,
        bounds=_P,
    ),
    signal(
        "Vehicle.CurrentLocation.HorizontalAccuracy",
        D.DOUBLE,
        "m",
        "Accuracy of latitude and longitude.",
        min=0,
        max=100000,
        bounds=_P,
    ),
    # --- electric powertrain ---------------------------------------------------------
    signal(
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        D.FLOAT,
        "percent",
        "Physical state of charge of the high-voltage battery.",
        min=0,
        max=100,
    ),
    signal(
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed",
        D.FLOAT,
        "percent",
        "State of charge shown to the driver.",
        min=0,
        max=100,
    ),
    signal(
        "Vehicle.Powertrain.TractionBattery.Charging.IsCharging",
        D.BOOLEAN,
        None,
        "Whether the battery is charging.",
    ),
    signal(
        "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit",
        D.UINT8,
        "percent",
        "Target state of charge for charging.",
        min=0,
        max=100,
    ),
    signal("Vehicle.Powertrain.Range", D.UINT32, "m", "Remaining range on all energy sources."),
    # --- combustion powertrain --------------------------------------------------------
    signal(
        "Vehicle.Powertrain.FuelSystem.RelativeLevel",
        D.UINT8,
        "percent",
        "Fuel level as a share of tank capacity.",
        min=0,
        max=100,
    ),
    signal(
        "Vehicle.Powertrain.FuelSystem.IsFuelLevelLow",
        D.BOOLEAN,
        None,
        "Whether the low-fuel warning is on.",
    ),
    signal(
        "Vehicle.Powertrain.CombustionEngine.Speed",
        D.FLOAT,
        "rpm",
        "Engine speed.",
        min=0,
        max=12000,
        bounds=_P,
    ),
    signal(
        "Vehicle.Powertrain.CombustionEngine.IsRunning",
        D.BOOLEAN,
        None,
        "Whether the engine is rotating.",
    ),
    signal(
        "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure",
        D.UINT16,
        "kPa",
        "Front left tyre pressure.",
        min=0,
        max=1000,
        bounds=_P,
    ),
    # --- body and cabin ----------------------------------------------------------------
    signal(
        "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked",
        D.BOOLEAN,
        None,
        "Whether the driver's door is locked.",
    ),
    signal(
        "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
        D.BOOLEAN,
        None,
        "Whether the driver's door is open.",
    ),
    signal(
        "Vehicle.Cabin.Door.Row1.DriverSide.Window.Position",
        D.UINT8,
        "percent",
        "Driver window position: 0 closed, 100 fully open.",
        min=0,
        max=100,
    ),
    signal(
        "Vehicle.Cabin.HVAC.AmbientAirTemperature",
        D.FLOAT,
        "Celsius",
        "Cabin air temperature.",
        min=-60,
        max=90,
        bounds=_P,
    ),
    signal(
        "Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature",
        D.FLOAT,
        "Celsius",
        "Climate target temperature, driver side.",
        min=10,
        max=35,
        bounds=_P,
    ),
    signal(
        "Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed",
        D.UINT8,
        "percent",
        "Fan speed, driver side.",
        min=0,
        max=100,
    ),
    signal("Vehicle.Body.Horn.IsActive", D.BOOLEAN, None, "Whether the horn is sounding."),
    signal(
        "Vehicle.Body.Lights.Hazard.IsSignaling",
        D.BOOLEAN,
        None,
        "Whether the hazard lights are flashing.",
    ),
    signal(
        "Vehicle.Exterior.AirTemperature",
        D.FLOAT,
        "Celsius",
        "Outside air temperature.",
        min=-60,
        max=70,
        bounds=_P,
    ),
    signal(
        "Vehicle.LowVoltageSystemState",
        D.STRING,
        None,
        "State of the 12 V system (ignition).",
        allowed=("UNDEFINED", "LOCK", "OFF", "ACC", "ON", "START"),
    ),
    signal(
        "Vehicle.LowVoltageBattery.CurrentVoltage",
        D.FLOAT,
        "V",
        "12 V battery voltage.",
        min=0,
        max=60,
        bounds=_P,
    ),
    # --- diagnostics -------------------------------------------------------------------
    signal("Vehicle.Diagnostics.DTCCount", D.UINT8, None, "Number of active trouble codes."),
    signal(
        "Vehicle.Diagnostics.DTCList",
        D.STRING_ARRAY,
        None,
        "Active diagnostic trouble codes, e.g. P0301.",
    ),
)

#: path -> spec, read-only
CATALOG: Mapping[str, SignalSpec] = MappingProxyType({e.path: e for e in _ENTRIES})
