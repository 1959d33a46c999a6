"""WGS 84 geometry for geofences: distances, circles, polygons with holes, GeoJSON.

Positions are ``Point(lon, lat)`` in degrees, in GeoJSON's order (longitude first), so
GeoJSON goes in and out without reordering, which is where lat/lon mix-ups come from.

Distances use the haversine formula on a sphere of the mean Earth radius: within 0.5 % of
the ellipsoid everywhere, far below GPS error. Polygon containment is the even-odd rule in
the lon/lat plane (edges are straight in degrees, which for fences of a few kilometres is
within centimetres of the geodesic); the distance from a point to a polygon's boundary is
measured in a local equirectangular projection around the point, accurate to well under a
metre for the edges of city-sized fences. Rings must not cross the antimeridian (no edge
may span more than 180 degrees of longitude): a fence there has to be split in two. That
limit is checked, not silently wrong.

Bounds, checked on input: at most :data:`MAX_VERTICES` positions per polygon (all rings
together; 1,000 draws any depot, zone or city boundary a fleet manager needs, and with the
edges banded by latitude a containment test stays at a few microseconds), at most
:data:`MAX_HOLES` holes, and a circle radius from :data:`MIN_RADIUS_M` (below GPS accuracy
a circle cannot be told apart) to :data:`MAX_RADIUS_M` (a larger area is a region, better
drawn as a polygon).

:func:`check_simple` refuses what the even-odd rule would give a surprising meaning: a ring
that crosses or touches itself (a bow tie: "inside" would be two triangles, and a fleet
manager who drew it meant something else), an edge that doubles back on the previous one,
rings that cross or touch each other, and a hole outside the exterior or inside another
hole. It is separate from :func:`shape_from_geojson` so that fences stored before it keep
loading; the API applies both to what it is sent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeAlias

__all__ = [
    "BOX_SLACK_M",
    "EARTH_RADIUS_M",
    "MAX_HOLES",
    "MAX_PAIR_TESTS",
    "MAX_RADIUS_M",
    "MAX_VERTICES",
    "MIN_RADIUS_M",
    "M_PER_DEG",
    "SWAP_SUSPECT_M",
    "Circle",
    "GeoJSONError",
    "Point",
    "Polygon",
    "RingCrossing",
    "Shape",
    "check_simple",
    "distance_m",
    "find_crossing",
    "shape_from_geojson",
    "shape_to_geojson",
    "swapped_near",
]

#: mean Earth radius (IUGG), metres
EARTH_RADIUS_M = 6_371_008.8
MAX_VERTICES = 1_000
MAX_HOLES = 50
MIN_RADIUS_M = 10.0
MAX_RADIUS_M = 100_000.0
#: the most pairs of edges :func:`check_simple` looks at (overlapping in longitude; a fifth
#: of it overlapping in both, and tested): a 1,000-position circle has 2,500 (1,000), a
#: noisy 1,000-position city boundary 33,000 (4,000), a 1,000-position star whose spikes
#: all meet at its centre 249,000 (124,000; it took 0.3-0.7 s)
MAX_PAIR_TESTS = 100_000

_M_PER_DEG = M_PER_DEG = math.pi / 180.0 * EARTH_RADIUS_M


class Point(NamedTuple):
    """A WGS 84 position, longitude first as in GeoJSON."""

    lon: float
    lat: float


Ring: TypeAlias = tuple[Point, ...]


def distance_m(a: Point, b: Point) -> float:
    """Great-circle distance in metres (haversine: stable for short distances too)."""
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    dphi = phi2 - phi1
    dlmb = math.radians(b.lon - a.lon)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class Circle:
    """A circle: inside when the distance to the centre is below the radius."""

    center: Point
    radius_m: float

    def contains(self, p: Point) -> bool:
        return distance_m(self.center, p) < self.radius_m

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees, enclosing the circle (its longitude
        extent taken at the latitude furthest from the equator it reaches)."""
        dlat = self.radius_m / _M_PER_DEG
        far_lat = min(89.9, abs(self.center.lat) + dlat)
        dlon = min(180.0, self.radius_m / (_M_PER_DEG * math.cos(math.radians(far_lat))))
        c = self.center
        return (c.lon - dlon, c.lat - dlat, c.lon + dlon, c.lat + dlat)

    def signed_distance_m(self, p: Point, cutoff_m: float = math.inf) -> float:
        """Distance to the boundary in metres, negative inside: what hysteresis measures.
        Exact up to ``cutoff_m``; beyond it possibly only a lower bound above ``cutoff_m``:
        the latitude difference alone (a great circle is never shorter than it)."""
        meridional = abs(p.lat - self.center.lat) * _M_PER_DEG - self.radius_m
        if meridional > cutoff_m:
            return meridional
        return distance_m(self.center, p) - self.radius_m

    @property
    def max_depth_m(self) -> float:
        """How far inside a point can be: a margin deeper than this could never be met."""
        return self.radius_m


@dataclass(frozen=True, slots=True)
class Polygon:
    """A polygon with holes; rings are closed (first position repeated last).

    Containment is the even-odd rule over all rings (a hole is a ring inside the exterior).
    The edges are indexed by latitude band, so a test looks at the few edges near the
    point's latitude rather than all 1,000.
    """

    exterior: Ring
    holes: tuple[Ring, ...] = ()
    bbox: tuple[float, float, float, float] = field(init=False, compare=False)
    _edges: _EdgeIndex = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        lons = [p.lon for p in self.exterior]
        lats = [p.lat for p in self.exterior]
        object.__setattr__(self, "bbox", (min(lons), min(lats), max(lons), max(lats)))
        object.__setattr__(self, "_edges", _EdgeIndex((self.exterior, *self.holes), self.bbox))

    def contains(self, p: Point) -> bool:
        """Even-odd rule. A point exactly on an edge shared by two polygons is inside
        exactly one of them (half-open crossing test, each edge taken in one direction)."""
        x0, y0, x1, y1 = self.bbox
        if not (x0 <= p.lon <= x1 and y0 <= p.lat <= y1):
            return False
        inside = False
        for a, b in self._edges.near(p.lat, 0.0):
            if a.lat <= p.lat < b.lat:
                x_cross = a.lon + (p.lat - a.lat) * (b.lon - a.lon) / (b.lat - a.lat)
                if p.lon < x_cross:
                    inside = not inside
        return inside

    def signed_distance_m(self, p: Point, cutoff_m: float = math.inf) -> float:
        """Distance to the nearest edge (of any ring) in metres, negative inside. Exact up to
        ``cutoff_m``; beyond it a lower bound of at least ``cutoff_m`` (the distance to the
        bounding box, or ``cutoff_m`` itself) without measuring every edge: most fences are
        far from most vehicles, and hysteresis only asks whether a fix is beyond the margin."""
        x0, y0, x1, y1 = self.bbox
        kx = _M_PER_DEG * math.cos(math.radians(p.lat))
        dx = max(x0 - p.lon, 0.0, p.lon - x1) * kx
        dy = max(y0 - p.lat, 0.0, p.lat - y1) * _M_PER_DEG
        box = math.hypot(dx, dy)
        if box > cutoff_m:
            return box
        d = min(cutoff_m, _distance_to_edges(self._edges.near(p.lat, cutoff_m / _M_PER_DEG), p))
        return -d if self.contains(p) else d

    @property
    def max_depth_m(self) -> float:
        """Not computed for polygons (it is their inradius): a fence narrower than twice the
        hysteresis margin is entered only by points deep enough, see geofence.py."""
        return math.inf


Shape: TypeAlias = Circle | Polygon
Edge: TypeAlias = tuple[Point, Point]


class _EdgeIndex:
    """All edges of a polygon, each with its lower end first, bucketed by latitude band."""

    def __init__(self, rings: Sequence[Ring], bbox: tuple[float, float, float, float]) -> None:
        edges = [
            (a, b) if a.lat <= b.lat else (b, a) for r in rings for a, b in itertools.pairwise(r)
        ]
        self.edges = tuple(edges)
        self.y0 = bbox[1]
        self.n = max(1, min(256, len(edges) // 4))
        self.h = (bbox[3] - bbox[1]) / self.n or 1.0
        bands: list[list[int]] = [[] for _ in range(self.n)]
        for i, (a, b) in enumerate(edges):
            for k in range(self._band(a.lat), self._band(b.lat) + 1):
                bands[k].append(i)
        self.bands = tuple(tuple(b) for b in bands)

    def _band(self, lat: float) -> int:
        return max(0, min(self.n - 1, int((lat - self.y0) / self.h)))

    def near(self, lat: float, within_deg: float) -> Sequence[Edge]:
        """The edges whose latitude range may come within ``within_deg`` of ``lat``."""
        if math.isinf(within_deg):
            return self.edges
        lo, hi = self._band(lat - within_deg), self._band(lat + within_deg)
        if lo == hi:
            return [self.edges[i] for i in self.bands[lo]]
        ids = sorted({i for k in range(lo, hi + 1) for i in self.bands[k]})
        return [self.edges[i] for i in ids]


def _distance_to_edges(edges: Iterable[Edge], p: Point) -> float:
    kx = _M_PER_DEG * math.cos(math.radians(p.lat))
    best = math.inf
    for a, b in edges:
        ax, ay = (a.lon - p.lon) * kx, (a.lat - p.lat) * _M_PER_DEG
        bx, by = (b.lon - p.lon) * kx, (b.lat - p.lat) * _M_PER_DEG
        best = min(best, _origin_to_segment(ax, ay, bx, by))
    return best


def _origin_to_segment(ax: float, ay: float, bx: float, by: float) -> float:
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / length2))
    return math.hypot(ax + t * dx, ay + t * dy)


# --- GeoJSON ------------------------------------------------------------------------------


class GeoJSONError(ValueError):
    """Invalid geofence GeoJSON; ``where`` is the JSON path of the problem."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def shape_from_geojson(obj: object) -> Shape:
    """A shape from a GeoJSON Feature (or bare geometry): a Polygon, or a Point with a
    ``radius_m`` property (GeoJSON has no circle; this is the common convention)."""
    if not isinstance(obj, Mapping):
        raise GeoJSONError("$", "expected a GeoJSON object")
    if obj.get("type") == "Feature":
        props = obj.get("properties") or {}
        if not isinstance(props, Mapping):
            raise GeoJSONError("$.properties", "expected an object or null")
        return _geometry(obj.get("geometry"), "$.geometry", props.get("radius_m"))
    return _geometry(obj, "$", obj.get("radius_m"))


def _geometry(geom: object, where: str, radius: object) -> Shape:
    if not isinstance(geom, Mapping):
        raise GeoJSONError(where, "expected a geometry object")
    kind = geom.get("type")
    coords = geom.get("coordinates")
    if kind == "Polygon":
        return _polygon(coords, f"{where}.coordinates")
    if kind == "Point":
        return Circle(_position(coords, f"{where}.coordinates"), _radius(radius))
    raise GeoJSONError(f"{where}.type", f"expected 'Polygon' or 'Point', got {kind!r}")


def _radius(value: object) -> float:
    where = "$.properties.radius_m"
    if not _is_number(value):
        raise GeoJSONError(where, "a Point geofence needs a numeric radius_m (metres)")
    r = float(value)  # type: ignore[arg-type]
    if not MIN_RADIUS_M <= r <= MAX_RADIUS_M:
        raise GeoJSONError(where, f"radius {r} m is outside [{MIN_RADIUS_M}, {MAX_RADIUS_M}] m")
    return r


def _polygon(coords: object, where: str) -> Polygon:
    if not isinstance(coords, Sequence) or isinstance(coords, str) or not coords:
        raise GeoJSONError(where, "expected a list of linear rings (exterior first)")
    if len(coords) - 1 > MAX_HOLES:
        raise GeoJSONError(where, f"{len(coords) - 1} holes; at most {MAX_HOLES}")
    total = sum(len(r) if isinstance(r, Sequence) else 0 for r in coords)
    if total > MAX_VERTICES:
        raise GeoJSONError(where, f"{total} positions; at most {MAX_VERTICES} per polygon")
    rings = tuple(_ring(r, f"{where}[{i}]") for i, r in enumerate(coords))
    return Polygon(rings[0], rings[1:])


def _ring(raw: object, where: str) -> Ring:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise GeoJSONError(where, "expected a list of positions")
    ring = tuple(_position(p, f"{where}[{i}]") for i, p in enumerate(raw))
    if len(ring) < 4:
        raise GeoJSONError(where, f"a linear ring needs at least 4 positions, got {len(ring)}")
    if ring[0] != ring[-1]:
        raise GeoJSONError(where, "ring is not closed: the last position must equal the first")
    if len(set(ring)) < 3:
        raise GeoJSONError(where, "a ring needs at least 3 distinct positions")
    for i, (a, b) in enumerate(itertools.pairwise(ring)):
        if abs(b.lon - a.lon) > 180:
            raise GeoJSONError(
                f"{where}[{i + 1}]", "edge crosses the antimeridian (not supported: split it)"
            )
    return ring


def _position(raw: object, where: str) -> Point:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) not in (2, 3):
        raise GeoJSONError(where, "a position is [longitude, latitude] (optional altitude)")
    if not all(_is_number(v) for v in raw):
        raise GeoJSONError(where, "position values must be finite numbers")
    lon, lat = float(raw[0]), float(raw[1])
    if not -90 <= lat <= 90:
        hint = " (positions are [longitude, latitude]: swapped?)" if abs(lon) <= 90 else ""
        raise GeoJSONError(where, f"latitude {lat} is outside [-90, 90]{hint}")
    if not -180 <= lon <= 180:
        raise GeoJSONError(where, f"longitude {lon} is outside [-180, 180]")
    return Point(lon, lat)


def _is_number(v: object) -> bool:
    """A finite JSON number that a float holds (an integer of 400 digits does not)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


# --- simple polygons ----------------------------------------------------------------------


class RingCrossing(NamedTuple):
    """Edge ``edge_a`` of ring ``ring_a`` meets edge ``edge_b`` of ring ``ring_b`` (edge
    ``k`` runs from position ``k`` to ``k + 1`` of the ring as given)."""

    ring_a: int
    edge_a: int
    ring_b: int
    edge_b: int


class _E(NamedTuple):
    x0: float
    x1: float
    y0: float
    y1: float
    ring: int
    nth: int  # among the ring's edges of non-zero length
    edge: int  # the edge's index in the ring as given
    a: Point
    b: Point


def _orient(p: Point, q: Point, r: Point) -> float:
    """> 0: p, q, r turn left; < 0: right; 0: collinear."""
    return (q.lon - p.lon) * (r.lat - p.lat) - (q.lat - p.lat) * (r.lon - p.lon)


def _on_segment(p: Point, q: Point, r: Point) -> bool:
    """``r``, collinear with ``p``-``q``, lies on the segment."""
    return min(p.lon, q.lon) <= r.lon <= max(p.lon, q.lon) and min(p.lat, q.lat) <= r.lat <= max(
        p.lat, q.lat
    )


def segments_meet(p1: Point, p2: Point, p3: Point, p4: Point) -> bool:
    """Whether the closed segments p1-p2 and p3-p4 have a point in common."""
    d1, d2 = _orient(p3, p4, p1), _orient(p3, p4, p2)
    d3, d4 = _orient(p1, p2, p3), _orient(p1, p2, p4)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return (
        (d1 == 0 and _on_segment(p3, p4, p1))
        or (d2 == 0 and _on_segment(p3, p4, p2))
        or (d3 == 0 and _on_segment(p1, p2, p3))
        or (d4 == 0 and _on_segment(p1, p2, p4))
    )


def _edges_of(rings: Sequence[Ring]) -> tuple[list[_E], list[int]]:
    """The edges of non-zero length (a repeated position is not an edge), and how many
    each ring has."""
    edges: list[_E] = []
    counts = []
    for r, ring in enumerate(rings):
        n = 0
        for k, (a, b) in enumerate(itertools.pairwise(ring)):
            if a != b:
                x0, x1 = sorted((a.lon, b.lon))
                y0, y1 = sorted((a.lat, b.lat))
                edges.append(_E(x0, x1, y0, y1, r, n, k, a, b))
                n += 1
        counts.append(n)
    return edges, counts


def _conflict(e: _E, f: _E, counts: Sequence[int]) -> bool:
    """Whether two edges meet where a simple polygon's may not: anywhere, unless they
    follow each other in one ring, where only a doubling back (collinear overlap) is."""
    if e.ring == f.ring:
        n = counts[e.ring]
        i, j = sorted((e.nth, f.nth))
        if j - i == 1 or (i == 0 and j == n - 1):
            first, second = (e, f) if e.b == f.a else (f, e)
            turn = _orient(first.a, first.b, second.b)
            back = (first.b.lon - first.a.lon) * (second.b.lon - second.a.lon) + (
                first.b.lat - first.a.lat
            ) * (second.b.lat - second.a.lat)
            return turn == 0 and back < 0
    return segments_meet(e.a, e.b, f.a, f.b)


def find_crossing(rings: Sequence[Ring]) -> RingCrossing | None:
    """The first pair of edges (in the sweep's order) that meet where they may not, or
    None: every ring is simple and no two rings meet. A sweep over the edges sorted by
    longitude compares only edges whose bounding boxes overlap (a city fence of 1,000
    positions: a few milliseconds); GeoJSONError past :data:`MAX_PAIR_TESTS` pairs,
    which only contrived shapes reach (1,000 spikes meeting at a point), so that no input
    costs more than a few tens of milliseconds."""
    edges, counts = _edges_of(rings)
    edges.sort(key=lambda e: e.x0)
    active: list[_E] = []
    looked, tested = 0, 0
    for e in edges:
        looked += len(active)
        if looked > MAX_PAIR_TESTS or tested > MAX_PAIR_TESTS // 5:
            raise GeoJSONError(
                "$.geometry.coordinates",
                "too intricate to check: too many of its edges lie close together (many "
                "spikes meeting in one place?); simplify it",
            )
        active = [f for f in active if f.x1 >= e.x0]
        for f in active:
            if f.y1 >= e.y0 and e.y1 >= f.y0:
                tested += 1
                if _conflict(e, f, counts):
                    first, second = sorted((e, f), key=lambda x: (x.ring, x.edge))
                    return RingCrossing(first.ring, first.edge, second.ring, second.edge)
        active.append(e)
    return None


def _ring_contains(ring: Ring, p: Point) -> bool:
    inside = False
    for a, b in itertools.pairwise(ring):
        if (a.lat <= p.lat < b.lat or b.lat <= p.lat < a.lat) and p.lon < a.lon + (
            p.lat - a.lat
        ) * (b.lon - a.lon) / (b.lat - a.lat):
            inside = not inside
    return inside


def check_simple(shape: Shape, where: str = "$.geometry.coordinates") -> None:
    """GeoJSONError unless ``shape`` is a circle or a simple polygon: no ring crosses or
    touches itself or another ring, and each hole lies inside the exterior and outside the
    other holes (see the module docstring)."""
    if isinstance(shape, Circle):
        return
    rings = (shape.exterior, *shape.holes)
    crossing = find_crossing(rings)
    if crossing is not None:
        r1, e1, r2, e2 = crossing
        what = "crosses or touches itself" if r1 == r2 else f"meets ring {r2}"
        raise GeoJSONError(
            f"{where}[{r1}][{e1 + 1}]",
            f"ring {r1} {what}: its edge {e1} (positions {e1}-{e1 + 1}) meets edge {e2} "
            f"of ring {r2}; a geofence must be a simple polygon (draw a bow tie as two fences)",
        )
    for h, hole in enumerate(shape.holes, start=1):
        if not _ring_contains(shape.exterior, hole[0]):
            raise GeoJSONError(f"{where}[{h}]", f"hole {h} is not inside the exterior ring")
        for o, other in enumerate(shape.holes, start=1):
            if o != h and _ring_contains(other, hole[0]):
                raise GeoJSONError(f"{where}[{h}]", f"hole {h} lies inside hole {o}")


def shape_to_geojson(shape: Shape, properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A GeoJSON Feature for ``shape`` (what :func:`shape_from_geojson` reads back)."""
    props = dict(properties or {})
    if isinstance(shape, Circle):
        props["radius_m"] = shape.radius_m
        geometry: dict[str, Any] = {"type": "Point", "coordinates": list(shape.center)}
    else:
        rings = (shape.exterior, *shape.holes)
        geometry = {"type": "Polygon", "coordinates": [[list(p) for p in r] for r in rings]}
    return {"type": "Feature", "geometry": geometry, "properties": props}


#: the error a local projection can make at city scale, with room to spare: what
#: :func:`surely_outside` keeps away from a shape's box
_BOX_SLACK_M = BOX_SLACK_M = 50.0


def surely_outside(bbox: tuple[float, float, float, float], p: Point) -> bool:
    """True when ``p`` is more than 50 m outside the box (``(west, south, east, north)``,
    degrees) that encloses a shape, so certainly outside the shape: the cheap test that
    spares looking at a fence far from the vehicle (most of them, for most fixes)."""
    x0, y0, x1, y1 = bbox
    dy = max(y0 - p.lat, 0.0, p.lat - y1) * _M_PER_DEG
    if dy > _BOX_SLACK_M:
        return True
    dx = max(x0 - p.lon, 0.0, p.lon - x1) * _M_PER_DEG * math.cos(math.radians(p.lat))
    return dx * dx + dy * dy > _BOX_SLACK_M * _BOX_SLACK_M


#: how far from every vehicle a fence must be, and how near with its positions swapped,
#: for :func:`swapped_near` to call it a lat/lon mix-up
SWAP_SUSPECT_M: Final = 100_000.0


def _centre_and_reach(shape: Shape) -> tuple[Point, float]:
    """A point inside or near ``shape`` and the distance from it to the farthest part."""
    if isinstance(shape, Circle):
        return shape.center, shape.radius_m
    ring = shape.exterior[:-1]
    centre = Point(sum(p.lon for p in ring) / len(ring), sum(p.lat for p in ring) / len(ring))
    return centre, max(distance_m(centre, p) for p in ring)


def swapped_near(
    shape: Shape, places: Sequence[Point], within_m: float = SWAP_SUSPECT_M
) -> tuple[Point, float] | None:
    """Whether ``shape`` looks entered as [latitude, longitude]: all of it is farther than
    ``within_m`` from every one of ``places`` (where the account's vehicles are) while,
    with each position's two numbers swapped, it comes within ``within_m`` of one. Then the
    nearest such place and its distance from the swapped shape's centre; else None (also
    without places: nothing to compare with)."""
    if not places:
        return None
    centre, reach = _centre_and_reach(shape)
    if not -90 <= centre.lon <= 90:
        return None  # swapped, the longitude would be no latitude
    if min(distance_m(centre, p) for p in places) <= reach + within_m:
        return None
    swapped = Point(centre.lat, centre.lon)
    nearest = min(places, key=lambda p: distance_m(swapped, p))
    d = distance_m(swapped, nearest)
    return (nearest, d) if d <= reach + within_m else None
