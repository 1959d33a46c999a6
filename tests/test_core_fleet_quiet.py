"""The rules' quiet path (decision 0044): a sample that can change no rule's state takes a
few comparisons instead of every rule. Property test: with the quiet path and without it,
random drives give the same alert changes and states, pass by pass."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.fleet.geo import Circle, Point, Polygon
from gateway.core.fleet.geofence import Geofence
from gateway.core.fleet.rules import AlertKind, Item, RuleSettings, RuleState, evaluate_many
from gateway.core.fleet.signals import (
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
)
from schemas.payloads import EventType, SignalValue

ORIGIN = Point(11.5755, 48.1374)
M_PER_DEG = math.pi / 180 * 6_371_008.8
T0 = 1_800_000_000_000


def offset(p: Point, north_m: float, east_m: float) -> Point:
    k = M_PER_DEG * math.cos(math.radians(p.lat))
    return Point(p.lon + east_m / k, p.lat + north_m / M_PER_DEG)


def square(c: Point, half_m: float) -> Polygon:
    ring = [offset(c, sy * half_m, sx * half_m) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    return Polygon((*ring, ring[0]))


fence_st = st.tuples(
    st.floats(-600, 600), st.floats(-600, 600), st.floats(20, 400), st.sampled_from([None, 40.0])
)
#: one step of a drive: a move (north, east metres), the time after the last item, and
#: what the sample says (changes of the speed and of the levels, mostly gentle, so that
#: alerts stay open and limits are approached; ignition, motion, a fix's accuracy, a seq
#: jump or repeat), or an event, or a clock tick
sample_st = st.tuples(
    st.just("sample"),
    st.floats(-40, 40),
    st.floats(-40, 40),
    st.sampled_from([0, 300, 1_000, 5_000, 5_000, 5_000, 5_000, 30_000, 400_000, -3_000]),
    st.sampled_from([None, -30.0, -12.0, -4.0, 0.0, 0.0, 0.0, 4.0, 12.0, 30.0]),
    st.sampled_from([None, -3.0, -1.0, 0.0, 0.0, 1.0, 3.0]),
    st.sampled_from([None, "ON", "OFF"]),
    st.sampled_from([None, True, False]),
    st.sampled_from([None, 5.0, 250.0]),
    st.sampled_from([1, 1, 1, 1, 3, 0, -1]),
    st.booleans(),  # with a fix
)
step_st = st.one_of(
    sample_st,
    sample_st,
    sample_st,
    sample_st,
    st.tuples(
        st.just("event"),
        st.sampled_from(list(EventType)),
        st.sampled_from(["P0420", "P0300"]),
        st.integers(0, 5_000),
    ),
    st.tuples(st.just("tick"), st.integers(0, 2_000_000)),
)


def _items(steps: list[tuple[object, ...]]) -> list[Item]:
    items: list[Item] = []
    p, t, seq, v, level = ORIGIN, T0, 0, 80.0, 18.0
    for step in steps:
        if step[0] == "event":
            _, kind, code, dt_ms = step
            assert isinstance(kind, EventType)
            assert isinstance(code, str)
            assert isinstance(dt_ms, int)
            t += dt_ms
            items.append(VehicleEvent(t, kind, code, t))
        elif step[0] == "tick":
            assert isinstance(step[1], int)
            items.append(Tick(t + step[1]))
        else:
            _, dn, de, dt_ms, dv, dlevel, ign, moving, acc, dseq, fix = step
            p = offset(p, float(dn), float(de))  # type: ignore[arg-type]
            t += int(dt_ms)  # type: ignore[call-overload]
            seq += int(dseq)  # type: ignore[call-overload]
            speed = None if dv is None else v
            v = min(140.0, max(0.0, v + float(dv or 0.0)))  # type: ignore[arg-type]
            lvl = None if dlevel is None else level
            level = min(30.0, max(0.0, level + float(dlevel or 0.0)))  # type: ignore[arg-type]
            values: dict[str, SignalValue] = {}
            if fix:
                values[LATITUDE], values[LONGITUDE] = p.lat, p.lon
            for name, value in (
                (SPEED, speed),
                (SOC, lvl),
                (FUEL_LEVEL, None if lvl is None else lvl - 5.0),
                (IGNITION, ign),
                (IS_MOVING, moving),
                (HORIZONTAL_ACCURACY, acc),
            ):
                if value is not None:
                    values[name] = value  # type: ignore[assignment]
            items.append(Sample(t, values, seq, t))
    return items


@settings(max_examples=200, deadline=None)
@given(
    st.lists(fence_st, max_size=4),
    st.lists(step_st, min_size=30, max_size=150),
    st.lists(st.integers(1, 8), max_size=30),
    st.floats(0, 60),
    st.sampled_from([0, 3_000, 10_000]),
    st.sampled_from([None, 90.0]),
    st.sampled_from([0, 2_000, 10_000]),
    st.integers(0, 120),
    st.booleans(),
)
def test_the_quiet_path_gives_what_every_rule_gives(
    shapes: list[tuple[float, float, float, float | None]],
    steps: list[tuple[object, ...]],
    chunks: list[int],
    margin_m: float,
    dwell_ms: int,
    limit: float | None,
    overspeed_ms: int,
    change_at: int,
    some_disabled: bool,
) -> None:
    """Alerts (every change, in order) and states equal with and without the quiet path,
    the states carried from pass to pass (the envelope with them), the settings changed in
    the middle (fences moved, another margin): every rule, fences inside, pending, crossed
    and left, idling, harsh manoeuvres, levels, seq gaps, late samples, events and ticks."""
    fences = tuple(
        Geofence(
            str(i),
            Circle(offset(ORIGIN, n, e), r) if i % 2 else square(offset(ORIGIN, n, e), r),
            speed_limit_kmh=lim,
        )
        for i, (n, e, r, lim) in enumerate(shapes)
    )
    enabled = frozenset(AlertKind) - (
        {AlertKind.IGNITION, AlertKind.IDLING} if some_disabled else set()
    )
    first = RuleSettings(
        speed_limit_kmh=limit,
        overspeed_min_ms=overspeed_ms,
        geofences=fences,
        geofence_margin_m=margin_m,
        geofence_min_dwell_ms=dwell_ms,
        idle_after_ms=20_000,
        enabled=enabled,
    )
    moved = tuple(Geofence(f.id + "m", Circle(offset(ORIGIN, 100, 0), 250.0)) for f in fences[:2])
    later = RuleSettings(
        speed_limit_kmh=limit,
        geofences=(*fences[1:], *moved),
        geofence_margin_m=margin_m / 2,
        geofence_min_dwell_ms=dwell_ms,
    )
    items = _items(steps)
    quick, full = RuleState(), RuleState()
    sizes, i = iter(chunks), 0
    while i < len(items):
        cfg = first if i < change_at else later
        part = items[i : i + next(sizes, 1)]
        quick, quick_changes = evaluate_many(quick, part, cfg)
        full, full_changes = evaluate_many(full, part, cfg, quiet=False)
        assert quick_changes == full_changes
        assert quick == full
        i += len(part)


def test_most_samples_of_a_steady_drive_take_the_quiet_path() -> None:
    """A drive far from the fences at a steady speed under the limit keeps one envelope:
    the fences are measured when it is made, not at every fix."""
    fence = Geofence("f", Circle(offset(ORIGIN, 3_000, 0), 300.0), speed_limit_kmh=30.0)
    cfg = RuleSettings(speed_limit_kmh=90.0, geofences=(fence,))
    state = RuleState()
    made = []
    for n in range(30):
        p = offset(ORIGIN, 10.0 * n, 0)
        values: dict[str, SignalValue] = {
            LATITUDE: p.lat,
            LONGITUDE: p.lon,
            SPEED: 50.0,
            IGNITION: "ON",
            SOC: 80.0,
        }
        state, _ = evaluate_many(state, [Sample(T0 + n * 1_000, values, n)], cfg)
        made.append(state.quiet)
    assert state.quiet is not None
    assert len({id(e) for e in made if e is not None}) <= 3


@settings(max_examples=300, deadline=None)
@given(
    st.lists(fence_st, min_size=1, max_size=4),
    st.lists(
        st.tuples(st.floats(-30, 30), st.floats(-30, 30), st.sampled_from([1_000, 3_000, 5_000])),
        min_size=10,
        max_size=80,
    ),
    st.lists(st.integers(1, 6), max_size=20),
    st.floats(0, 40),
    st.sampled_from([0, 3_000, 10_000]),
)
def test_the_envelope_keeps_every_fence_state_and_crossing(
    shapes: list[tuple[float, float, float, float | None]],
    moves: list[tuple[float, float, int]],
    chunks: list[int],
    margin_m: float,
    dwell_ms: int,
) -> None:
    """Fixes only, in small steps around the fences (inside, pending, crossing, near the
    margins): the quiet path's fence states, crossings and speed limits are every rule's."""
    fences = tuple(
        Geofence(
            str(i),
            Circle(offset(ORIGIN, n / 4, e / 4), r)
            if i % 2
            else square(offset(ORIGIN, n / 4, e / 4), r),
            speed_limit_kmh=lim,
        )
        for i, (n, e, r, lim) in enumerate(shapes)
    )
    cfg = RuleSettings(
        speed_limit_kmh=90.0,
        geofences=fences,
        geofence_margin_m=margin_m,
        geofence_min_dwell_ms=dwell_ms,
    )
    items: list[Item] = []
    p, t = ORIGIN, T0
    for n, (dn, de, dt_ms) in enumerate(moves):
        p, t = offset(p, dn, de), t + dt_ms
        items.append(Sample(t, {LATITUDE: p.lat, LONGITUDE: p.lon, SPEED: 50.0}, n, t))
    quick, full = RuleState(), RuleState()
    sizes, i = iter(chunks), 0
    while i < len(items):
        part = items[i : i + next(sizes, 1)]
        quick, quick_changes = evaluate_many(quick, part, cfg)
        full, full_changes = evaluate_many(full, part, cfg, quiet=False)
        assert quick_changes == full_changes
        assert quick == full
        i += len(part)
