"""JSON form of the rules' and the trip detector's per-vehicle state, and of rule settings.

The rules worker stores each vehicle's :class:`~.rules.RuleState` and
:class:`~.trips.TripState` in the state database with the effects they produced, in one
transaction (decision 0014), so a restart continues exactly where it stopped. Pure
functions: ``*_to_json`` gives plain dicts and lists (what a JSON column takes),
``*_from_json`` reads them back; ``from_json(to_json(x)) == x`` (tested).

Also here: :func:`rule_settings_from_json` and :func:`trip_settings_from_json`, an
organization's stored thresholds over the defaults (unknown names are refused, so a typo
does not silently keep a default), and :func:`window_from_json` for a fence's active window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from .geo import Point
from .geofence import ActiveWindow, FenceState
from .rules import Alert, AlertKind, RuleSettings, RuleState, SeqGap, Severity
from .trips import TripSettings, TripState, _Acc

__all__ = [
    "RULE_SETTING_NAMES",
    "SETTING_BOUNDS",
    "TRIP_SETTING_NAMES",
    "rule_settings_from_json",
    "rule_state_from_json",
    "rule_state_to_json",
    "settings_to_json",
    "trip_settings_from_json",
    "trip_state_from_json",
    "trip_state_to_json",
    "window_from_json",
    "window_to_json",
]

JSON = dict[str, Any]


def _point(p: Point | None) -> list[float] | None:
    return None if p is None else [p.lon, p.lat]


def _to_point(v: Any) -> Point | None:
    return None if v is None else Point(float(v[0]), float(v[1]))


def _pair(v: Any) -> tuple[Any, Any] | None:
    return None if v is None else (v[0], v[1])


def _alert_to_json(a: Alert) -> JSON:
    return {
        "kind": a.kind.value,
        "key": a.key,
        "severity": a.severity.value,
        "start_ms": a.start_ms,
        "end_ms": a.end_ms,
        "detail": dict(a.detail),
    }


def _alert_from_json(d: JSON) -> Alert:
    return Alert(
        AlertKind(d["kind"]),
        d["key"],
        Severity(d["severity"]),
        d["start_ms"],
        d["end_ms"],
        dict(d["detail"]),
    )


def rule_state_to_json(s: RuleState, previous: tuple[RuleState, JSON] | None = None) -> JSON:
    """``s`` as JSON; with ``previous`` (an earlier state and its JSON), the parts whose
    mapping ``s`` shares with it are taken from its JSON instead of built again (the
    worker writes every vehicle's state after each pass; most fixes change no fence)."""
    if previous is not None:
        before, done = previous
        fences = done["fences"] if s.fences is before.fences else _fences_to_json(s)
        alerts = done["alerts"] if s.alerts is before.alerts else _alerts_to_json(s)
    else:
        fences, alerts = _fences_to_json(s), _alerts_to_json(s)
    return {
        "last_ts_ms": s.last_ts_ms,
        "heard_ms": s.heard_ms,
        "last_seq": s.last_seq,
        "known": dict(s.known),
        "speed_at": None if s.speed_at is None else list(s.speed_at),
        "place": _point(s.place),
        "since": dict(s.since),
        "fences": fences,
        "alerts": alerts,
        "gaps": [[g.key, g.lo, g.hi, g.detected_ms, g.alerted] for g in s.gaps],
    }


def _fences_to_json(s: RuleState) -> JSON:
    return {k: [f.inside, f.pending_since_ms] for k, f in s.fences.items()}


def _alerts_to_json(s: RuleState) -> JSON:
    return {k: _alert_to_json(a) for k, a in s.alerts.items()}


def rule_state_from_json(d: Mapping[str, Any]) -> RuleState:
    if not d:
        return RuleState()
    return RuleState(
        last_ts_ms=d["last_ts_ms"],
        heard_ms=d["heard_ms"],
        last_seq=d["last_seq"],
        known=dict(d["known"]),
        speed_at=_pair(d["speed_at"]),
        place=_to_point(d["place"]),
        since=dict(d["since"]),
        fences={k: FenceState(v[0], v[1]) for k, v in d["fences"].items()},
        alerts={k: _alert_from_json(a) for k, a in d["alerts"].items()},
        gaps=tuple(SeqGap(*g) for g in d["gaps"]),
    )


def _acc_to_json(a: _Acc | None) -> JSON | None:
    if a is None:
        return None
    return {
        "start_ms": a.start_ms,
        "last_ms": a.last_ms,
        "start_place": _point(a.start_place),
        "last_place": _point(a.last_place),
        "path_m": a.path_m,
        "odometer": None if a.odometer is None else list(a.odometer),
        "max_speed": a.max_speed,
        "soc": None if a.soc is None else list(a.soc),
        "fuel": None if a.fuel is None else list(a.fuel),
        "prior": list(a.prior),
    }


def _acc_from_json(d: Mapping[str, Any] | None) -> _Acc | None:
    if d is None:
        return None
    return _Acc(
        start_ms=d["start_ms"],
        last_ms=d["last_ms"],
        start_place=_to_point(d["start_place"]),
        last_place=_to_point(d["last_place"]),
        path_m=d["path_m"],
        odometer=_pair(d["odometer"]),
        max_speed=d["max_speed"],
        soc=_pair(d["soc"]),
        fuel=_pair(d["fuel"]),
        prior=(d["prior"][0], d["prior"][1]),
    )


def trip_state_to_json(s: TripState) -> JSON:
    return {
        "last_ts_ms": s.last_ts_ms,
        "ignition": s.ignition,
        "moving": s.moving,
        "trip": _acc_to_json(s.trip),
        "stopped": _acc_to_json(s.stopped),
    }


def trip_state_from_json(d: Mapping[str, Any]) -> TripState:
    if not d:
        return TripState()
    return TripState(
        d["last_ts_ms"],
        d["ignition"],
        d["moving"],
        _acc_from_json(d["trip"]),
        _acc_from_json(d["stopped"]),
    )


#: the rule thresholds an organization may set (geofences and the fleet limit come from
#: their own tables; ``enabled`` is a list of alert kinds)
RULE_SETTING_NAMES = frozenset(
    f.name
    for f in dataclasses.fields(RuleSettings)
    if f.name not in ("geofences", "fleet_speed_limit_kmh")
)
TRIP_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(TripSettings))


def _check_names(d: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} setting(s): {', '.join(unknown)}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
#: (lowest, highest) of each numeric setting (each element of a list setting): finite,
#: positive where zero would make every sample an alert (a harsh-braking threshold of 0,
#: a speed limit of 1e-300 km/h), and far enough above any sensible value to never be in
#: the way (a threshold of 1e308 or 10**100 is refused, not stored)
SETTING_BOUNDS: dict[str, tuple[float, float]] = {
    "speed_limit_kmh": (1.0, 400.0),
    "overspeed_min_ms": (0, _HOUR_MS),
    "overspeed_clear_kmh": (0.0, 100.0),
    "overspeed_update_kmh": (0.1, 400.0),
    "geofence_margin_m": (0.0, 10_000.0),
    "geofence_min_dwell_ms": (0, _HOUR_MS),
    "max_fix_accuracy_m": (1.0, 100_000.0),
    "harsh_braking_mps2": (0.1, 100.0),
    "harsh_acceleration_mps2": (0.1, 100.0),
    "harsh_interval_ms": (1, 60_000),
    "still_kmh": (0.0, 50.0),
    "idle_after_ms": (0, _DAY_MS),
    "low_soc_pct": (0.0, 100.0),
    "low_fuel_pct": (0.0, 100.0),
    "offline_after_ms": (0, 30 * _DAY_MS),
    "seq_gap_grace_ms": (0, _DAY_MS),
    "max_seq_gaps": (1, 1_000),
    "moving_kmh": (0.1, 100.0),
    "min_duration_ms": (0, _DAY_MS),
    "min_distance_m": (0.0, 1_000_000.0),
    "parking_ms": (0, _DAY_MS),
    "max_gap_ms": (0, 30 * _DAY_MS),
}


def _plain(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) or (x.is_integer() and abs(x) < 1e15) else f"{x:g}"


def _bounded(name: str, value: float) -> None:
    lo, hi = SETTING_BOUNDS[name]
    if not lo <= value <= hi:
        got = f"{value!r}" if isinstance(value, float) or abs(value) < 10**20 else "more"
        raise ValueError(f"{name}: from {_plain(lo)} to {_plain(hi)}, got {got}")


def _ordered(name: str, value: tuple[Any, ...]) -> None:
    """A list setting's elements must make sense together: a harsh interval's shortest
    below its longest, and a low level's critical <= open <= clear (else it would flap or
    never clear)."""
    if name == "harsh_interval_ms" and not value[0] < value[1]:
        raise ValueError(f"{name}: [shortest, longest] with shortest < longest")
    if name in ("low_soc_pct", "low_fuel_pct") and not value[2] <= value[0] <= value[1]:
        raise ValueError(f"{name}: [open, clear, critical] with critical <= open <= clear")


def _typed(name: str, value: Any, default: Any) -> Any:
    """``value`` in the type of the setting's default, within its bounds; ValueError naming
    the setting if it is not one (a stored setting must never make the rules fail later)."""
    if name == "enabled":
        if not isinstance(value, list):
            raise ValueError("enabled: a list of alert kinds")
        try:
            return frozenset(AlertKind(v) for v in value)
        except ValueError:
            raise ValueError(f"enabled: alert kinds are {', '.join(AlertKind)}") from None
    if isinstance(default, tuple):
        if not (
            isinstance(value, list) and len(value) == len(default) and all(map(_is_number, value))
        ):
            raise ValueError(f"{name}: a list of {len(default)} non-negative numbers")
        if isinstance(default[0], int) and not all(isinstance(v, int) for v in value):
            raise ValueError(f"{name}: a list of {len(default)} integers")
        for v in value:
            _bounded(name, v)
        _ordered(name, tuple(value))
        return tuple(value)
    if value is None and default is None:
        return None
    if not _is_number(value) or (isinstance(default, int) and not isinstance(value, int)):
        kind = "an integer" if isinstance(default, int) else "a finite number"
        raise ValueError(f"{name}: {kind} >= 0")
    _bounded(name, value)
    return value


def rule_settings_from_json(d: Mapping[str, Any], **extra: Any) -> RuleSettings:
    """The defaults with the stored overrides ``d`` (and ``extra``: fences, fleet limit);
    ValueError for an unknown name or a value of the wrong type."""
    _check_names(d, RULE_SETTING_NAMES, "rule")
    defaults = RuleSettings()
    values = {name: _typed(name, v, getattr(defaults, name)) for name, v in d.items()}
    return RuleSettings(**values, **extra)


def settings_to_json(settings: RuleSettings | TripSettings) -> JSON:
    """Every threshold a person may set, with its value in ``settings`` (the defaults and
    the overrides): what ``rule_settings_from_json`` and ``trip_settings_from_json`` take,
    so the answer of GET can be edited and PUT back."""
    names = RULE_SETTING_NAMES if isinstance(settings, RuleSettings) else TRIP_SETTING_NAMES
    out: JSON = {}
    for name in sorted(names):
        value = getattr(settings, name)
        if isinstance(value, frozenset):
            value = sorted(str(v) for v in value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def trip_settings_from_json(d: Mapping[str, Any]) -> TripSettings:
    _check_names(d, TRIP_SETTING_NAMES, "trip")
    defaults = TripSettings()
    return TripSettings(**{name: _typed(name, v, getattr(defaults, name)) for name, v in d.items()})


def window_from_json(d: Mapping[str, Any] | None) -> ActiveWindow | None:
    """``{"start": "HH:MM", "end": "HH:MM", "tz": "Europe/Berlin", "weekdays": [0, ...]}``."""
    if d is None:
        return None
    return ActiveWindow(
        dt.time.fromisoformat(d["start"]),
        dt.time.fromisoformat(d["end"]),
        d["tz"],
        frozenset(d.get("weekdays", range(7))),
    )


def window_to_json(w: ActiveWindow | None) -> JSON | None:
    if w is None:
        return None
    return {
        "start": w.start.strftime("%H:%M"),
        "end": w.end.strftime("%H:%M"),
        "tz": w.tz,
        "weekdays": sorted(w.weekdays),
    }
