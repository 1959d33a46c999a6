"""Maintenance due (issue 16 item 4): what a vehicle's service plan says is due, from its
odometer, its age and its fault codes. Pure (docs/decisions/0013-architecture-step.md): the
checker (``gateway.fleet.maintenance``) reads the telemetry and the state database and
asks :func:`due_items`; the same answer is what the diagnostics route shows.

A plan is per vehicle model, and the model is the start of the VIN (its WMI and model
positions, as the maker assigns them): the plan with the longest ``vin_prefix`` the VIN
starts with applies (:func:`plan_for`; a plan with the empty prefix is the installation's
default). A plan says:

- ``every_km``: a service at every multiple of this distance on the odometer (15,000 km,
  30,000 km, ...), as service books count;
- ``every_months``: a service every this many months (30-day months) since the car first
  reported or was registered (``since_ms``);
- ``fault_codes``: trouble codes that need a workshop (a code ending in ``*`` matches the
  codes it starts).

Each due item has a stable ``key`` (``distance:2`` is the second distance interval,
``time:1`` the first time interval, ``fault:P0301`` a code): a holding period is notified
once per key, and a finished service marks the keys due then as done.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MONTH_MS",
    "DueItem",
    "ServicePlan",
    "due_items",
    "fault_code_matches",
    "plan_for",
]

#: a plan's month: 30 days, in milliseconds
MONTH_MS: Final = 30 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class ServicePlan:
    name: str
    vin_prefix: str
    every_km: int | None
    every_months: int | None
    fault_codes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DueItem:
    """One reason a service is due: ``kind`` is ``distance``, ``time`` or ``fault_code``;
    ``at`` the odometer (km), the time (epoch ms) or the code that made it due."""

    key: str
    kind: str
    at: int | str
    message: str


def plan_for(vin: str, plans: Iterable[ServicePlan]) -> ServicePlan | None:
    """The plan with the longest ``vin_prefix`` that ``vin`` starts with (None: none)."""
    best: ServicePlan | None = None
    for plan in plans:
        if vin.startswith(plan.vin_prefix) and (
            best is None or len(plan.vin_prefix) > len(best.vin_prefix)
        ):
            best = plan
    return best


def fault_code_matches(pattern: str, code: str) -> bool:
    if pattern.endswith("*"):
        return code.startswith(pattern[:-1])
    return code == pattern


def due_items(
    plan: ServicePlan,
    *,
    odometer_m: int | None,
    now_ms: int,
    since_ms: int | None,
    fault_codes: Sequence[str],
) -> list[DueItem]:
    """What is due now under ``plan`` (newest interval only: a car at 47,000 km with a
    15,000 km plan is due for its third service, not for three). Unknown inputs (no
    odometer yet, no start time) make nothing due of their kind."""
    out: list[DueItem] = []
    if plan.every_km is not None and odometer_m is not None and odometer_m >= 0:
        n = odometer_m // (plan.every_km * 1000)
        if n >= 1:
            km = n * plan.every_km
            out.append(DueItem(f"distance:{n}", "distance", km, f"the {km} km service is due"))
    if plan.every_months is not None and since_ms is not None and now_ms > since_ms:
        n = (now_ms - since_ms) // (plan.every_months * MONTH_MS)
        if n >= 1:
            at = since_ms + n * plan.every_months * MONTH_MS
            out.append(
                DueItem(
                    f"time:{n}",
                    "time",
                    at,
                    f"the {n * plan.every_months}-month service is due",
                )
            )
    seen: set[str] = set()
    for code in fault_codes:
        if code in seen:
            continue
        if any(fault_code_matches(p, code) for p in plan.fault_codes):
            seen.add(code)
            out.append(
                DueItem(f"fault:{code}", "fault_code", code, f"fault code {code} needs a workshop")
            )
    return out
