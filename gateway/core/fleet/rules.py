"""Fleet rules: one vehicle's samples, events and clock ticks in, alert changes out.

:func:`evaluate` is a pure function ``(state, item, settings) -> (new_state, changes)``,
called for each of one vehicle's items in order (see docs/decisions/0014-fleet-rules-core.md
for how that order is kept). An alert has a ``key``: while a condition lasts its alert stays
open under that key (updated when it gets markedly worse, never re-raised per sample) and it
is closed when the condition clears. Numeric thresholds clear with hysteresis (low SoC
opens below 15 % and clears above 20 %), durations need a minimum time (overspeed 10 s,
idling 5 min), geofence crossings need a margin and a dwell (:mod:`.geofence`).

Some alerts are instants (a geofence entered, left): they come as one ``opened`` change
whose alert already has ``end_ms == start_ms`` and are never in the open set.

A sample older than the newest one evaluated (a store-and-forward upload that arrives after
live data) only fills seq gaps: alerts are about what happens now and are not rewritten
for the past (trips are, :func:`gateway.core.fleet.trips.recompute`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from schemas.payloads import EventType, SignalValue

from .geo import M_PER_DEG, Point, surely_outside
from .geofence import (
    DEFAULT_MARGIN_M,
    DEFAULT_MIN_DWELL_MS,
    FenceState,
    Geofence,
    fence_index,
    update_fence,
)
from .geofence import Transition as FenceTransition
from .signals import (
    ENGINE_RUNNING,
    FUEL_LEVEL,
    HORIZONTAL_ACCURACY,
    IGNITION,
    IS_MOVING,
    LATITUDE,
    LONGITUDE,
    SOC,
    SPEED,
    Sample,
    Tick,
    VehicleEvent,
    ignition_of,
    moving_of,
    number_of,
    position_of,
    speed_of,
)

__all__ = [
    "Alert",
    "AlertChange",
    "AlertKind",
    "Envelope",
    "Item",
    "RuleSettings",
    "RuleState",
    "SeqGap",
    "Severity",
    "evaluate",
    "evaluate_many",
]


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertKind(enum.StrEnum):
    OVERSPEED = "overspeed"
    GEOFENCE_ENTER = "geofence_enter"
    GEOFENCE_EXIT = "geofence_exit"
    #: left a fence outside its active window ("leaves the depot out of hours"); open until
    #: the vehicle is back inside
    GEOFENCE_EXIT_OUT_OF_HOURS = "geofence_exit_out_of_hours"
    HARSH_BRAKING = "harsh_braking"
    HARSH_ACCELERATION = "harsh_acceleration"
    IDLING = "idling"
    LOW_SOC = "low_soc"
    LOW_FUEL = "low_fuel"
    FAULT_CODE = "fault_code"
    OFFLINE = "offline"
    IGNITION = "ignition"
    SEQ_GAP = "seq_gap"


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert; ``end_ms`` is None while it is open."""

    kind: AlertKind
    key: str
    severity: Severity
    start_ms: int
    end_ms: int | None = None
    detail: Mapping[str, str | int | float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlertChange:
    """What the adapter stores and notifies: an alert opened, updated or closed."""

    action: Literal["opened", "updated", "closed"]
    alert: Alert


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """Per-organization rule settings (the fleet's limit resolved by the adapter). Defaults
    and their reasons are in decision 0014."""

    speed_limit_kmh: float | None = None
    fleet_speed_limit_kmh: float | None = None
    overspeed_min_ms: int = 10_000
    overspeed_clear_kmh: float = 5.0
    overspeed_update_kmh: float = 10.0
    geofences: tuple[Geofence, ...] = ()
    geofence_margin_m: float = DEFAULT_MARGIN_M
    geofence_min_dwell_ms: int = DEFAULT_MIN_DWELL_MS
    max_fix_accuracy_m: float = 100.0
    harsh_braking_mps2: float = 4.0
    harsh_acceleration_mps2: float = 3.0
    harsh_interval_ms: tuple[int, int] = (500, 5_000)
    still_kmh: float = 2.0
    idle_after_ms: int = 5 * 60_000
    low_soc_pct: tuple[float, float, float] = (15.0, 20.0, 5.0)  # open, clear, critical
    low_fuel_pct: tuple[float, float, float] = (10.0, 15.0, 5.0)
    offline_after_ms: int = 15 * 60_000
    seq_gap_grace_ms: int = 60_000
    max_seq_gaps: int = 32
    enabled: frozenset[AlertKind] = frozenset(AlertKind)


@dataclass(frozen=True, slots=True)
class SeqGap:
    """Missing seqs ``lo..hi``; ``key`` names its alert (raised once the grace is over)."""

    key: str
    lo: int
    hi: int
    detected_ms: int
    alerted: bool = False


@dataclass(frozen=True, slots=True)
class RuleState:
    """Everything the rules remember about one vehicle; a new value after each item."""

    last_ts_ms: int | None = None
    heard_ms: int | None = None
    last_seq: int | None = None
    known: Mapping[str, SignalValue] = field(default_factory=dict)
    speed_at: tuple[int, float] | None = None
    place: Point | None = None
    since: Mapping[str, int] = field(default_factory=dict)
    fences: Mapping[str, FenceState] = field(default_factory=dict)
    alerts: Mapping[str, Alert] = field(default_factory=dict)
    gaps: tuple[SeqGap, ...] = ()
    #: where a fix changes no fence state (:class:`Envelope`): derived from ``fences`` and
    #: the settings, so neither compared nor stored (None: not known yet)
    quiet: Envelope | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A disc around a fix in which no fence state can change (decision 0044): for the
    fence states ``fences`` under ``settings``, a fix before ``until`` in the index cell
    ``cell`` less than ``sqrt(r2)`` metres from (``lon``, ``lat``) is on the same side of
    every fence's margin as the states say (beyond it for a pending one, its dwell not
    yet over), so :func:`update_fence` would give every state back unchanged. Also the
    speed limit those states give (what :func:`_speed_limit` derives)."""

    settings: RuleSettings
    fences: Mapping[str, FenceState]
    cell: tuple[int, int]
    lon: float
    lat: float
    #: metres per degree of longitude at ``lat``
    kx: float
    r2: float
    #: the first time a pending state would be confirmed (a fix then is not quiet)
    until: int
    limit: tuple[float, str] | None


Item = Sample | VehicleEvent | Tick

_TRACKED = frozenset({SPEED, IS_MOVING, IGNITION, ENGINE_RUNNING, SOC, FUEL_LEVEL})


class _Work:
    """A mutable working copy of the state for one evaluation, and the changes made."""

    def __init__(self, state: RuleState, settings: RuleSettings, quiet: bool = True) -> None:
        self.s = settings
        self.last_ts, self.heard, self.last_seq = state.last_ts_ms, state.heard_ms, state.last_seq
        self.known = dict(state.known)
        self.speed_at = state.speed_at
        self.place = state.place
        #: ``since``, ``alerts`` and ``gaps`` are the state's own until first changed
        #: (copied then: :meth:`own_since`, :meth:`own_alerts`, :meth:`own_gaps`): most
        #: samples change none of them, and a state kept unchanged keeps its objects (so
        #: a writer can tell at a glance)
        self.since: Mapping[str, int] = state.since
        self._since_own: dict[str, int] | None = None
        self.fences = state.fences
        self.alerts: Mapping[str, Alert] = state.alerts
        self._alerts_own: dict[str, Alert] | None = None
        self._alerts0 = state.alerts
        self.gaps: Sequence[SeqGap] = state.gaps
        self._gaps_own: list[SeqGap] | None = None
        self.changes: list[AlertChange] = []
        #: the settings' fence index, and what was derived from the fence states of the
        #: mapping ``fences`` names (it is replaced, never changed in place, so one look per
        #: mapping: most fixes change no fence, decision 0040): the fences inside or
        #: pending, whether its keys are the index's in its order, and the speed limit
        self.index = fence_index(settings.geofences)
        self.derived_of: Mapping[str, FenceState] | None = None
        self.astray: list[str] = []
        self.in_order = False
        self.limit_of: Mapping[str, FenceState] | None = None
        self.limit: tuple[float, str] | None = None
        #: whether samples that change nothing but the counters take the quiet path
        self.fast = quiet
        self.quiet = state.quiet
        if quiet and state.quiet is not None and state.quiet.settings is settings:
            self.limit_of, self.limit = state.quiet.fences, state.quiet.limit

    def own_since(self) -> dict[str, int]:
        own = self._since_own
        if own is None:
            own = self._since_own = dict(self.since)
            self.since = own
        return own

    def own_alerts(self) -> dict[str, Alert]:
        own = self._alerts_own
        if own is None:
            own = self._alerts_own = dict(self.alerts)
            self.alerts = own
        return own

    def own_gaps(self) -> list[SeqGap]:
        own = self._gaps_own
        if own is None:
            own = self._gaps_own = list(self.gaps)
            self.gaps = own
        return own

    def derive(self) -> None:
        """:attr:`astray` and :attr:`in_order` of the current :attr:`fences`."""
        fences = self.fences
        if fences is self.derived_of:
            return
        by_id = self.index.by_id
        self.astray = [
            fence_id
            for fence_id, state in fences.items()
            if (state.inside or state.pending_since_ms is not None) and fence_id in by_id
        ]
        self.in_order = len(fences) == len(by_id) and tuple(fences) == self.index.ids
        self.derived_of = fences

    def freeze(self) -> RuleState:
        return RuleState(
            self.last_ts,
            self.heard,
            self.last_seq,
            self.known,
            self.speed_at,
            self.place,
            self.since,
            self.fences,
            self.alerts
            if self.alerts is not self._alerts0 and self.alerts != self._alerts0
            else self._alerts0,
            tuple(self.gaps),
            self.quiet,
        )

    def open(
        self, kind: AlertKind, key: str, start: int, severity: Severity, **detail: str | int | float
    ) -> None:
        if key in self.alerts or kind not in self.s.enabled:
            return
        self.own_alerts()[key] = alert = Alert(kind, key, severity, start, None, detail)
        self.changes.append(AlertChange("opened", alert))

    def instant(self, kind: AlertKind, key: str, ts: int, **detail: str | int | float) -> None:
        if kind in self.s.enabled:
            alert = Alert(kind, key, Severity.INFO, ts, ts, detail)
            self.changes.append(AlertChange("opened", alert))

    def update(
        self, key: str, severity: Severity | None = None, **detail: str | int | float
    ) -> None:
        old = self.alerts[key]
        new = replace(old, severity=severity or old.severity, detail={**old.detail, **detail})
        self.own_alerts()[key] = new
        self.changes.append(AlertChange("updated", new))

    def close(self, key: str, end: int) -> None:
        old = self.own_alerts().pop(key) if key in self.alerts else None
        if old is not None:
            self.changes.append(AlertChange("closed", replace(old, end_ms=max(end, old.start_ms))))


def evaluate(
    state: RuleState, item: Item, settings: RuleSettings
) -> tuple[RuleState, tuple[AlertChange, ...]]:
    """The rules' verdict on one item of one vehicle: the new state and the alert changes."""
    return evaluate_many(state, (item,), settings)


def evaluate_many(
    state: RuleState, items: Iterable[Item], settings: RuleSettings, *, quiet: bool = True
) -> tuple[RuleState, tuple[AlertChange, ...]]:
    """:func:`evaluate` folded over one vehicle's ``items`` in order: the last state and
    every change, in one working copy of the state instead of one per item (the worker
    evaluates a vehicle's few new items per pass; property test: the same as the fold).
    ``quiet``: a sample that can change no rule's state takes the quiet path (a few
    comparisons, :func:`_quiet`); False runs every rule on every sample (property test: the
    same states and changes, decision 0044)."""
    w = _Work(state, settings, quiet)
    for item in items:
        if isinstance(item, Tick):
            _tick(w, item.now_ms)
        elif isinstance(item, VehicleEvent):
            _event(w, item)
        else:
            _sample(w, item)
    return w.freeze(), tuple(w.changes)


def _sample(w: _Work, s: Sample) -> None:
    received, ts, seq, last_seq = s.received_ms, s.ts_ms, s.seq, w.last_seq
    heard = ts if received is None else received
    if seq is not None and last_seq is not None and seq == last_seq + 1:
        w.last_seq = seq  # the usual sample: the next seq (what _seq does then)
    else:
        _seq(w, seq, heard)
    if w.gaps or "offline" in w.alerts:
        _heard(w, heard)
    elif w.heard is None or heard > w.heard:  # what _heard does then
        w.heard = heard
    if w.last_ts is not None and ts < w.last_ts:
        return
    w.last_ts = ts
    values, known = s.values, w.known
    for name in _TRACKED:
        if name in values:
            known[name] = values[name]
    # what the rules below read of the known values, looked up once per sample
    on, speed = ignition_of(known), speed_of(known)
    if w.fast and _quiet(w, s, ts, on, speed):
        return
    _ignition(w, ts, on)
    if LATITUDE in values or LONGITUDE in values:
        _geofences(w, s)
    _overspeed(w, ts, speed)
    _harsh(w, ts, speed_of(values))
    _idling(w, ts, on, speed)
    _level(w, ts, SOC, AlertKind.LOW_SOC, w.s.low_soc_pct)
    _level(w, ts, FUEL_LEVEL, AlertKind.LOW_FUEL, w.s.low_fuel_pct)


#: a fence farther than this from a fix leaves it at least this much room (its distance
#: is exact up to it, a lower bound beyond: :meth:`~.geo.Shape.signed_distance_m`)
_ENVELOPE_CUTOFF_M = 500.0
#: the envelope's radius is this share of the least room, less a metre: the disc test
#: measures in a flat projection at the centre, the fences in their own (haversine, or
#: flat at the fix), which differ by far less than that within a few hundred metres
_ENVELOPE_SHARE = 0.9
_ENVELOPE_SLACK_M = 1.0
_FOREVER = 2**62


def _quiet(w: _Work, s: Sample, ts: int, on: bool | None, speed: float | None) -> bool:
    """The quiet path (decision 0044): True, with the fix and the last speed taken, when
    no rule would change its state or raise anything for this sample (each test below is
    the rule's own condition for doing nothing, the fences' is the :class:`Envelope`);
    False, with nothing changed but the envelope (a cache), when every rule must look."""
    alerts, settings, known = w.alerts, w.s, w.known
    if on:
        if "ignition" not in alerts and AlertKind.IGNITION in settings.enabled:
            return False
    elif on is False and "ignition" in alerts:
        return False
    if SOC in known and not _level_quiet(w, SOC, "low_soc", settings.low_soc_pct):
        return False
    if FUEL_LEVEL in known and not _level_quiet(w, FUEL_LEVEL, "low_fuel", settings.low_fuel_pct):
        return False
    if not _idling_quiet(w, ts, on, speed):
        return False
    own = speed_of(s.values)
    if own is not None and not _harsh_quiet(w, ts, own):
        return False
    point = _quiet_fix(w, s.values, ts)
    if point is False:
        return False
    if not _overspeed_quiet(w, ts, speed):
        return False
    if point is not None:
        w.place = point
    if own is not None:
        w.speed_at = (ts, own)
    return True


def _level_quiet(w: _Work, signal: str, key: str, thresholds: tuple[float, float, float]) -> bool:
    """Whether :func:`_level` would do nothing (``key``: its alert's)."""
    value = number_of(w.known, signal)
    if value is None:
        return True
    alert = w.alerts.get(key)
    if alert is None:
        return value >= thresholds[0]
    return not (value > thresholds[1]) and not (
        value < thresholds[2] and alert.severity is not Severity.CRITICAL
    )


def _idling_quiet(w: _Work, ts: int, on: bool | None, speed: float | None) -> bool:
    """Whether :func:`_idling` would do nothing."""
    if on is not True:
        idle = False
    elif speed is not None:
        idle = not abs(speed) > w.s.still_kmh
    else:
        idle = w.known.get(IS_MOVING) is False
    if not idle:
        return "idling" not in w.since and "idling" not in w.alerts
    since = w.since.get("idling")
    return since is not None and ("idling" in w.alerts or ts - since < w.s.idle_after_ms)


def _harsh_quiet(w: _Work, ts: int, speed: float) -> bool:
    """Whether :func:`_harsh` would change nothing but the last speed."""
    prev = w.speed_at
    lo, hi = w.s.harsh_interval_ms
    if prev is None or not lo <= ts - prev[0] <= hi:
        braking = accelerating = False
    else:
        accel = (abs(speed) - abs(prev[1])) / 3.6 / ((ts - prev[0]) / 1000)
        braking = -accel >= w.s.harsh_braking_mps2
        accelerating = accel >= w.s.harsh_acceleration_mps2
    return braking == ("harsh_braking" in w.alerts) and accelerating == (
        "harsh_acceleration" in w.alerts
    )


def _overspeed_quiet(w: _Work, ts: int, speed: float | None) -> bool:
    """Whether :func:`_overspeed` would do nothing (the fences unchanged)."""
    limit = _speed_limit(w)
    alert = w.alerts.get("overspeed")
    if alert is not None:
        if speed is None or limit is None or speed <= limit[0] - w.s.overspeed_clear_kmh:
            return False
        return speed < float(alert.detail["peak_kmh"]) + w.s.overspeed_update_kmh
    if speed is None or limit is None or speed <= limit[0]:
        return "overspeed" not in w.since
    since = w.since.get("overspeed")
    return since is not None and ts - since < w.s.overspeed_min_ms


def _quiet_fix(
    w: _Work, values: Mapping[str, SignalValue], ts: int
) -> Point | Literal[False] | None:
    """The sample's fix if it changes no fence state (None: no fix the fences would
    take), False if it may: outside the vehicle's :class:`Envelope` (one is made at the
    fix when the one kept is not for the current fence states and settings, or the fix
    is outside it)."""
    if LATITUDE not in values and LONGITUDE not in values:
        return None
    point = position_of(values, w.place)
    accuracy = number_of(values, HORIZONTAL_ACCURACY)
    if point is None or (accuracy is not None and accuracy > w.s.max_fix_accuracy_m):
        return None
    env = w.quiet
    if (
        env is not None
        and env.settings is w.s
        and env.fences is w.fences
        and ts < env.until
        and w.index.cell_of(point) == env.cell
    ):
        dx, dy = (point.lon - env.lon) * env.kx, (point.lat - env.lat) * M_PER_DEG
        if dx * dx + dy * dy < env.r2:
            return point
    env = w.quiet = _envelope(w, point)
    return False if env is None or ts >= env.until else point


def _envelope(w: _Work, point: Point) -> Envelope | None:
    """The :class:`Envelope` of the current fence states around ``point`` (None: the
    states are not the index's in its order, or ``point`` itself would change one): the
    least room any fence the index names near ``point`` (or that the vehicle is inside of
    or pending for) leaves before :func:`update_fence` would answer otherwise, measured
    at ``point``; and the first time a pending state would be confirmed."""
    w.derive()
    if not w.in_order:
        return None
    fences, index = w.fences, w.index
    margin, dwell = w.s.geofence_margin_m, w.s.geofence_min_dwell_ms
    room, until = _ENVELOPE_CUTOFF_M, _FOREVER
    for fence_id in {f.id for f in index.near(point)}.union(w.astray):
        shape, state = index.by_id[fence_id].shape, fences[fence_id]
        d = shape.signed_distance_m(point, cutoff_m=_ENVELOPE_CUTOFF_M)
        inward = min(margin, shape.max_depth_m / 2)
        if state.pending_since_ms is None:  # not beyond the margin: stays so
            room = min(room, margin - d if state.inside else d + inward)
        else:  # beyond the margin: stays so, until the dwell confirms it
            room = min(room, d - margin if state.inside else -inward - d)
            until = min(until, state.pending_since_ms + dwell)
    radius = room * _ENVELOPE_SHARE - _ENVELOPE_SLACK_M
    if radius <= 0:
        return None
    return Envelope(
        w.s,
        fences,
        index.cell_of(point),
        point.lon,
        point.lat,
        M_PER_DEG * math.cos(math.radians(point.lat)),
        radius * radius,
        until,
        _speed_limit(w),
    )


def _event(w: _Work, e: VehicleEvent) -> None:
    """Fault codes open and close by code; ignition events count as the 12 V state (unless
    older than the newest sample, which then knows better). An event is a sign of life."""
    _heard(w, e.heard_ms)
    key = f"fault:{e.code}"
    if e.type is EventType.DTC_SET:
        w.open(AlertKind.FAULT_CODE, key, e.ts_ms, Severity.WARNING, code=str(e.code))
    elif e.type is EventType.DTC_CLEARED:
        w.close(key, e.ts_ms)
    elif w.last_ts is None or e.ts_ms >= w.last_ts:
        w.known[IGNITION] = "ON" if e.type is EventType.IGNITION_ON else "OFF"
        _ignition(w, e.ts_ms)
        _idling(w, e.ts_ms)


def _tick(w: _Work, now: int) -> None:
    """Time passed: a vehicle not heard from for ``offline_after_ms`` is offline (from when it
    was last heard), and seq gaps older than their grace are raised."""
    if w.heard is not None and now - w.heard >= w.s.offline_after_ms:
        w.open(AlertKind.OFFLINE, "offline", w.heard, Severity.WARNING, last_heard_ms=w.heard)
    _raise_old_gaps(w, now)


def _heard(w: _Work, heard: int) -> None:
    if "offline" in w.alerts:
        w.close("offline", heard)
    w.heard = heard if w.heard is None else max(w.heard, heard)
    if w.gaps:
        _raise_old_gaps(w, w.heard)


_UNSET: Any = object()


def _ignition(w: _Work, ts: int, on: bool | None = _UNSET) -> None:
    """One info alert per ignition cycle: opened at ignition on, closed at ignition off
    (``on``: :func:`ignition_of` the known values, if the caller has it)."""
    if on is _UNSET:
        on = ignition_of(w.known)
    if on:
        w.open(AlertKind.IGNITION, "ignition", ts, Severity.INFO)
    elif on is False:
        w.close("ignition", ts)


#: outside a fence, nothing pending
_OUTSIDE = FenceState(inside=False)


def _geofences(w: _Work, s: Sample) -> None:
    point = position_of(s.values, w.place)
    accuracy = number_of(s.values, HORIZONTAL_ACCURACY)
    if point is None or (accuracy is not None and accuracy > w.s.max_fix_accuracy_m):
        return
    w.place = point
    # the index names the fences the fix may be near; the others are surely outside, so
    # only those with a state other than "outside" need a look too (decision 0024)
    index = w.index
    near = index.near(point)
    w.derive()
    astray = w.astray
    if astray:
        ids = {f.id for f in near}.union(astray)
        near = [f for f in w.s.geofences if f.id in ids]
    if w.in_order:
        _near_fences(w, near, point, s.ts_ms)
        return
    fences: dict[str, FenceState] = dict(index.outside)
    for fence in near:
        before = w.fences.get(fence.id)
        if (before is None or before == _OUTSIDE) and surely_outside(fence.shape.bbox, point):
            fences[fence.id] = _OUTSIDE  # what update_fence would answer, without measuring
            continue
        fences[fence.id], crossed = update_fence(
            w.fences.get(fence.id),
            fence.shape,
            point,
            s.ts_ms,
            margin_m=w.s.geofence_margin_m,
            min_dwell_ms=w.s.geofence_min_dwell_ms,
        )
        if crossed is not None:
            _crossed(w, fence, crossed)
    if fences != w.fences:  # else the state keeps its mapping: most fixes change no fence
        w.fences = fences


def _near_fences(w: _Work, near: list[Geofence], point: Point, ts: int) -> None:
    """:func:`_geofences` when the state holds every fence of the index, in its order (all
    but a vehicle's first fix, or the first after the fences changed): the states of the
    fences ``near`` the fix measured, every other fence kept (it is outside, nothing
    pending: not astray), so the same states as building all of them again, without
    copying and comparing the whole mapping per fix (decision 0040)."""
    before_all = w.fences
    after: dict[str, FenceState] | None = None
    for fence in near:
        before = before_all[fence.id]
        outside = not before.inside and before.pending_since_ms is None
        if outside and surely_outside(fence.shape.bbox, point):
            continue  # what update_fence would answer, without measuring
        state, crossed = update_fence(
            before,
            fence.shape,
            point,
            ts,
            margin_m=w.s.geofence_margin_m,
            min_dwell_ms=w.s.geofence_min_dwell_ms,
        )
        if crossed is not None:
            _crossed(w, fence, crossed)
        if state is not before and state != before:
            if after is None:
                after = dict(before_all)
            after[fence.id] = state
    if after is not None:
        w.fences = after


def _crossed(w: _Work, fence: Geofence, t: FenceTransition) -> None:
    detail: dict[str, str | int | float] = {"geofence": fence.id, "name": fence.name}
    out_key = f"out_of_hours:{fence.id}"
    if t.kind == "enter":
        w.close(out_key, t.ts_ms)
        if fence.alert_enter:
            w.instant(AlertKind.GEOFENCE_ENTER, f"geofence_enter:{fence.id}", t.ts_ms, **detail)
    elif fence.window is not None and not fence.window.contains(t.ts_ms):
        w.open(AlertKind.GEOFENCE_EXIT_OUT_OF_HOURS, out_key, t.ts_ms, Severity.CRITICAL, **detail)
    elif fence.alert_exit:
        w.instant(AlertKind.GEOFENCE_EXIT, f"geofence_exit:{fence.id}", t.ts_ms, **detail)


def _speed_limit(w: _Work) -> tuple[float, str] | None:
    """The lowest limit that applies: global, fleet, or a fence the vehicle is inside
    (looked up once per mapping of fence states, :class:`_Work`)."""
    if w.fences is w.limit_of:
        return w.limit
    limits = [(w.s.speed_limit_kmh, "global"), (w.s.fleet_speed_limit_kmh, "fleet")]
    by_id = w.index.by_id
    for fence_id, state in w.fences.items():
        fence = by_id.get(fence_id) if state.inside else None
        if fence is not None:
            limits.append((fence.speed_limit_kmh, f"geofence:{fence.id}"))
    known = [(v, src) for v, src in limits if v is not None]
    w.limit_of, w.limit = w.fences, min(known) if known else None
    return w.limit


def _overspeed(w: _Work, ts: int, speed: float | None = _UNSET) -> None:
    """Above the limit for ``overspeed_min_ms`` opens; at or below limit minus
    ``overspeed_clear_kmh`` closes; a peak ``overspeed_update_kmh`` higher updates
    (``speed``: :func:`speed_of` the known values, if the caller has it)."""
    if speed is _UNSET:
        speed = speed_of(w.known)
    limit = _speed_limit(w)
    key = "overspeed"
    if key in w.alerts:
        alert = w.alerts[key]
        if speed is None or limit is None or speed <= limit[0] - w.s.overspeed_clear_kmh:
            w.close(key, ts)
        elif speed >= float(alert.detail["peak_kmh"]) + w.s.overspeed_update_kmh:
            w.update(key, peak_kmh=speed)
        return
    if speed is None or limit is None or speed <= limit[0]:
        if key in w.since:
            w.own_since().pop(key)
        return
    since = w.since.get(key)
    if since is None:
        since = w.own_since()[key] = ts
    if ts - since >= w.s.overspeed_min_ms:
        w.own_since().pop(key)
        w.open(
            AlertKind.OVERSPEED,
            key,
            since,
            Severity.WARNING,
            limit_kmh=limit[0],
            source=limit[1],
            peak_kmh=speed,
        )


def _harsh(w: _Work, ts: int, speed: float | None) -> None:
    """Acceleration from two speed reports ``harsh_interval_ms`` apart (closer is noise,
    further is not one manoeuvre). An alert lasts while consecutive reports stay harsh."""
    if speed is None:
        return
    prev, w.speed_at = w.speed_at, (ts, speed)
    lo, hi = w.s.harsh_interval_ms
    accel = None
    if prev is not None and lo <= ts - prev[0] <= hi:
        accel = (abs(speed) - abs(prev[1])) / 3.6 / ((ts - prev[0]) / 1000)
    for kind, hit in (
        (AlertKind.HARSH_BRAKING, accel is not None and -accel >= w.s.harsh_braking_mps2),
        (AlertKind.HARSH_ACCELERATION, accel is not None and accel >= w.s.harsh_acceleration_mps2),
    ):
        if hit and prev is not None and accel is not None:
            w.open(kind, kind.value, prev[0], Severity.WARNING, mps2=round(abs(accel), 2))
        elif kind.value in w.alerts:
            w.close(kind.value, prev[0] if prev is not None else ts)


def _idling(w: _Work, ts: int, on: bool | None = _UNSET, speed: float | None = _UNSET) -> None:
    """Ignition on and standing still for ``idle_after_ms`` opens; moving or off closes
    (``on``, ``speed``: :func:`ignition_of` and :func:`speed_of` the known values, if the
    caller has them)."""
    if on is _UNSET:
        on = ignition_of(w.known)
    if on is not True:
        idle = False
    elif speed is _UNSET:
        idle = moving_of(w.known, w.s.still_kmh) is False
    elif speed is not None:  # moving_of: the speed decides when it is known
        idle = not abs(speed) > w.s.still_kmh
    else:
        idle = w.known.get(IS_MOVING) is False
    key = "idling"
    if not idle:
        if key in w.since:
            w.own_since().pop(key)
        if key in w.alerts:
            w.close(key, ts)
        return
    since = w.since.get(key)
    if since is None:
        since = w.own_since()[key] = ts
    if ts - since >= w.s.idle_after_ms:
        w.open(AlertKind.IDLING, key, since, Severity.WARNING)


def _level(
    w: _Work, ts: int, signal: str, kind: AlertKind, thresholds: tuple[float, float, float]
) -> None:
    """Below ``open`` opens, above ``clear`` closes, below ``critical`` escalates once."""
    value = number_of(w.known, signal)
    if value is None:
        return
    open_below, clear_above, critical_below = thresholds
    key = kind.value
    alert = w.alerts.get(key)
    if alert is None:
        if value < open_below:
            severity = Severity.CRITICAL if value < critical_below else Severity.WARNING
            w.open(kind, key, ts, severity, pct=value)
    elif value > clear_above:
        w.close(key, ts)
    elif value < critical_below and alert.severity is not Severity.CRITICAL:
        w.update(key, Severity.CRITICAL, pct=value)


def _seq(w: _Work, seq: int | None, heard: int) -> None:
    """Track missing seqs: a jump opens a gap, a late sample fills it; a gap still open after
    ``seq_gap_grace_ms`` raises an alert (a store-and-forward upload right behind live data
    fills it first), which closes when the gap is filled. Beyond ``max_seq_gaps`` the oldest
    gap is given up (its alert closed) so the state stays bounded."""
    if seq is None:
        return
    if w.last_seq is None or seq == w.last_seq + 1:
        w.last_seq = seq
    elif seq > w.last_seq:
        gaps = w.own_gaps()
        gaps.append(SeqGap(f"seq_gap:{w.last_seq + 1}", w.last_seq + 1, seq - 1, heard))
        w.last_seq = seq
        if len(gaps) > w.s.max_seq_gaps:
            w.close(gaps.pop(0).key, heard)
    else:
        _fill(w, seq, heard)


def _fill(w: _Work, seq: int, heard: int) -> None:
    for i, gap in enumerate(w.gaps):
        if gap.lo <= seq <= gap.hi:
            halves = ((gap.lo, seq - 1), (seq + 1, gap.hi))
            parts = [replace(gap, lo=lo, hi=hi) for lo, hi in halves if lo <= hi]
            w.own_gaps()[i : i + 1] = parts
            if not any(g.key == gap.key for g in w.gaps):
                w.close(gap.key, heard)
            return


def _raise_old_gaps(w: _Work, now: int) -> None:
    for i, gap in enumerate(w.gaps):
        if not gap.alerted and now - gap.detected_ms >= w.s.seq_gap_grace_ms:
            missing = sum(g.hi - g.lo + 1 for g in w.gaps if g.key == gap.key)
            w.open(
                AlertKind.SEQ_GAP,
                gap.key,
                gap.detected_ms,
                Severity.WARNING,
                first=gap.lo,
                last=gap.hi,
                missing=missing,
            )
            w.own_gaps()[i] = replace(gap, alerted=True)
