"""The rental handover report (issue 16 item 6; docs/decisions/0026-lifecycle-owner-services.md):
a car's state when a driver's grant began (check-out) and when it ended (check-in), and
what changed in between. Pure: the route reads the telemetry and the alerts and hands the
points here.

The state at a moment is each signal's last value at or before it (a car reports what
changed, so the last value is what it was then).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CHARGE",
    "FAULT_CODES",
    "FUEL",
    "HANDOVER_SIGNALS",
    "LATITUDE",
    "LONGITUDE",
    "ODOMETER",
    "Snapshot",
    "snapshot",
    "state_at",
]

ODOMETER: Final = "Vehicle.TraveledDistance"
CHARGE: Final = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
FUEL: Final = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
FAULT_CODES: Final = "Vehicle.Diagnostics.DTCList"
LATITUDE: Final = "Vehicle.CurrentLocation.Latitude"
LONGITUDE: Final = "Vehicle.CurrentLocation.Longitude"
#: what a handover report reads
HANDOVER_SIGNALS: Final = (ODOMETER, CHARGE, FUEL, FAULT_CODES, LATITUDE, LONGITUDE)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A car's state at ``at``: each figure None when it never reported it before then;
    ``as_of``: the time of the newest sample the figures came from."""

    at: int
    as_of: int | None
    odometer_m: float | None
    charge_pct: float | None
    fuel_pct: float | None
    fault_codes: tuple[str, ...]
    latitude: float | None
    longitude: float | None


def state_at(
    points: Iterable[tuple[int, Mapping[str, Any]]], at: int
) -> dict[str, tuple[Any, int]]:
    """signal -> (value, ts) of the last value of each signal at or before ``at``;
    ``points``: (ts, values) in any order."""
    found: dict[str, tuple[Any, int]] = {}
    for ts, values in points:
        if ts > at:
            continue
        for name, value in values.items():
            if name not in found or ts >= found[name][1]:
                found[name] = (value, ts)
    return found


def _number(found: Mapping[str, tuple[Any, int]], name: str) -> float | None:
    got = found.get(name)
    if got is None or isinstance(got[0], bool) or not isinstance(got[0], int | float):
        return None
    return float(got[0])


def snapshot(found: Mapping[str, tuple[Any, int]], at: int) -> Snapshot:
    codes = found.get(FAULT_CODES)
    listed: Sequence[str] = codes[0] if codes is not None and isinstance(codes[0], list) else []
    return Snapshot(
        at=at,
        as_of=max((ts for _, ts in found.values()), default=None),
        odometer_m=_number(found, ODOMETER),
        charge_pct=_number(found, CHARGE),
        fuel_pct=_number(found, FUEL),
        fault_codes=tuple(sorted({str(c) for c in listed})),
        latitude=_number(found, LATITUDE),
        longitude=_number(found, LONGITUDE),
    )
