"""Geofences and their enter/exit detection with hysteresis.

A GPS fix wanders by 5-20 m (more between buildings), so a vehicle parked on a fence's
boundary would enter and exit every few seconds if "inside" were read off each fix. Each
(vehicle, geofence) pair has a :class:`FenceState`; it switches from inside to outside only
on a fix more than ``margin_m`` outside the boundary (and from outside to inside only on one
more than ``margin_m`` inside), and, with ``min_dwell_ms``, only when the fixes have stayed
beyond the margin that long. Fixes within the margin band change nothing, so jitter of less
than the margin around the boundary can never make it flap. The first fix sets the state
without a transition (we do not know where the vehicle came from).

A circle cannot be entered deeper than its radius, so its margin inwards is at most half
the radius. A polygon narrower than twice the margin is entered only where it is wide
enough; fences are drawn around depots and zones, far wider than GPS error.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Literal

from .geo import BOX_SLACK_M, M_PER_DEG, Point, Shape

__all__ = [
    "DEFAULT_MARGIN_M",
    "DEFAULT_MIN_DWELL_MS",
    "ActiveWindow",
    "FenceIndex",
    "FenceState",
    "Geofence",
    "Transition",
    "fence_index",
    "update_fence",
]

#: beyond typical GPS error (5-10 m open sky, ~20 m in a city street)
DEFAULT_MARGIN_M = 25.0
#: two fixes at the usual 1-5 s reporting interval: one stray fix does not switch
DEFAULT_MIN_DWELL_MS = 10_000


@dataclass(frozen=True, slots=True)
class ActiveWindow:
    """A local time-of-day range on some weekdays (0 = Monday), in an IANA time zone.

    ``start`` to ``end``, end excluded; ``end`` earlier than ``start`` wraps past midnight
    (22:00-06:00) and the hours after midnight belong to the weekday the window started
    on; ``start == end`` is the whole day. Daylight saving is the zone's: 08:00 stays 08:00.
    The zone is looked up once (the tz database is read-only data, like the catalog).
    """

    start: dt.time
    end: dt.time
    tz: str
    weekdays: Set[int] = frozenset(range(7))
    _zone: zoneinfo.ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not set(self.weekdays) <= set(range(7)):
            raise ValueError("weekdays are 0 (Monday) to 6 (Sunday)")
        try:
            zone = zoneinfo.ZoneInfo(self.tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r}") from exc
        object.__setattr__(self, "_zone", zone)

    def contains(self, ts_ms: int) -> bool:
        """Whether the instant ``ts_ms`` (Unix milliseconds) falls in the window."""
        local = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).astimezone(self._zone)
        t = local.time().replace(tzinfo=None)
        day = local.weekday()
        if self.start == self.end:
            return day in self.weekdays
        if self.start < self.end:
            return day in self.weekdays and self.start <= t < self.end
        if t >= self.start:
            return day in self.weekdays
        return t < self.end and (day - 1) % 7 in self.weekdays


@dataclass(frozen=True, slots=True)
class Geofence:
    """An organization's fence: a shape, an optional speed limit inside it, and optional
    hours (``window``: a depot's opening hours; leaving outside them is "out of hours")."""

    id: str
    shape: Shape
    name: str = ""
    speed_limit_kmh: float | None = None
    window: ActiveWindow | None = None
    alert_enter: bool = True
    alert_exit: bool = True


@dataclass(frozen=True, slots=True)
class FenceState:
    """Where one vehicle is with respect to one fence; ``pending_since_ms`` is when the fixes
    started being beyond the margin on the other side (None when they are not)."""

    inside: bool
    pending_since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A confirmed crossing; ``ts_ms`` is the first fix beyond the margin."""

    kind: Literal["enter", "exit"]
    ts_ms: int


def update_fence(
    state: FenceState | None,
    shape: Shape,
    point: Point,
    ts_ms: int,
    *,
    margin_m: float = DEFAULT_MARGIN_M,
    min_dwell_ms: int = DEFAULT_MIN_DWELL_MS,
) -> tuple[FenceState, Transition | None]:
    """The fence state after one fix, and the transition it confirms (if any)."""
    d = shape.signed_distance_m(point, cutoff_m=2 * margin_m)
    if state is None:
        return FenceState(inside=d < 0), None
    beyond = d > margin_m if state.inside else d < -min(margin_m, shape.max_depth_m / 2)
    if not beyond:
        return (state if state.pending_since_ms is None else FenceState(state.inside)), None
    since = ts_ms if state.pending_since_ms is None else state.pending_since_ms
    if ts_ms - since < min_dwell_ms:
        return FenceState(state.inside, since), None
    kind: Literal["enter", "exit"] = "exit" if state.inside else "enter"
    return FenceState(not state.inside), Transition(kind, since)


#: the index's cells, in degrees of latitude and longitude (about 1.1 km by 0.7 km at 50 N)
_CELL_DEG = 0.01
#: a fence whose box covers more cells than this is looked at for every fix (a region)
_MAX_CELLS = 2_000


class FenceIndex:
    """Which of an organization's fences a fix may be near: a grid of ``_CELL_DEG`` cells,
    each listing the fences whose box, widened by more than the 50 m of
    :func:`~gateway.core.fleet.geo.surely_outside`, touches it. A fence not listed in a
    fix's cell is surely outside by that test (property test), so the rules skip it; the
    fences of a fix are then a handful whatever the organization has."""

    def __init__(self, fences: tuple[Geofence, ...], cell_deg: float = _CELL_DEG) -> None:
        self.fences = fences
        self._cell_deg = cell_deg
        self.by_id = {f.id: f for f in fences}
        #: the fence ids in the organization's order (the order of a vehicle's fence states)
        self.ids = tuple(self.by_id)
        #: each fence's state when it is surely outside: the start of every fix's states
        self.outside = dict.fromkeys(self.by_id, _OUTSIDE)
        self._cells: dict[tuple[int, int], list[Geofence]] = {}
        self._everywhere: list[Geofence] = []
        for fence in fences:
            x0, y0, x1, y1 = fence.shape.bbox
            # BOX_SLACK_M and some: a fix at that distance in metres is inside the widened box
            pad_lat = 2 * BOX_SLACK_M / M_PER_DEG
            far = min(89.0, max(abs(y0), abs(y1)) + pad_lat)
            pad_lon = 2 * BOX_SLACK_M / (M_PER_DEG * math.cos(math.radians(far)))
            i0, i1 = self._cell(x0 - pad_lon), self._cell(x1 + pad_lon)
            j0, j1 = self._cell(y0 - pad_lat), self._cell(y1 + pad_lat)
            if (i1 - i0 + 1) * (j1 - j0 + 1) > _MAX_CELLS:
                self._everywhere.append(fence)
                continue
            for i in range(i0, i1 + 1):
                for j in range(j0, j1 + 1):
                    self._cells.setdefault((i, j), []).append(fence)

    def near(self, p: Point) -> list[Geofence]:
        """The fences ``p`` may be within 50 m of (in the organization's order)."""
        listed = self._cells.get((self._cell(p.lon), self._cell(p.lat)))
        if not self._everywhere:
            return listed or []
        if not listed:
            return self._everywhere
        return [f for f in self.fences if f in listed or f in self._everywhere]

    def cell_of(self, p: Point) -> tuple[int, int]:
        """The index cell of ``p``: fixes in one cell have the same :meth:`near` fences."""
        return (math.floor(p.lon / self._cell_deg), math.floor(p.lat / self._cell_deg))

    def _cell(self, degrees: float) -> int:
        return math.floor(degrees / self._cell_deg)


#: outside a fence, nothing pending
_OUTSIDE = FenceState(inside=False)
_INDEXES: dict[int, FenceIndex] = {}


def fence_index(fences: tuple[Geofence, ...]) -> FenceIndex:
    """The index of ``fences``, built once per tuple (settings share one tuple for every
    vehicle of an organization until the fences change)."""
    index = _INDEXES.get(id(fences))
    if index is None or index.fences is not fences:
        if len(_INDEXES) >= 256:
            _INDEXES.clear()
        index = _INDEXES[id(fences)] = FenceIndex(fences)
    return index
