"""The JSON form of the fleet core's per-vehicle state (``gateway.core.fleet.state``): any
state reached by driving survives a JSON round trip unchanged, so the rules worker continues
after a restart exactly where it stopped; stored settings override the defaults."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.fleet.geo import Circle, Point
from gateway.core.fleet.geofence import Geofence
from gateway.core.fleet.rules import (
    AlertChange,
    AlertKind,
    RuleSettings,
    RuleState,
    evaluate,
    evaluate_many,
)
from gateway.core.fleet.signals import (
    IGNITION,
    LATITUDE,
    LONGITUDE,
    ODOMETER,
    SOC,
    SPEED,
    Sample,
    Tick,
)
from gateway.core.fleet.state import (
    rule_settings_from_json,
    rule_state_from_json,
    rule_state_to_json,
    trip_settings_from_json,
    trip_state_from_json,
    trip_state_to_json,
    window_from_json,
    window_to_json,
)
from gateway.core.fleet.trips import TripSettings, TripState, feed

FENCE = Geofence("1", Circle(Point(11.5755, 48.1374), 300.0), "depot", speed_limit_kmh=30)

step = st.tuples(
    st.integers(500, 90_000),
    st.floats(0, 140),
    st.floats(-0.01, 0.01),
    st.sampled_from(["ON", "OFF", None]),
    st.floats(0, 100),
    st.integers(1, 3),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=40))
def test_states_survive_a_json_round_trip(
    steps: list[tuple[int, float, float, str | None, float, int]],
) -> None:
    rules = RuleSettings(geofences=(FENCE,), speed_limit_kmh=50, seq_gap_grace_ms=1000)
    cfg = TripSettings()
    rs, ts, t, seq, odo = RuleState(), TripState(), 1_700_000_000_000, 0, 0.0
    written = rule_state_to_json(rs)
    for dt_ms, speed, dlat, ign, soc, dseq in steps:
        t, seq, odo = t + dt_ms, seq + dseq, odo + speed * dt_ms / 3600
        values: dict[str, object] = {
            SPEED: speed,
            LATITUDE: 48.1374 + dlat,
            LONGITUDE: 11.5755,
            SOC: soc,
            ODOMETER: odo,
        }
        if ign is not None:
            values[IGNITION] = ign
        sample = Sample(t, values, seq, t + 100)  # type: ignore[arg-type]
        before = rs
        rs, _ = evaluate(rs, sample, rules)
        rs, _ = evaluate(rs, Tick(t + 50_000), rules)
        ts, _, _ = feed(ts, sample, cfg)
        assert rule_state_from_json(json.loads(json.dumps(rule_state_to_json(rs)))) == rs
        # the worker's write reuses the parts a state shares with the one written before
        written = rule_state_to_json(rs, (before, written))
        assert written == rule_state_to_json(rs)
        assert trip_state_from_json(json.loads(json.dumps(trip_state_to_json(ts)))) == ts


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=40), st.integers(1, 6))
def test_evaluating_items_together_is_evaluating_them_one_by_one(
    steps: list[tuple[int, float, float, str | None, float, int]], batch: int
) -> None:
    """The worker evaluates a vehicle's new items of a pass in one working copy
    (``evaluate_many``, decision 0024): the same state and changes as one at a time,
    whatever the batches (late samples and ticks included)."""
    rules = RuleSettings(geofences=(FENCE,), speed_limit_kmh=50, seq_gap_grace_ms=1000)
    items: list[Sample | Tick] = []
    t, seq = 1_700_000_000_000, 0
    for dt_ms, speed, dlat, ign, soc, dseq in steps:
        t, seq = t + dt_ms, seq + dseq
        values: dict[str, object] = {SPEED: speed, LATITUDE: 48.1374 + dlat, LONGITUDE: 11.5755}
        values[SOC] = soc
        if ign is not None:
            values[IGNITION] = ign
        late = dseq == 3  # now and then one from the past
        items.append(Sample(t - 200_000 if late else t, values, seq, t + 100))  # type: ignore[arg-type]
        if dseq == 2:
            items.append(Tick(t + 50_000))
    one, changes_one = RuleState(), list[AlertChange]()
    for item in items:
        one, changes = evaluate(one, item, rules)
        changes_one.extend(changes)
    many, changes_many = RuleState(), list[AlertChange]()
    for i in range(0, len(items), batch):
        many, changes = evaluate_many(many, items[i : i + batch], rules)
        changes_many.extend(changes)
    assert many == one
    assert changes_many == changes_one


def test_empty_json_is_the_initial_state() -> None:
    assert rule_state_from_json({}) == RuleState()
    assert trip_state_from_json({}) == TripState()


def test_settings_override_the_defaults_and_unknown_names_are_refused() -> None:
    s = rule_settings_from_json(
        {"idle_after_ms": 1000, "low_soc_pct": [30, 35, 10], "enabled": ["overspeed"]},
        fleet_speed_limit_kmh=80.0,
    )
    assert s.idle_after_ms == 1000
    assert s.low_soc_pct == (30, 35, 10)
    assert s.enabled == frozenset({AlertKind.OVERSPEED})
    assert s.fleet_speed_limit_kmh == 80.0
    assert trip_settings_from_json({"parking_ms": 5}).parking_ms == 5
    with pytest.raises(ValueError, match="idle_after"):
        rule_settings_from_json({"idle_after": 1})
    with pytest.raises(ValueError, match="geofences"):
        rule_settings_from_json({"geofences": []})


def test_active_window_round_trip() -> None:
    d = {"start": "22:00", "end": "06:00", "tz": "Europe/Berlin", "weekdays": [0, 1, 2]}
    w = window_from_json(d)
    assert w is not None
    assert window_to_json(w) == d
    assert window_from_json(None) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"idle_after_ms": "5"},
        {"idle_after_ms": 1.5},
        {"speed_limit_kmh": -1},
        {"low_soc_pct": [1, 2]},
        {"enabled": ["nope"]},
        {"harsh_braking_mps2": True},
    ],
)
def test_settings_of_the_wrong_type_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        rule_settings_from_json(bad)
