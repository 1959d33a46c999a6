"""Fleet geometry and geofences (issue 13): distances, containment, GeoJSON validation, and
enter/exit hysteresis, with property tests for the invariants the rules rely on."""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.fleet.geo import (
    MAX_VERTICES,
    Circle,
    GeoJSONError,
    Point,
    Polygon,
    distance_m,
    shape_from_geojson,
    shape_to_geojson,
    surely_outside,
)
from gateway.core.fleet.geofence import (
    ActiveWindow,
    FenceIndex,
    FenceState,
    Geofence,
    update_fence,
)
from gateway.core.fleet.signals import (
    IGNITION,
    LATITUDE,
    LONGITUDE,
    SOC,
    SPEED,
    position_of,
)
from schemas.catalog import CATALOG

MUNICH = Point(11.5755, 48.1374)
M_PER_DEG_LAT = math.pi / 180 * 6_371_008.8

lons = st.floats(11.0, 12.0)
lats = st.floats(47.5, 48.5)
points = st.builds(Point, lons, lats)


def offset(p: Point, north_m: float, east_m: float) -> Point:
    """A point ``north_m``/``east_m`` metres from ``p`` (local flat approximation)."""
    k = M_PER_DEG_LAT * math.cos(math.radians(p.lat))
    return Point(p.lon + east_m / k, p.lat + north_m / M_PER_DEG_LAT)


def square(center: Point, half_m: float) -> tuple[Point, ...]:
    corners = [(-1, -1), (-1, 1), (1, 1), (1, -1)]
    ring = [offset(center, n * half_m, e * half_m) for n, e in corners]
    return (*ring, ring[0])


def test_catalog_has_the_signals_the_rules_read() -> None:
    for name in (SPEED, SOC, IGNITION, LATITUDE, LONGITUDE):
        assert name in CATALOG


def test_known_distance_munich_to_berlin() -> None:
    berlin = Point(13.4050, 52.5200)
    assert distance_m(MUNICH, berlin) == pytest.approx(504_000, rel=0.01)
    assert distance_m(MUNICH, MUNICH) == 0


@settings(max_examples=200, deadline=None)
@given(points, points, st.floats(10, 100_000))
def test_inside_a_circle_iff_distance_below_radius(c: Point, p: Point, r: float) -> None:
    circle = Circle(c, r)
    assert circle.contains(p) == (distance_m(c, p) < r)
    assert (circle.signed_distance_m(p) < 0) == circle.contains(p)
    exact, fast = circle.signed_distance_m(p), circle.signed_distance_m(p, cutoff_m=50)
    assert fast == exact if exact <= 50 else 50 < fast <= exact + 1e-6


@settings(max_examples=100, deadline=None)
@given(points, st.floats(-60_000, 60_000), st.floats(-60_000, 60_000), st.floats(10, 50_000))
def test_surely_outside_a_box_is_outside_the_shape(
    c: Point, north: float, east: float, r: float
) -> None:
    """The rules skip a fence when a fix is surely outside its box: that must never be
    a fix inside or on the near side of the boundary, for circles (whose box is computed
    from centre and radius) and polygons."""
    p = offset(c, north, east)
    for shape in (Circle(c, r), Polygon(square(c, r))):
        if surely_outside(shape.bbox, p):
            assert not shape.contains(p)
            assert shape.signed_distance_m(p) > 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(points, st.floats(10, 100_000), st.booleans()), min_size=1, max_size=8),
    points,
    st.floats(-120, 120),
    st.floats(-120, 120),
    st.floats(-90, 90),
    st.sampled_from([0.05, 0.002, 0.0005]),
)
def test_the_fence_index_names_every_fence_a_fix_is_not_surely_outside(
    shapes: list[tuple[Point, float, bool]],
    p: Point,
    north: float,
    east: float,
    lat: float,
    cell: float,
) -> None:
    """The rules look only at the fences the index names for a fix (decision 0024): any
    fence it leaves out must be one ``surely_outside`` would have skipped, also for fixes
    just beyond a box's corner, for regions too large to grid, and far from the equator."""
    fences = tuple(
        Geofence(str(i), Circle(c, r) if circle else Polygon(square(c, r)))
        for i, (c, r, circle) in enumerate(shapes)
    )
    index = FenceIndex(fences, cell_deg=cell)  # small cells: boundaries everywhere
    first = fences[0].shape.bbox
    corner = offset(Point(first[2], first[3]), north, east)
    far_north = Point(p.lon, max(-89.0, min(89.0, lat)))
    for fix in (p, corner, far_north):
        named = {f.id for f in index.near(fix)}
        for fence in fences:
            if fence.id not in named:
                assert surely_outside(fence.shape.bbox, fix)
        assert [f.id for f in index.near(fix)] == [f.id for f in fences if f.id in named]


@given(
    st.lists(st.tuples(st.floats(0.1, 1.0), st.floats(0, 2 * math.pi)), min_size=3, max_size=12),
    points,
    st.integers(0, 20),
    st.booleans(),
)
def test_polygon_containment_ignores_ring_rotation_and_orientation(
    radial: list[tuple[float, float]], p: Point, shift: int, reverse: bool
) -> None:
    """A star-shaped ring around Munich: rotating or reversing it encloses the same area."""
    radial.sort(key=lambda ra: ra[1])
    pts = [Point(MUNICH.lon + r * math.cos(a), MUNICH.lat + r * math.sin(a)) for r, a in radial]
    if len(set(pts)) < 3:
        return
    base = Polygon((*pts, pts[0]))
    k = shift % len(pts)
    moved = pts[k:] + pts[:k]
    if reverse:
        moved.reverse()
    other = Polygon((*moved, moved[0]))
    assert base.contains(p) == other.contains(p)


@settings(max_examples=150, deadline=None)
@given(st.floats(-500, 500), st.floats(-500, 500))
def test_adjacent_polygons_share_an_edge_and_hold_a_point_at_most_once(n: float, e: float) -> None:
    west = Polygon(
        (
            offset(MUNICH, -300, -300),
            offset(MUNICH, 300, -300),
            offset(MUNICH, 300, 0),
            offset(MUNICH, -300, 0),
            offset(MUNICH, -300, -300),
        )
    )
    east = Polygon(
        (
            offset(MUNICH, -300, 0),
            offset(MUNICH, 300, 0),
            offset(MUNICH, 300, 300),
            offset(MUNICH, -300, 300),
            offset(MUNICH, -300, 0),
        )
    )
    p = offset(MUNICH, n, e)
    assert west.contains(p) + east.contains(p) <= 1
    on_edge = Point(west.exterior[2].lon, p.lat)  # exactly on the shared edge
    if abs(n) < 290:
        assert west.contains(on_edge) + east.contains(on_edge) == 1


def test_polygon_with_a_hole_and_boundary_distance() -> None:
    outer = square(MUNICH, 500)
    hole = square(MUNICH, 100)
    poly = Polygon(outer, (hole,))
    assert not poly.contains(MUNICH)
    assert poly.contains(offset(MUNICH, 300, 0))
    assert not poly.contains(offset(MUNICH, 700, 0))
    assert poly.signed_distance_m(offset(MUNICH, 300, 0)) == pytest.approx(-200, abs=1)
    assert poly.signed_distance_m(offset(MUNICH, 150, 0)) == pytest.approx(-50, abs=1)
    assert poly.signed_distance_m(offset(MUNICH, 0, 0)) == pytest.approx(100, abs=1)
    assert poly.signed_distance_m(offset(MUNICH, 530, 0)) == pytest.approx(30, abs=1)


def test_geojson_round_trip() -> None:
    poly = Polygon(square(MUNICH, 500), (square(MUNICH, 100),))
    circle = Circle(MUNICH, 250.0)
    for shape in (poly, circle):
        doc = shape_to_geojson(shape, {"name": "depot"})
        assert doc["properties"]["name"] == "depot"
        assert shape_from_geojson(doc) == shape
    assert shape_from_geojson(shape_to_geojson(poly)["geometry"]) == poly


def _feature(coords: object, kind: str = "Polygon", **props: object) -> dict[str, object]:
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": coords},
        "properties": props,
    }


@pytest.mark.parametrize(
    ("doc", "where", "says"),
    [
        (_feature([[[11, 48], [11.1, 48], [11.1, 48.1], [11, 48.1]]]), "[0]", "not closed"),
        (_feature([[[11, 48], [11.1, 48], [11, 48]]]), "[0]", "at least 4"),
        (_feature([[[48, 11], [48, 120], [48.1, 11], [48, 11]]]), "[0][1]", "swapped"),
        (_feature([[[181, 48], [11, 48], [11, 49], [181, 48]]]), "[0][0]", "longitude 181"),
        (_feature([[[179, 0], [-179, 0], [-179, 1], [179, 0]]]), "[0][1]", "antimeridian"),
        (_feature([[[11, 48], [11, "x"], [11.1, 48], [11, 48]]]), "[0][1]", "finite numbers"),
        (_feature([10**400, 48.1], "Point", radius_m=100), "$", "finite numbers"),
        (_feature([11.5, 48.1], "Point"), "radius_m", "needs a numeric radius_m"),
        (_feature([11.5, 48.1], "Point", radius_m=1e6), "radius_m", "outside"),
        (_feature([11.5, 48.1], "LineString"), "type", "expected 'Polygon' or 'Point'"),
        ("nope", "$", "GeoJSON object"),
    ],
)
def test_geojson_errors_say_what_is_wrong(doc: object, where: str, says: str) -> None:
    with pytest.raises(GeoJSONError) as info:
        shape_from_geojson(doc)
    assert where in info.value.where
    assert says in info.value.message


def test_geojson_vertex_bound() -> None:
    n = MAX_VERTICES + 1
    ring = [[11 + 0.001 * math.cos(2 * math.pi * i / n), 48 + 0.001 * math.sin(2 * math.pi * i / n)]
            for i in range(n - 1)]  # fmt: skip
    with pytest.raises(GeoJSONError, match="at most 1000"):
        shape_from_geojson(_feature([[*ring, ring[0]]]))
    shape_from_geojson(_feature([[*ring[:-2], ring[0]]]))


# --- hysteresis ---------------------------------------------------------------------------

FENCE = Circle(MUNICH, 500.0)


def _at(d_from_boundary: float) -> Point:
    return offset(MUNICH, 500.0 + d_from_boundary, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-24.9, 24.9), min_size=1, max_size=60), st.integers(0, 20_000))
def test_jitter_within_the_margin_never_flaps(jitter: list[float], dwell: int) -> None:
    state: FenceState | None = None
    transitions = 0
    for i, d in enumerate(jitter):
        state, t = update_fence(state, FENCE, _at(d), i * 1000, margin_m=25, min_dwell_ms=dwell)
        transitions += t is not None
    assert transitions == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-24.9, 24.9), max_size=30),
    st.lists(st.floats(-24.9, 24.9), max_size=30),
    st.integers(0, 5_000),
)
def test_one_crossing_with_jitter_is_one_transition(
    before: list[float], after: list[float], dwell: int
) -> None:
    """Deep inside, jitter on the boundary, well outside for a while, jitter again: exactly one
    exit, timed at the first fix beyond the margin."""
    track = [-200.0, *before, *[60.0] * 8, *after]
    state: FenceState | None = None
    seen = []
    for i, d in enumerate(track):
        state, t = update_fence(state, FENCE, _at(d), i * 1000, margin_m=25, min_dwell_ms=dwell)
        if t is not None:
            seen.append(t)
    assert [t.kind for t in seen] == ["exit"]
    assert seen[0].ts_ms == (1 + len(before)) * 1000


def test_a_stray_fix_shorter_than_the_dwell_does_not_switch() -> None:
    state, _ = update_fence(None, FENCE, _at(-100), 0)
    state, t1 = update_fence(state, FENCE, _at(300), 1_000)  # multipath jump
    state, t2 = update_fence(state, FENCE, _at(-100), 2_000)
    state, t3 = update_fence(state, FENCE, _at(300), 30_000)
    state, t4 = update_fence(state, FENCE, _at(300), 45_000)
    assert (t1, t2, t3) == (None, None, None)
    assert t4 is not None
    assert (t4.kind, t4.ts_ms) == ("exit", 30_000)
    assert state == FenceState(inside=False)


def test_a_small_circle_can_still_be_entered() -> None:
    small = Circle(MUNICH, 20.0)
    state, _ = update_fence(None, small, offset(MUNICH, 200, 0), 0, min_dwell_ms=0)
    state, t = update_fence(state, small, MUNICH, 1_000, min_dwell_ms=0)
    assert t is not None
    assert t.kind == "enter"


def _ms(year: int, month: int, day: int, hour: int, minute: int, tz: str) -> int:
    local = dt.datetime(year, month, day, hour, minute, tzinfo=zoneinfo.ZoneInfo(tz))
    return int(local.timestamp() * 1000)


def test_active_window_local_time_weekdays_and_midnight_wrap() -> None:
    office = ActiveWindow(dt.time(7), dt.time(19), "Europe/Berlin", frozenset(range(5)))
    assert office.contains(_ms(2026, 12, 7, 8, 0, "Europe/Berlin"))  # Monday 08:00
    assert not office.contains(_ms(2026, 12, 7, 19, 0, "Europe/Berlin"))
    assert not office.contains(_ms(2026, 12, 6, 8, 0, "Europe/Berlin"))  # Sunday
    assert office.contains(_ms(2026, 7, 6, 7, 30, "Europe/Berlin"))  # summer time, still local
    night = ActiveWindow(dt.time(22), dt.time(6), "Europe/Berlin", frozenset({4}))  # Fri night
    assert night.contains(_ms(2026, 12, 11, 23, 0, "Europe/Berlin"))
    assert night.contains(_ms(2026, 12, 12, 5, 0, "Europe/Berlin"))  # Saturday early
    assert not night.contains(_ms(2026, 12, 11, 5, 0, "Europe/Berlin"))  # Friday early
    with pytest.raises(ValueError, match="time zone"):
        ActiveWindow(dt.time(7), dt.time(19), "Mars/Olympus")


def test_a_fix_with_one_coordinate_takes_the_other_from_the_last() -> None:
    last = Point(11.5, 48.1)
    assert position_of({LATITUDE: 48.2}, last) == Point(11.5, 48.2)
    assert position_of({LONGITUDE: 11.6}, last) == Point(11.6, 48.1)
    assert position_of({LATITUDE: 48.2}) is None
    assert position_of({SPEED: 3.0}, last) is None


def star(points: int) -> tuple[Point, ...]:
    """A closed star-shaped ring of ``points`` vertices, 600 and 900 m from Munich."""
    ring = []
    for i in range(points):
        a, r = 2 * math.pi * i / points, 600 + 300 * (i % 2)
        ring.append(offset(MUNICH, r * math.sin(a), r * math.cos(a)))
    return (*ring, ring[0])


STAR = Polygon(star(200), (square(MUNICH, 100),))


@settings(max_examples=150, deadline=None)
@given(st.floats(-1500, 1500), st.floats(-1500, 1500), st.floats(1, 200))
def test_the_banded_distance_is_exact_within_the_cutoff(n: float, e: float, cutoff: float) -> None:
    """The latitude bands and the bounding-box shortcut never change an answer hysteresis
    reads: exact below the cutoff, a lower bound of at least the cutoff above it."""
    p = offset(MUNICH, n, e)
    exact = STAR.signed_distance_m(p)
    fast = STAR.signed_distance_m(p, cutoff_m=cutoff)
    if abs(exact) < cutoff:
        assert fast == pytest.approx(exact)
    else:
        assert abs(fast) >= cutoff - 1e-9
        assert (fast < 0) == (exact < 0)
        assert abs(fast) <= abs(exact) + 1e-6


def test_the_core_imports_only_the_stdlib_and_schemas() -> None:
    """The sans-IO rule of gateway/core (decision 0013), checked here for this package until
    the project's import contract covers it."""
    import ast
    import sys
    from pathlib import Path

    import gateway.core.fleet as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "schemas", (path.name, name)
