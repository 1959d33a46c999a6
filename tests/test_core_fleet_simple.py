"""Simple polygons (issue 13): a geofence ring may not cross or touch itself or another
ring (``gateway.core.fleet.geo.check_simple``). Property tests: the sweep agrees with a
brute-force check written here on its own (exact integer geometry), points in convex
position make a simple ring exactly when taken in their cyclic order, star-shaped rings
are accepted, and the verdict does not depend on where a ring starts or its direction."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.core.fleet.geo import (
    GeoJSONError,
    Point,
    Polygon,
    check_simple,
    find_crossing,
    shape_from_geojson,
)


def closed(points: list[Point]) -> tuple[Point, ...]:
    return (*points, points[0])


# --- an independent reference: every pair of edges, exact integer arithmetic ---------------


def _cross(o: Point, a: Point, b: Point) -> int:
    return int((a.lon - o.lon) * (b.lat - o.lat) - (a.lat - o.lat) * (b.lon - o.lon))


def _meet(p: Point, q: Point, r: Point, s: Point) -> bool:
    """Closed segments pq and rs share a point (integer coordinates: exact)."""

    def within(a: Point, b: Point, c: Point) -> bool:
        return min(a.lon, b.lon) <= c.lon <= max(a.lon, b.lon) and min(
            a.lat, b.lat
        ) <= c.lat <= max(a.lat, b.lat)

    d = [_cross(r, s, p), _cross(r, s, q), _cross(p, q, r), _cross(p, q, s)]
    if d[0] * d[1] < 0 and d[2] * d[3] < 0:
        return True
    return any(
        x == 0 and within(a, b, c)
        for x, (a, b, c) in zip(d, [(r, s, p), (r, s, q), (p, q, r), (p, q, s)], strict=True)
    )


def brute_force_simple(ring: tuple[Point, ...]) -> bool:
    pts = [p for p, nxt in itertools.pairwise(ring) if p != nxt]  # drop repeats
    edges = list(itertools.pairwise([*pts, pts[0]]))
    n = len(edges)
    for i, j in itertools.combinations(range(n), 2):
        (p, q), (r, s) = edges[i], edges[j]
        if j == i + 1 or (i == 0 and j == n - 1):
            first, second = ((p, q), (r, s)) if j == i + 1 else ((r, s), (p, q))
            a, b = first
            c = second[1]
            dot = (b.lon - a.lon) * (c.lon - b.lon) + (b.lat - a.lat) * (c.lat - b.lat)
            if _cross(a, b, c) == 0 and dot < 0:
                return False  # doubles back
        elif _meet(p, q, r, s):
            return False
    return True


grid = st.builds(Point, st.integers(0, 6).map(float), st.integers(0, 6).map(float))


@settings(max_examples=400, deadline=None)
@given(st.lists(grid, min_size=3, max_size=9))
def test_the_sweep_agrees_with_every_pair_of_edges(points: list[Point]) -> None:
    """Small integer grids make touching, collinear and repeated points common."""
    if len(set(points)) < 3 or points[0] == points[-1]:
        return
    ring = closed(points)
    assert (find_crossing([ring]) is None) == brute_force_simple(ring), ring


def _convex(n: int) -> list[Point]:
    return [
        Point(
            11.5 + 0.01 * math.cos(2 * math.pi * k / n), 48.1 + 0.01 * math.sin(2 * math.pi * k / n)
        )
        for k in range(n)
    ]


@settings(max_examples=200, deadline=None)
@given(st.integers(4, 9).flatmap(lambda n: st.permutations(list(range(n)))))
def test_points_in_convex_position_are_simple_exactly_in_cyclic_order(order: list[int]) -> None:
    n = len(order)
    hull = _convex(n)
    start = order.index(0)
    rotated = order[start:] + order[:start]
    cyclic = rotated == list(range(n)) or rotated == [0, *range(n - 1, 0, -1)]
    assert (find_crossing([closed([hull[k] for k in order])]) is None) == cyclic, order


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 2 * math.pi, exclude_max=True), st.floats(0.001, 0.05)),
        min_size=3,
        max_size=60,
        unique_by=lambda t: round(t[0], 3),
    ),
    st.integers(0, 59),
    st.booleans(),
)
def test_star_shaped_rings_are_simple_wherever_they_start_and_either_way(
    polar: list[tuple[float, float]], shift: int, backwards: bool
) -> None:
    polar.sort()
    angles = [a for a, _ in polar]
    # the centre must see every edge from inside: no angular gap of half a turn or more
    assume(all(b - a < math.pi for a, b in itertools.pairwise([*angles, angles[0] + 2 * math.pi])))
    points = [Point(11.5 + r * math.cos(a), 48.1 + r * math.sin(a)) for a, r in polar]
    shift %= len(points)
    points = points[shift:] + points[:shift]
    if backwards:
        points.reverse()
    check_simple(Polygon(closed(points)))


@settings(max_examples=200, deadline=None)
@given(st.lists(grid, min_size=4, max_size=8), st.integers(0, 7), st.booleans())
def test_the_verdict_does_not_depend_on_the_start_or_the_direction(
    points: list[Point], shift: int, backwards: bool
) -> None:
    if len(set(points)) < 3 or points[0] == points[-1]:
        return
    other = points[shift % len(points) :] + points[: shift % len(points)]
    if backwards:
        other.reverse()
    if other[0] == other[-1]:
        return
    assert (find_crossing([closed(points)]) is None) == (find_crossing([closed(other)]) is None)


def _geojson(*rings: list[tuple[float, float]]) -> dict[str, object]:
    return {"type": "Polygon", "coordinates": [[list(p) for p in (*r, r[0])] for r in rings]}


@pytest.mark.parametrize(
    ("rings", "says"),
    [
        ([[(0, 0), (1, 1), (1, 0), (0, 1)]], "crosses or touches itself"),  # a bow tie
        ([[(0, 0), (2, 0), (2, 2), (1, 0), (0, 2)]], "itself"),  # touches at (1, 0)
        ([[(0, 0), (4, 0), (4, 4), (0, 4)], [(1, 1), (5, 1), (5, 2)]], "meets ring 1"),
        ([[(0, 0), (4, 0), (4, 4), (0, 4)], [(5, 5), (6, 5), (6, 6)]], "not inside"),
        (
            [[(0, 0), (9, 0), (9, 9), (0, 9)], [(1, 1), (8, 1), (8, 8)], [(6, 2), (7, 2), (7, 3)]],
            "inside hole 1",
        ),
    ],
)
def test_what_is_refused_and_where(rings: list[list[tuple[float, float]]], says: str) -> None:
    shape = shape_from_geojson(_geojson(*rings))
    with pytest.raises(GeoJSONError, match=says) as raised:
        check_simple(shape)
    assert raised.value.where.startswith("$.geometry.coordinates[")


def test_a_polygon_with_a_hole_inside_is_accepted() -> None:
    check_simple(
        shape_from_geojson(_geojson([(0, 0), (4, 0), (4, 4), (0, 4)], [(1, 1), (2, 1), (2, 2)]))
    )


def test_a_contrived_polygon_is_refused_rather_than_checked_for_long() -> None:
    """1,000 spikes meeting at the centre make every pair of edges a candidate: the check
    stops at MAX_PAIR_TESTS instead of spending most of a second (it took 0.3-0.7 s)."""
    n = 999
    star = [
        Point(11.5 + r * math.cos(a) * 0.01, 48 + r * math.sin(a) * 0.01)
        for i in range(n)
        for a, r in [(2 * math.pi * i / n, 1.0 if i % 2 else 0.001)]
    ]
    with pytest.raises(GeoJSONError, match="too intricate"):
        check_simple(Polygon(closed(star)))
    circle = [Point(11.5 + 0.01 * math.cos(a), 48 + 0.01 * math.sin(a)) for a in _angles(n)]
    check_simple(Polygon(closed(circle)))


def _angles(n: int) -> list[float]:
    return [2 * math.pi * k / n for k in range(n)]
