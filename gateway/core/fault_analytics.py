"""Fault-code analytics for quality engineering (issue 16 item 7;
docs/decisions/0026-lifecycle-owner-services.md): across the installation, which trouble
codes occur on which models, on how many vehicles, how often and since when, as aggregates
that never single out a vehicle or its owner.

k-anonymity: a (model, code) group is reported only when at least ``min_group`` distinct
vehicles are in it (:data:`MIN_GROUP` at least); smaller groups are left out, and only
their number is said. Nothing names a VIN, an account or a holding period, and "since
when" is the UTC day of the group's first occurrence, not its time. Pure: the route reads
the events and hands them here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from gateway.core.fleet.reports import model_of_vin

__all__ = ["MIN_GROUP", "FaultAnalytics", "FaultGroup", "fault_groups"]

#: the smallest group ever reported: an installation may ask for more, never for less
MIN_GROUP: Final = 5
_DAY_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class FaultGroup:
    model: str
    code: str
    vehicles: int
    occurrences: int
    #: start of the UTC day of the first occurrence in the range (epoch ms)
    first_day: int


@dataclass(frozen=True, slots=True)
class FaultAnalytics:
    groups: list[FaultGroup]
    #: groups left out because fewer than the minimum of vehicles were in them
    suppressed: int


def fault_groups(
    occurrences: Iterable[tuple[str, str, int]], *, min_group: int = MIN_GROUP
) -> FaultAnalytics:
    """``occurrences``: (vin, code, ts) of each fault code set; the groups by model then
    code, each with at least ``max(min_group, MIN_GROUP)`` vehicles."""
    k = max(min_group, MIN_GROUP)
    vins: dict[tuple[str, str], set[str]] = {}
    counts: dict[tuple[str, str], int] = {}
    first: dict[tuple[str, str], int] = {}
    for vin, code, ts in occurrences:
        key = (model_of_vin(vin), code)
        vins.setdefault(key, set()).add(vin)
        counts[key] = counts.get(key, 0) + 1
        first[key] = min(first.get(key, ts), ts)
    groups = [
        FaultGroup(m, c, len(vins[(m, c)]), counts[(m, c)], first[(m, c)] // _DAY_MS * _DAY_MS)
        for m, c in sorted(counts)
        if len(vins[(m, c)]) >= k
    ]
    return FaultAnalytics(groups, len(counts) - len(groups))
