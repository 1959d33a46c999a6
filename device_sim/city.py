"""A small road network of central Munich, shipped as Python data, and routing on it.

The network is an undirected graph: nodes are real squares and intersections (approximate
WGS 84 coordinates, good to some tens of metres), edges are the streets between them with
their name and a speed limit in km/h (30, 50 or 60). It covers the Altstadtring and the old
town, the Hauptbahnhof, the Maxvorstadt (Königsplatz, Karolinenplatz), Ludwigstraße and
Leopoldstraße up to the Münchner Freiheit, Schwabing, the Isar bridges to Haidhausen and
Bogenhausen, the Gärtnerplatz quarter, the Theresienwiese and the Großmarkthalle in Sendling.

It is a demo map, not a navigation map: one-way streets, turn restrictions and the
pedestrian zone's exact extent are ignored (the old town is reached through the streets cars
may use: Tal, Dienerstraße, Residenzstraße, Maximilianstraße), and an edge is a straight line
between its two nodes. Heights are not modelled per node: the whole map sits at
:attr:`RoadNetwork.elevation_m`.

Geometry is spherical (haversine distance, initial great-circle bearing); positions along an
edge are interpolated linearly in latitude and longitude, which is exact enough for edges of
a few hundred metres.

Routing is deterministic: Dijkstra breaks ties by node name, and :func:`random_route` draws
only from the ``random.Random`` it is given.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "DEPOT",
    "EARTH_RADIUS_M",
    "MUNICH",
    "Edge",
    "Node",
    "RoadNetwork",
    "haversine_m",
    "path_length_m",
    "random_route",
    "shortest_path",
]

#: mean Earth radius (IUGG), metres
EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS 84 points (degrees)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _initial_bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


@dataclass(frozen=True, slots=True)
class Node:
    """A named point of the network (a square or an intersection)."""

    name: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Edge:
    """An undirected street segment between two nodes."""

    a: str
    b: str
    name: str
    speed_limit_kmh: int

    def other(self, node: str) -> str:
        """The node at the other end from ``node``."""
        if node == self.a:
            return self.b
        if node == self.b:
            return self.a
        raise KeyError(f"{node!r} is not an end of the edge {self.a!r} - {self.b!r}")


@dataclass(frozen=True, slots=True, eq=False)
class RoadNetwork:
    """An undirected road graph. Immutable; compared and hashed by identity.

    ``nodes`` maps a node's name to the node; ``edges`` lists every street segment once.
    Construction checks that edges join known, distinct nodes, that no pair of nodes is
    joined twice and that speed limits are positive.
    """

    nodes: Mapping[str, Node]
    edges: tuple[Edge, ...]
    #: height above sea level of the whole map, metres
    elevation_m: float = 0.0
    _adjacency: Mapping[str, tuple[str, ...]] = field(init=False, repr=False)
    _by_pair: Mapping[tuple[str, str], Edge] = field(init=False, repr=False)
    _lengths: Mapping[tuple[str, str], float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        nodes = dict(self.nodes)
        for key, node in nodes.items():
            if key != node.name:
                raise ValueError(f"node key {key!r} differs from the node's name {node.name!r}")
        adjacency: dict[str, list[str]] = {name: [] for name in nodes}
        by_pair: dict[tuple[str, str], Edge] = {}
        lengths: dict[tuple[str, str], float] = {}
        for edge in self.edges:
            for end in (edge.a, edge.b):
                if end not in nodes:
                    raise ValueError(f"edge {edge.name!r} ends at the unknown node {end!r}")
            if edge.a == edge.b:
                raise ValueError(f"edge {edge.name!r} is a loop at {edge.a!r}")
            if edge.speed_limit_kmh <= 0:
                raise ValueError(f"edge {edge.name!r} has speed limit {edge.speed_limit_kmh}")
            if (edge.a, edge.b) in by_pair:
                raise ValueError(f"{edge.a!r} and {edge.b!r} are joined twice")
            a, b = nodes[edge.a], nodes[edge.b]
            length = haversine_m(a.lat, a.lon, b.lat, b.lon)
            for x, y in ((edge.a, edge.b), (edge.b, edge.a)):
                by_pair[x, y] = edge
                lengths[x, y] = length
                adjacency[x].append(y)
        object.__setattr__(self, "nodes", MappingProxyType(nodes))
        object.__setattr__(self, "edges", tuple(self.edges))
        object.__setattr__(
            self,
            "_adjacency",
            MappingProxyType({name: tuple(sorted(ns)) for name, ns in adjacency.items()}),
        )
        object.__setattr__(self, "_by_pair", MappingProxyType(by_pair))
        object.__setattr__(self, "_lengths", MappingProxyType(lengths))

    @classmethod
    def build(
        cls, nodes: Iterable[Node], edges: Iterable[Edge], *, elevation_m: float = 0.0
    ) -> RoadNetwork:
        """Build a network from node and edge values (node names must be unique)."""
        by_name: dict[str, Node] = {}
        for node in nodes:
            if node.name in by_name:
                raise ValueError(f"duplicate node {node.name!r}")
            by_name[node.name] = node
        return cls(by_name, tuple(edges), elevation_m)

    def _node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"unknown node {name!r}") from None

    def neighbours(self, node: str) -> tuple[str, ...]:
        """Nodes one edge away from ``node``, sorted by name."""
        self._node(node)
        return self._adjacency[node]

    def edge(self, a: str, b: str) -> Edge:
        """The edge joining ``a`` and ``b`` (either order); ``KeyError`` if there is none."""
        try:
            return self._by_pair[a, b]
        except KeyError:
            raise KeyError(f"no edge between {a!r} and {b!r}") from None

    def edge_length_m(self, a: str, b: str) -> float:
        """Length of the edge ``a`` - ``b`` in metres (haversine); ``KeyError`` if no edge."""
        try:
            return self._lengths[a, b]
        except KeyError:
            raise KeyError(f"no edge between {a!r} and {b!r}") from None

    def bearing_deg(self, a: str, b: str) -> float:
        """Initial bearing from node ``a`` to node ``b``: degrees clockwise from true north,
        in [0, 360)."""
        na, nb = self._node(a), self._node(b)
        return _initial_bearing_deg(na.lat, na.lon, nb.lat, nb.lon)

    def interpolate(self, a: str, b: str, fraction: float) -> tuple[float, float]:
        """``(lat, lon)`` at ``fraction`` (0 at ``a``, 1 at ``b``) of the straight line a-b."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be within [0, 1], got {fraction}")
        na, nb = self._node(a), self._node(b)
        return (
            na.lat + (nb.lat - na.lat) * fraction,
            na.lon + (nb.lon - na.lon) * fraction,
        )


def path_length_m(net: RoadNetwork, path: Sequence[str]) -> float:
    """Total length of a path given as consecutive nodes (each pair must be an edge)."""
    return sum(net.edge_length_m(a, b) for a, b in itertools.pairwise(path))


def shortest_path(net: RoadNetwork, a: str, b: str) -> tuple[str, ...]:
    """The shortest path by length from ``a`` to ``b``, both included (Dijkstra).

    ``(a,)`` when ``a == b``. Ties are broken by node name, so the answer is deterministic.
    Raises ``KeyError`` for an unknown node and ``ValueError`` if ``b`` is unreachable.
    """
    net.neighbours(a)
    net.neighbours(b)
    dist: dict[str, float] = {a: 0.0}
    previous: dict[str, str] = {}
    done: set[str] = set()
    queue: list[tuple[float, str]] = [(0.0, a)]
    while queue:
        d, node = heapq.heappop(queue)
        if node in done:
            continue
        if node == b:
            break
        done.add(node)
        for nxt in net.neighbours(node):
            nd = d + net.edge_length_m(node, nxt)
            if nd < dist.get(nxt, math.inf):
                dist[nxt] = nd
                previous[nxt] = node
                heapq.heappush(queue, (nd, nxt))
    if b not in dist:
        raise ValueError(f"{b!r} is unreachable from {a!r}")
    path = [b]
    while path[-1] != a:
        path.append(previous[path[-1]])
    return tuple(reversed(path))


def random_route(
    net: RoadNetwork, rng: random.Random, start: str, min_length_m: float
) -> tuple[str, ...]:
    """A drivable route from ``start`` at least ``min_length_m`` long, drawn from ``rng``.

    The route chains shortest paths to random destinations until it is long enough. A new
    leg avoids turning straight back along the street just driven where it can, so routes
    read like errands, not shuttles. It always has at least one edge and never repeats a
    node twice in a row.
    """
    if min_length_m < 0 or not math.isfinite(min_length_m):
        raise ValueError(f"min_length_m must be a finite number >= 0, got {min_length_m}")
    if not net.neighbours(start):
        raise ValueError(f"{start!r} has no streets")
    names = sorted(net.nodes)
    route: list[str] = [start]
    length = 0.0
    while length < min_length_m or len(route) < 2:
        here = route[-1]
        came_from = route[-2] if len(route) >= 2 else None
        leg: tuple[str, ...] = ()
        for _ in range(8):
            candidate = shortest_path(net, here, rng.choice(names))
            if len(candidate) < 2:
                continue
            leg = candidate
            if candidate[1] != came_from:
                break
        if not leg:
            continue
        route.extend(leg[1:])
        length += path_length_m(net, leg)
    return tuple(route)


# --- central Munich -----------------------------------------------------------------------

#: name, latitude, longitude (WGS 84, approximate)
_MUNICH_NODES: tuple[tuple[str, float, float], ...] = (
    # Altstadtring and old town
    ("Karlsplatz (Stachus)", 48.13905, 11.56560),
    ("Lenbachplatz", 48.14060, 11.56900),
    ("Maximiliansplatz", 48.14200, 11.57170),
    ("Platz der Opfer des Nationalsozialismus", 48.14330, 11.57400),
    ("Odeonsplatz", 48.14250, 11.57740),
    ("Ludwigstraße / Von-der-Tann-Straße", 48.14440, 11.57830),
    ("Prinz-Carl-Palais", 48.14340, 11.58460),
    ("Haus der Kunst", 48.14380, 11.58640),
    ("Maximilianstraße / Altstadtring", 48.13930, 11.58420),
    ("Max-II-Denkmal", 48.13780, 11.58720),
    ("Isartor", 48.13520, 11.58170),
    ("Marienplatz", 48.13740, 11.57550),
    ("Max-Joseph-Platz", 48.13990, 11.57830),
    ("Viktualienmarkt (Frauenstraße)", 48.13370, 11.57680),
    ("Sendlinger Tor", 48.13370, 11.56720),
    ("Sonnenstraße / Schwanthalerstraße", 48.13650, 11.56490),
    # Hauptbahnhof and Maxvorstadt
    ("Hauptbahnhof (Bahnhofplatz)", 48.14080, 11.56050),
    ("Hauptbahnhof Süd (Bayerstraße)", 48.13970, 11.56160),
    ("Hauptbahnhof Nord (Arnulfstraße)", 48.14260, 11.55900),
    ("Elisenstraße / Luisenstraße", 48.14230, 11.56370),
    ("Königsplatz", 48.14580, 11.56520),
    ("Karolinenplatz", 48.14510, 11.56920),
    ("Stiglmaierplatz", 48.14760, 11.55860),
    ("Theresienstraße / Luisenstraße", 48.14960, 11.56470),
    ("Theresienstraße / Barer Straße", 48.14930, 11.57000),
    ("Ludwigskirche (Ludwigstraße / Theresienstraße)", 48.14840, 11.57990),
    ("Geschwister-Scholl-Platz (Universität)", 48.15060, 11.58050),
    ("Siegestor", 48.15240, 11.58210),
    # Schwabing
    ("Leopoldstraße / Giselastraße", 48.15640, 11.58430),
    ("Leopoldstraße / Hohenzollernstraße", 48.15980, 11.58560),
    ("Münchner Freiheit", 48.16210, 11.58650),
    ("Elisabethplatz", 48.15700, 11.57400),
    ("Kurfürstenplatz", 48.16000, 11.57570),
    ("Hohenzollernplatz", 48.16150, 11.56910),
    ("Josephsplatz", 48.15550, 11.56900),
    ("Königinstraße / Veterinärstraße", 48.15100, 11.58580),
    ("Königinstraße / Giselastraße", 48.15620, 11.58900),
    # Lehel, Haidhausen, Bogenhausen
    ("Prinzregentenstraße / Widenmayerstraße", 48.14300, 11.59050),
    ("Friedensengel", 48.14170, 11.59460),
    ("Prinzregentenstraße / Ismaninger Straße", 48.14010, 11.60040),
    ("Prinzregentenplatz", 48.13890, 11.60550),
    ("Maximilianeum", 48.13640, 11.59450),
    ("Max-Weber-Platz", 48.13560, 11.59880),
    ("Ludwigsbrücke (Zweibrückenstraße)", 48.13280, 11.58550),
    ("Gasteig (Rosenheimer Straße)", 48.13110, 11.59140),
    ("Rosenheimer Platz", 48.12890, 11.59370),
    # Isarvorstadt and Gärtnerplatz
    ("Gärtnerplatz", 48.13160, 11.57590),
    ("Müllerstraße / Fraunhoferstraße", 48.13020, 11.57240),
    ("Fraunhoferstraße / Klenzestraße", 48.13010, 11.57580),
    ("Reichenbachbrücke", 48.12880, 11.57930),
    # West: Hackerbrücke, Theresienwiese, Sendling
    ("Hackerbrücke Nord (Arnulfstraße)", 48.14270, 11.54900),
    ("Hackerbrücke Süd (Landsberger Straße)", 48.13980, 11.54860),
    ("Bayerstraße / Paul-Heyse-Straße", 48.13960, 11.55420),
    ("Schwanthalerstraße / Goethestraße", 48.13700, 11.55850),
    ("St.-Pauls-Platz (Theresienwiese Nord)", 48.13530, 11.55030),
    ("Theresienhöhe / Schwanthalerstraße", 48.13650, 11.54370),
    ("Bavaria (Theresienhöhe)", 48.13060, 11.54530),
    ("Kaiser-Ludwig-Platz", 48.13070, 11.55430),
    ("Goetheplatz", 48.12910, 11.55730),
    ("Poccistraße", 48.12540, 11.54680),
    ("Thalkirchner Straße / Kapuzinerstraße", 48.12400, 11.56380),
    ("Großmarkthalle", 48.11590, 11.55600),
    ("Baldeplatz", 48.12330, 11.57250),
)

#: node, node, street, speed limit in km/h
_MUNICH_EDGES: tuple[tuple[str, str, str, int], ...] = (
    # Altstadtring, clockwise from the Stachus
    ("Karlsplatz (Stachus)", "Lenbachplatz", "Altstadtring (Lenbachplatz)", 50),
    ("Lenbachplatz", "Maximiliansplatz", "Altstadtring (Maximiliansplatz)", 50),
    (
        "Maximiliansplatz",
        "Platz der Opfer des Nationalsozialismus",
        "Altstadtring (Maximiliansplatz)",
        50,
    ),
    (
        "Platz der Opfer des Nationalsozialismus",
        "Ludwigstraße / Von-der-Tann-Straße",
        "Oskar-von-Miller-Ring",
        50,
    ),
    ("Ludwigstraße / Von-der-Tann-Straße", "Prinz-Carl-Palais", "Von-der-Tann-Straße", 50),
    ("Prinz-Carl-Palais", "Maximilianstraße / Altstadtring", "Franz-Josef-Strauß-Ring", 50),
    ("Maximilianstraße / Altstadtring", "Isartor", "Thomas-Wimmer-Ring", 50),
    ("Isartor", "Viktualienmarkt (Frauenstraße)", "Frauenstraße", 50),
    ("Viktualienmarkt (Frauenstraße)", "Sendlinger Tor", "Blumenstraße", 50),
    ("Sendlinger Tor", "Sonnenstraße / Schwanthalerstraße", "Sonnenstraße", 50),
    ("Sonnenstraße / Schwanthalerstraße", "Karlsplatz (Stachus)", "Sonnenstraße", 50),
    # old town
    ("Isartor", "Marienplatz", "Tal", 30),
    ("Marienplatz", "Max-Joseph-Platz", "Dienerstraße", 30),
    ("Max-Joseph-Platz", "Odeonsplatz", "Residenzstraße", 30),
    ("Max-Joseph-Platz", "Maximilianstraße / Altstadtring", "Maximilianstraße", 30),
    ("Maximilianstraße / Altstadtring", "Max-II-Denkmal", "Maximilianstraße", 50),
    ("Odeonsplatz", "Ludwigstraße / Von-der-Tann-Straße", "Ludwigstraße", 50),
    ("Odeonsplatz", "Platz der Opfer des Nationalsozialismus", "Brienner Straße", 30),
    # Hauptbahnhof
    ("Karlsplatz (Stachus)", "Hauptbahnhof Süd (Bayerstraße)", "Bayerstraße", 50),
    ("Hauptbahnhof Süd (Bayerstraße)", "Hauptbahnhof (Bahnhofplatz)", "Bahnhofplatz", 30),
    ("Hauptbahnhof (Bahnhofplatz)", "Hauptbahnhof Nord (Arnulfstraße)", "Bahnhofplatz", 30),
    ("Hauptbahnhof (Bahnhofplatz)", "Elisenstraße / Luisenstraße", "Elisenstraße", 50),
    ("Elisenstraße / Luisenstraße", "Lenbachplatz", "Elisenstraße", 50),
    ("Hauptbahnhof Süd (Bayerstraße)", "Bayerstraße / Paul-Heyse-Straße", "Bayerstraße", 50),
    (
        "Bayerstraße / Paul-Heyse-Straße",
        "Hackerbrücke Süd (Landsberger Straße)",
        "Bayerstraße",
        50,
    ),
    (
        "Hauptbahnhof Nord (Arnulfstraße)",
        "Hackerbrücke Nord (Arnulfstraße)",
        "Arnulfstraße",
        60,
    ),
    (
        "Hackerbrücke Nord (Arnulfstraße)",
        "Hackerbrücke Süd (Landsberger Straße)",
        "Hackerbrücke",
        50,
    ),
    ("Hauptbahnhof Nord (Arnulfstraße)", "Stiglmaierplatz", "Dachauer Straße", 50),
    # Maxvorstadt
    ("Stiglmaierplatz", "Königsplatz", "Brienner Straße", 50),
    ("Königsplatz", "Karolinenplatz", "Brienner Straße", 50),
    ("Karolinenplatz", "Platz der Opfer des Nationalsozialismus", "Brienner Straße", 50),
    ("Karolinenplatz", "Lenbachplatz", "Max-Joseph-Straße", 30),
    ("Elisenstraße / Luisenstraße", "Königsplatz", "Luisenstraße", 50),
    ("Königsplatz", "Theresienstraße / Luisenstraße", "Luisenstraße", 50),
    ("Stiglmaierplatz", "Theresienstraße / Luisenstraße", "Theresienstraße", 30),
    ("Theresienstraße / Luisenstraße", "Theresienstraße / Barer Straße", "Theresienstraße", 30),
    (
        "Theresienstraße / Barer Straße",
        "Ludwigskirche (Ludwigstraße / Theresienstraße)",
        "Theresienstraße",
        30,
    ),
    ("Karolinenplatz", "Theresienstraße / Barer Straße", "Barer Straße", 50),
    ("Theresienstraße / Barer Straße", "Elisabethplatz", "Barer Straße", 50),
    (
        "Ludwigstraße / Von-der-Tann-Straße",
        "Ludwigskirche (Ludwigstraße / Theresienstraße)",
        "Ludwigstraße",
        50,
    ),
    (
        "Ludwigskirche (Ludwigstraße / Theresienstraße)",
        "Geschwister-Scholl-Platz (Universität)",
        "Ludwigstraße",
        50,
    ),
    ("Geschwister-Scholl-Platz (Universität)", "Siegestor", "Ludwigstraße", 50),
    # Schwabing
    ("Siegestor", "Leopoldstraße / Giselastraße", "Leopoldstraße", 50),
    (
        "Leopoldstraße / Giselastraße",
        "Leopoldstraße / Hohenzollernstraße",
        "Leopoldstraße",
        50,
    ),
    ("Leopoldstraße / Hohenzollernstraße", "Münchner Freiheit", "Leopoldstraße", 50),
    ("Siegestor", "Josephsplatz", "Adalbertstraße", 30),
    ("Leopoldstraße / Giselastraße", "Elisabethplatz", "Franz-Joseph-Straße", 30),
    ("Elisabethplatz", "Kurfürstenplatz", "Kurfürstenstraße", 30),
    ("Kurfürstenplatz", "Leopoldstraße / Hohenzollernstraße", "Hohenzollernstraße", 30),
    ("Kurfürstenplatz", "Hohenzollernplatz", "Hohenzollernstraße", 30),
    ("Hohenzollernplatz", "Josephsplatz", "Tengstraße", 30),
    ("Josephsplatz", "Stiglmaierplatz", "Augustenstraße", 30),
    ("Josephsplatz", "Elisabethplatz", "Elisabethstraße", 30),
    ("Haus der Kunst", "Königinstraße / Veterinärstraße", "Königinstraße", 50),
    (
        "Königinstraße / Veterinärstraße",
        "Geschwister-Scholl-Platz (Universität)",
        "Veterinärstraße",
        30,
    ),
    ("Königinstraße / Veterinärstraße", "Königinstraße / Giselastraße", "Königinstraße", 50),
    ("Königinstraße / Giselastraße", "Leopoldstraße / Giselastraße", "Giselastraße", 30),
    # Lehel, the Isar bridges, Haidhausen and Bogenhausen
    ("Prinz-Carl-Palais", "Haus der Kunst", "Prinzregentenstraße", 50),
    (
        "Haus der Kunst",
        "Prinzregentenstraße / Widenmayerstraße",
        "Prinzregentenstraße",
        50,
    ),
    ("Prinzregentenstraße / Widenmayerstraße", "Friedensengel", "Luitpoldbrücke", 50),
    (
        "Friedensengel",
        "Prinzregentenstraße / Ismaninger Straße",
        "Prinzregentenstraße",
        60,
    ),
    (
        "Prinzregentenstraße / Ismaninger Straße",
        "Prinzregentenplatz",
        "Prinzregentenstraße",
        60,
    ),
    ("Prinzregentenstraße / Ismaninger Straße", "Max-Weber-Platz", "Ismaninger Straße", 50),
    ("Max-II-Denkmal", "Prinzregentenstraße / Widenmayerstraße", "Widenmayerstraße", 50),
    ("Max-II-Denkmal", "Maximilianeum", "Maximiliansbrücke", 50),
    ("Maximilianeum", "Max-Weber-Platz", "Max-Planck-Straße", 50),
    ("Max-II-Denkmal", "Ludwigsbrücke (Zweibrückenstraße)", "Steinsdorfstraße", 50),
    ("Isartor", "Ludwigsbrücke (Zweibrückenstraße)", "Zweibrückenstraße", 50),
    ("Ludwigsbrücke (Zweibrückenstraße)", "Gasteig (Rosenheimer Straße)", "Ludwigsbrücke", 50),
    ("Gasteig (Rosenheimer Straße)", "Rosenheimer Platz", "Rosenheimer Straße", 50),
    ("Gasteig (Rosenheimer Straße)", "Max-Weber-Platz", "Innere Wiener Straße", 50),
    ("Ludwigsbrücke (Zweibrückenstraße)", "Reichenbachbrücke", "Erhardtstraße", 50),
    # Gärtnerplatz quarter
    ("Viktualienmarkt (Frauenstraße)", "Gärtnerplatz", "Reichenbachstraße", 30),
    ("Gärtnerplatz", "Fraunhoferstraße / Klenzestraße", "Klenzestraße", 30),
    ("Sendlinger Tor", "Müllerstraße / Fraunhoferstraße", "Müllerstraße", 50),
    (
        "Müllerstraße / Fraunhoferstraße",
        "Fraunhoferstraße / Klenzestraße",
        "Fraunhoferstraße",
        30,
    ),
    ("Fraunhoferstraße / Klenzestraße", "Reichenbachbrücke", "Fraunhoferstraße", 30),
    # west and south: Theresienwiese, Sendling, the Großmarkthalle
    (
        "Sonnenstraße / Schwanthalerstraße",
        "Schwanthalerstraße / Goethestraße",
        "Schwanthalerstraße",
        30,
    ),
    (
        "Schwanthalerstraße / Goethestraße",
        "Theresienhöhe / Schwanthalerstraße",
        "Schwanthalerstraße",
        30,
    ),
    ("Hauptbahnhof Süd (Bayerstraße)", "Schwanthalerstraße / Goethestraße", "Goethestraße", 30),
    ("Schwanthalerstraße / Goethestraße", "Goetheplatz", "Goethestraße", 30),
    (
        "Bayerstraße / Paul-Heyse-Straße",
        "St.-Pauls-Platz (Theresienwiese Nord)",
        "Paul-Heyse-Straße",
        50,
    ),
    (
        "Hackerbrücke Süd (Landsberger Straße)",
        "Theresienhöhe / Schwanthalerstraße",
        "Theresienhöhe",
        50,
    ),
    (
        "Theresienhöhe / Schwanthalerstraße",
        "St.-Pauls-Platz (Theresienwiese Nord)",
        "Bavariaring",
        30,
    ),
    ("St.-Pauls-Platz (Theresienwiese Nord)", "Kaiser-Ludwig-Platz", "Bavariaring", 30),
    ("Kaiser-Ludwig-Platz", "Bavaria (Theresienhöhe)", "Bavariaring", 30),
    ("Theresienhöhe / Schwanthalerstraße", "Bavaria (Theresienhöhe)", "Theresienhöhe", 50),
    ("Kaiser-Ludwig-Platz", "Goetheplatz", "Mozartstraße", 30),
    ("Sendlinger Tor", "Goetheplatz", "Lindwurmstraße", 50),
    ("Goetheplatz", "Poccistraße", "Lindwurmstraße", 50),
    ("Bavaria (Theresienhöhe)", "Poccistraße", "Theresienhöhe", 50),
    ("Goetheplatz", "Thalkirchner Straße / Kapuzinerstraße", "Kapuzinerstraße", 50),
    ("Sendlinger Tor", "Thalkirchner Straße / Kapuzinerstraße", "Thalkirchner Straße", 50),
    ("Thalkirchner Straße / Kapuzinerstraße", "Großmarkthalle", "Thalkirchner Straße", 50),
    ("Poccistraße", "Großmarkthalle", "Implerstraße", 50),
    ("Thalkirchner Straße / Kapuzinerstraße", "Baldeplatz", "Kapuzinerstraße", 50),
    ("Baldeplatz", "Reichenbachbrücke", "Auenstraße", 30),
)

#: central Munich; the city centre lies about 520 m above sea level
MUNICH: RoadNetwork = RoadNetwork.build(
    (Node(name, lat, lon) for name, lat, lon in _MUNICH_NODES),
    (Edge(a, b, name, limit) for a, b, name, limit in _MUNICH_EDGES),
    elevation_m=520.0,
)

#: where delivery vans load: Munich's wholesale market hall in Sendling
DEPOT = "Großmarkthalle"
