"""Fleet rules (issue 13): each rule fires exactly once for a scripted drive and clears, no
alert is raised again per sample, and the thresholds have hysteresis (property tests)."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.fleet.geo import Circle, Point, Polygon
from gateway.core.fleet.geofence import ActiveWindow, FenceState, Geofence, update_fence
from gateway.core.fleet.rules import (
    AlertChange,
    AlertKind,
    Item,
    RuleSettings,
    RuleState,
    Severity,
    evaluate,
    evaluate_many,
)
from gateway.core.fleet.signals import (
    IGNITION,
    LATITUDE,
    LONGITUDE,
    SOC,
    SPEED,
    Sample,
    Tick,
    VehicleEvent,
)
from schemas.payloads import EventType, SignalValue

DEPOT_C = Point(11.5755, 48.1374)
M_PER_DEG = math.pi / 180 * 6_371_008.8
#: Monday 2026-12-07 09:00 in Munich
T0 = (
    int(dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))).timestamp())
    * 1000
)
MIN = 60_000


def north(m: float) -> Point:
    return Point(DEPOT_C.lon, DEPOT_C.lat + m / M_PER_DEG)


def square(center_north_m: float, half_m: float) -> Polygon:
    c = north(center_north_m)
    k = M_PER_DEG * math.cos(math.radians(c.lat))
    dx, dy = half_m / k, half_m / M_PER_DEG
    ring = [
        Point(c.lon + sx * dx, c.lat + sy * dy) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    ]
    return Polygon((*ring, ring[0]))


HOURS = ActiveWindow(dt.time(7), dt.time(19), "Europe/Berlin", frozenset(range(5)))
DEPOT = Geofence("depot", Circle(DEPOT_C, 200.0), "Depot", window=HOURS)
ZONE = Geofence("zone", square(2000, 300), "City centre", speed_limit_kmh=30)
SETTINGS = RuleSettings(speed_limit_kmh=120, geofences=(DEPOT, ZONE))


def at(p: Point) -> dict[str, SignalValue]:
    return {LATITUDE: p.lat, LONGITUDE: p.lon}


class Drive:
    """Builds one vehicle's items, one second apart unless told, with consecutive seqs."""

    def __init__(self, t0: int = T0) -> None:
        self.t = t0
        self.seq = 0
        self.items: list[Item] = []

    def sample(self, dt_s: float = 1, **values: SignalValue) -> Drive:
        return self.raw(dt_s, {k.replace("_", "."): v for k, v in values.items()})

    def raw(self, dt_s: float, values: Mapping[str, SignalValue], skip_seq: int = 0) -> Drive:
        self.t += int(dt_s * 1000)
        self.seq += 1 + skip_seq
        self.items.append(Sample(self.t, dict(values), self.seq))
        return self

    def event(self, kind: EventType, code: str | None = None) -> Drive:
        self.t += 1000
        self.items.append(VehicleEvent(self.t, kind, code))
        return self


def run(items: Iterable[Item], cfg: RuleSettings = SETTINGS) -> tuple[RuleState, list[AlertChange]]:
    state, changes = RuleState(), list[AlertChange]()
    for item in items:
        state, new = evaluate(state, item, cfg)
        changes.extend(new)
    return state, changes


def scripted_drive() -> Drive:
    d = Drive()
    d.raw(0, {IGNITION: "ON", SPEED: 0.0, SOC: 30.0, **at(DEPOT_C)})
    for _ in range(6 * 60):  # idling at the depot for 6 minutes
        d.raw(1, {SPEED: 0.0, **at(DEPOT_C)})
    d.raw(1, {SPEED: 15.0})  # 0 -> 15 km/h in 1 s: harsh acceleration
    d.raw(1, {SPEED: 18.0})
    for i in range(40):  # out of the depot
        d.raw(1, {SPEED: 18.0, **at(north(16.0 * i))})
    for i in range(40):  # into the 30 km/h zone, above 30 km/h from the 15th second
        d.raw(1, {SPEED: [25.0, 33.0, 41.0, 50.0][min(3, max(0, i - 13))], **at(north(2000 + i))})
    d.raw(1, {SPEED: 20.0, **at(north(2045))})  # 50 -> 20 in 1 s: harsh braking
    d.raw(1, {SPEED: 20.0})
    for soc in (16.0, 14.0, 17.0, 14.5, 19.5, 21.0):
        d.raw(1, {SOC: soc})
    d.event(EventType.DTC_SET, "P0301").event(EventType.DTC_SET, "P0301")
    d.event(EventType.DTC_CLEARED, "P0301")
    d.raw(10, {IGNITION: "OFF", SPEED: 0.0})
    return d


def by_kind(changes: list[AlertChange]) -> dict[AlertKind, list[str]]:
    out: dict[AlertKind, list[str]] = {}
    for c in changes:
        out.setdefault(c.alert.kind, []).append(c.action)
    return out


def test_each_rule_fires_once_for_a_scripted_drive_and_clears() -> None:
    d = scripted_drive()
    d.raw(5, {SPEED: 0.0}, skip_seq=3)  # three samples lost
    lost = range(d.seq - 3, d.seq)
    d.items.append(Tick(d.t + 20 * MIN))  # silent for 20 minutes
    d.raw(25 * 60, {SPEED: 0.0})  # back
    late = [Sample(d.t - 25 * MIN - 4000 + i, {SPEED: 0.0}, s) for i, s in enumerate(lost)]
    state, changes = run([*d.items, *late])
    assert by_kind(changes) == {
        AlertKind.IGNITION: ["opened", "closed"],
        AlertKind.IDLING: ["opened", "closed"],
        AlertKind.HARSH_ACCELERATION: ["opened", "closed"],
        AlertKind.GEOFENCE_EXIT: ["opened"],
        AlertKind.GEOFENCE_ENTER: ["opened"],
        AlertKind.OVERSPEED: ["opened", "closed"],
        AlertKind.HARSH_BRAKING: ["opened", "closed"],
        AlertKind.LOW_SOC: ["opened", "closed"],
        AlertKind.FAULT_CODE: ["opened", "closed"],
        AlertKind.SEQ_GAP: ["opened", "closed"],
        AlertKind.OFFLINE: ["opened", "closed"],
    }
    assert state.alerts == {}
    opened = {c.alert.kind: c.alert for c in changes if c.action == "opened"}
    assert opened[AlertKind.IDLING].start_ms == T0
    assert opened[AlertKind.OVERSPEED].detail["source"] == "geofence:zone"
    assert opened[AlertKind.OVERSPEED].detail["limit_kmh"] == 30
    assert opened[AlertKind.GEOFENCE_EXIT].detail["geofence"] == "depot"
    assert opened[AlertKind.GEOFENCE_ENTER].detail["geofence"] == "zone"
    assert opened[AlertKind.SEQ_GAP].detail["missing"] == 3
    assert opened[AlertKind.FAULT_CODE].detail["code"] == "P0301"
    closed = {c.alert.kind: c.alert for c in changes if c.action == "closed"}
    overspeed = closed[AlertKind.OVERSPEED]
    assert overspeed.end_ms is not None
    assert overspeed.end_ms - overspeed.start_ms == 26_000  # 50 km/h from i=14 to i=39


def test_leaving_the_depot_out_of_hours_is_critical_until_back() -> None:
    d = Drive(T0 + 13 * 60 * MIN)  # Monday 22:00
    d.raw(0, {IGNITION: "ON", SPEED: 10.0, **at(DEPOT_C)})
    for i in range(30):
        d.raw(1, {SPEED: 20.0, **at(north(20.0 * i))})
    for i in range(45):
        d.raw(1, {SPEED: 20.0, **at(north(max(0.0, 600 - 20.0 * i)))})
    _, changes = run(d.items)
    out = [c for c in changes if c.alert.kind is AlertKind.GEOFENCE_EXIT_OUT_OF_HOURS]
    assert [c.action for c in out] == ["opened", "closed"]
    assert out[0].alert.severity is Severity.CRITICAL
    assert not [c for c in changes if c.alert.kind is AlertKind.GEOFENCE_EXIT]


def test_a_gap_filled_within_the_grace_raises_nothing() -> None:
    d = Drive()
    d.raw(0, {SPEED: 0.0}).raw(1, {SPEED: 0.0}, skip_seq=2)
    d.items += [Sample(d.t - 500, {}, 2), Sample(d.t - 400, {}, 3)]
    d.items.append(Tick(d.t + 10 * MIN))
    state, changes = run(d.items)
    assert not [c for c in changes if c.alert.kind is AlertKind.SEQ_GAP]
    assert state.gaps == ()


def test_a_late_sample_does_not_rewrite_alerts() -> None:
    d = Drive().raw(0, {SPEED: 50.0})
    state, _ = run(d.items, RuleSettings(speed_limit_kmh=30, overspeed_min_ms=0))
    late = Sample(T0 - 60_000, {SPEED: 0.0}, None)
    state2, changes = evaluate(state, late, RuleSettings(speed_limit_kmh=30, overspeed_min_ms=0))
    assert changes == ()
    assert state2.alerts == state.alerts


def test_evaluate_does_not_touch_its_input_state() -> None:
    d = scripted_drive()
    state, _ = run(d.items[:400])
    snapshot = (dict(state.alerts), dict(state.known), dict(state.since), dict(state.fences))
    for item in d.items[400:]:
        evaluate(state, item, SETTINGS)
    assert snapshot == (
        dict(state.alerts),
        dict(state.known),
        dict(state.since),
        dict(state.fences),
    )


def test_overspeed_shorter_than_the_minimum_is_not_an_alert() -> None:
    d = Drive().raw(0, {SPEED: 100.0})
    for _ in range(8):
        d.raw(1, {SPEED: 130.0})
    d.raw(1, {SPEED: 100.0})
    _, changes = run(d.items)
    assert not [c for c in changes if c.alert.kind is AlertKind.OVERSPEED]


def test_overspeed_peak_updates_the_open_alert() -> None:
    d = Drive().raw(0, {SPEED: 125.0})
    for v in (125.0, 128.0, 137.0, 150.0, 151.0, 100.0):
        d.raw(6, {SPEED: v})
    _, changes = run(d.items, RuleSettings(speed_limit_kmh=120, harsh_interval_ms=(0, 0)))
    assert [(c.action, c.alert.detail["peak_kmh"]) for c in changes] == [
        ("opened", 128.0),
        ("updated", 150.0),
        ("closed", 150.0),
    ]


# --- properties ---------------------------------------------------------------------------

signal_values = st.fixed_dictionaries(
    {},
    optional={
        SPEED: st.floats(0, 160),
        SOC: st.floats(0, 100),
        IGNITION: st.sampled_from(["ON", "OFF", "ACC"]),
        LATITUDE: st.floats(48.13, 48.16),
        LONGITUDE: st.just(DEPOT_C.lon),
    },
)
items = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 120_000), signal_values),
        st.tuples(st.integers(0, 120_000), st.sampled_from(["P0301", "P0420"])),
        st.integers(0, 3_600_000),
    ),
    max_size=60,
)


def _items(raw: list[tuple[int, object] | int]) -> list[Item]:
    t, seq = T0, 0
    out: list[Item] = []
    for r in raw:
        if isinstance(r, int):
            out.append(Tick(t + r))
        elif isinstance(r[1], str):
            t += r[0]
            out.append(
                VehicleEvent(t, EventType.DTC_SET if r[0] % 2 else EventType.DTC_CLEARED, r[1])
            )
        else:
            t += r[0]
            seq += 1 + (r[0] % 7 == 0)
            out.append(Sample(t, r[1], seq))  # type: ignore[arg-type]
    return out


@settings(max_examples=150, deadline=None)
@given(items)
def test_an_alert_key_alternates_opened_and_closed(raw: list[tuple[int, object] | int]) -> None:
    """Whatever the vehicle reports, an open alert is never opened again: per key the
    changes read opened, updated*, closed, opened, ... and the open set agrees."""
    state, changes = run(_items(raw))
    is_open: dict[str, bool] = {}
    for c in changes:
        if c.alert.end_ms == c.alert.start_ms and c.action == "opened" and c.alert.kind in (
            AlertKind.GEOFENCE_ENTER, AlertKind.GEOFENCE_EXIT
        ):  # fmt: skip
            continue
        was = is_open.get(c.alert.key, False)
        assert was == (c.action != "opened"), (c.alert.key, c.action)
        is_open[c.alert.key] = c.action != "closed"
    assert {k for k, v in is_open.items() if v} == set(state.alerts)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(13.0, 22.0), min_size=1, max_size=80))
def test_low_soc_hysteresis(levels: list[float]) -> None:
    """Low SoC opens below 15 % and clears above 20 %: as many openings as the level went
    from above 20 % (or the start) to below 15 %, never one per sample."""
    d = Drive()
    for v in levels:
        d.raw(1, {SOC: v})
    _, changes = run(d.items)
    expected, armed = 0, True
    for v in levels:
        if armed and v < 15:
            expected, armed = expected + 1, False
        elif v > 20:
            armed = True
    assert Counter(c.action for c in changes)["opened"] == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-24.0, 24.0), min_size=2, max_size=60))
def test_jitter_on_the_depot_boundary_raises_no_geofence_alert(jitter: list[float]) -> None:
    d = Drive()
    for m in jitter:
        d.raw(1, {SPEED: 0.0, **at(north(200.0 + m))})
    _, changes = run(d.items, RuleSettings(geofences=(DEPOT,), geofence_min_dwell_ms=0))
    assert not changes


def test_events_are_signs_of_life_and_old_ignition_events_lose() -> None:
    d = Drive().raw(0, {IGNITION: "ON", SPEED: 30.0})
    d.items.append(Tick(d.t + 16 * MIN))
    d.items.append(VehicleEvent(d.t + 17 * MIN, EventType.DTC_SET, "P0420", d.t + 17 * MIN))
    d.items.append(VehicleEvent(d.t - 5_000, EventType.IGNITION_OFF))  # older than the sample
    state, changes = run(d.items)
    offline = [c.action for c in changes if c.alert.kind is AlertKind.OFFLINE]
    assert offline == ["opened", "closed"]
    assert "ignition" in state.alerts


def _brute_force_fences(
    fixes: list[tuple[int, Point, tuple[Geofence, ...]]], margin_m: float, dwell_ms: int
) -> tuple[list[list[tuple[str, FenceState]]], list[tuple[str, str, int]]]:
    """Every fence measured at every fix (no index, no shortcut): the fence states after
    each fix, in the fences' order, and the crossings (fence, enter/exit, time)."""
    states: dict[str, FenceState] = {}
    after, crossings = [], list[tuple[str, str, int]]()
    for ts, p, fences in fixes:
        new = {}
        for fence in fences:
            new[fence.id], t = update_fence(
                states.get(fence.id), fence.shape, p, ts, margin_m=margin_m, min_dwell_ms=dwell_ms
            )
            if t is not None:
                crossings.append((fence.id, t.kind, t.ts_ms))
        states = new
        after.append(list(states.items()))
    return after, crossings


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-800, 800), st.floats(-800, 800), st.floats(30, 400)),
        min_size=1,
        max_size=6,
    ),
    st.lists(
        st.tuples(st.floats(-80, 80), st.floats(-80, 80), st.integers(500, 8_000)),
        min_size=1,
        max_size=60,
    ),
    st.floats(0, 60),
    st.sampled_from([0, 3_000, 10_000]),
    st.integers(0, 60),
    st.integers(1, 6),
    st.lists(st.integers(1, 6), max_size=8),
)
def test_fence_states_and_crossings_are_every_fence_measured_at_every_fix(
    shapes: list[tuple[float, float, float]],
    moves: list[tuple[float, float, int]],
    margin_m: float,
    dwell_ms: int,
    change_at: int,
    keep: int,
    chunks: list[int],
) -> None:
    """The rules measure only the fences the index names near a fix and those the vehicle
    is inside of or pending for, and keep the other states as they are (decision 0040):
    the states and crossings must be those of measuring every fence at every fix, also
    when the organization's fences change in the middle (some removed, one added) and
    whatever the passes the fixes come in."""
    fences = tuple(
        Geofence(str(i), Circle(north(n), r) if i % 2 else square(n, r), alert_exit=True)
        for i, (n, _, r) in enumerate(shapes)
    )
    added = Geofence("added", Circle(north(shapes[0][1]), 150.0))
    later = (*fences[:keep], added)
    fixes, p, t = [], north(0.0), T0
    for i, (dn, de, dt_ms) in enumerate(moves):
        k = M_PER_DEG * math.cos(math.radians(p.lat))
        p, t = Point(p.lon + de / k, p.lat + dn / M_PER_DEG), t + dt_ms
        fixes.append((t, p, fences if i < change_at else later))
    expected, crossings = _brute_force_fences(fixes, margin_m, dwell_ms)
    state, got, sizes, i = RuleState(), list[AlertChange](), iter(chunks), 0
    while i < len(fixes):  # passes of a few fixes, as the worker evaluates them
        fences_now = fixes[i][2]
        part = [f for f in fixes[i : i + next(sizes, 1)] if f[2] is fences_now]
        cfg = RuleSettings(
            geofences=fences_now, geofence_margin_m=margin_m, geofence_min_dwell_ms=dwell_ms
        )
        state, changes = evaluate_many(state, [Sample(ts, at(q)) for ts, q, _ in part], cfg)
        got.extend(changes)
        i += len(part)
        assert list(state.fences.items()) == expected[i - 1]
    seen = [
        (str(c.alert.detail["geofence"]), c.alert.kind.value.split("_")[-1], c.alert.start_ms)
        for c in got
        if c.alert.kind in (AlertKind.GEOFENCE_ENTER, AlertKind.GEOFENCE_EXIT)
    ]
    assert seen == crossings
