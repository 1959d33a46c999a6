"""What a fleet manager still missed (issue 13), each test failing without its fix, through
the real API app on SQLite and PostgreSQL:

* an unknown query parameter was ignored on every route: ``GET /v1/alerts?severty=critical``
  answered the unfiltered list, which reads as filtered. Now 400 naming it, the accepted
  ones and the one probably meant; every route, from its declared parameters;
* a geofence entered as [latitude, longitude] (a Munich depot as [48.1, 11.5] lands in
  Somalia) was taken: now 422 ``coordinates_swapped`` with the positions it meant, unless
  ``confirm_far=true``;
* alerts could only be acknowledged one by one: ``POST /v1/alerts/acknowledge`` takes ids
  or a filter, bounded, audited once, with the authorization of one acknowledgement;
* a vehicle's trips list showed nothing of the trip it is on: ``in_progress`` has it,
  from the worker's trip state (start, distance and duration so far), and reports still
  count only finished trips.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Match

from gateway.api import ApiSettings, create_app
from gateway.api.query import accepted_query
from gateway.core.fleet.signals import IGNITION, LATITUDE, LONGITUDE, SPEED, Sample
from gateway.core.fleet.state import trip_state_to_json
from gateway.core.fleet.trips import TripSettings, recompute
from gateway.statedb import AccountRepository, StateDatabase
from gateway.statedb.audit import AuditLog
from gateway.statedb.fleet_log import AlertWrite, FleetLog, VinStep
from gateway.store import open_store
from tests.support.api import admin_client

PASSWORD = "fleet-ux-password-1"
VIN = "WVWZZZ1KZAW000011"  # the vans' first, in Munich
VIN2 = "WVWZZZ1KZAW000012"
OTHER_VIN = "WVWZZZ1KZAW000019"  # another organization's
MUNICH = (11.5755, 48.1372)  # [lon, lat]
T0 = 1_764_230_400_000


@dataclass
class World:
    api: TestClient
    db: StateDatabase
    org: int
    other: int
    manager: dict[str, str]
    viewer: dict[str, str]
    rival: dict[str, str]  # the other organization's manager

    def commit(self, steps: list[VinStep]) -> None:
        log = FleetLog(self.db)
        log.take_partitions("test", 1, now=1, ttl_ms=10**12)
        cursor = self.cursor = getattr(self, "cursor", 0) + 1
        log.commit_partition(0, "test", read_from=(cursor - 1, 0), cursor=(cursor, 0),
                             steps=steps, now=2)  # fmt: skip


def _user(api: TestClient, account: int, role: str, name: str) -> dict[str, str]:
    email = f"{name}@example.com"
    r = api.post("/v1/users", json={"email": email, "name": name, "role": role,
                                    "account_id": account, "password": PASSWORD})  # fmt: skip
    assert r.status_code == 201, r.text
    token = api.post(
        "/v1/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def _place(lon: float, lat: float) -> dict[str, Any]:
    """A rules state whose last place is (lon, lat), as the worker stores it."""
    return {"place": [lon, lat]}


@pytest.fixture
def world(state_db_url: str, tmp_path: Path) -> Iterator[World]:
    open_store(tmp_path / "telemetry.db").close()
    settings = ApiSettings(db_path=tmp_path / "telemetry.db", state_db_url=state_db_url,
                           fleet_worker=None)  # fmt: skip
    with admin_client(settings) as api:
        db = StateDatabase(state_db_url)
        accounts = AccountRepository(db)
        org = accounts.create_account("organization", "vans", now=1).id
        other = accounts.create_account("organization", "trucks", now=1).id
        for vin, account in ((VIN, org), (VIN2, org), (OTHER_VIN, other)):
            accounts.provision_vehicle(
                vin=vin, account_id=account, label=None, mqtt_password_hash=None,
                provisioned_by=None, now=1,
            )  # fmt: skip
        w = World(api, db, org, other, _user(api, org, "fleet_manager", "ana"),
                  _user(api, org, "fleet_viewer", "vic"),
                  _user(api, other, "fleet_manager", "rita"))  # fmt: skip
        try:
            yield w
        finally:
            db.dispose()


def _alerts(w: World, vin: str, account: int, n: int, *, kind: str = "overspeed") -> None:
    alerts = [AlertWrite("opened", kind, f"{kind}:{i}", "critical" if i % 2 else "warning",
                         T0 + i * 1000, None, {}) for i in range(n)]  # fmt: skip
    w.commit([VinStep(vin, 1, account, {}, {}, alerts=alerts)])


# --- 1. unknown query parameters --------------------------------------------------------------


def test_a_misspelt_filter_is_refused_naming_what_was_meant(world: World) -> None:
    _alerts(world, VIN, world.org, 4)
    api, h = world.api, world.manager
    assert len(api.get("/v1/alerts", headers=h).json()["items"]) == 4
    assert len(api.get("/v1/alerts?severity=critical", headers=h).json()["items"]) == 2
    r = api.get("/v1/alerts?severty=critical", headers=h)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "unknown_query_parameter"
    assert "'severty' (did you mean 'severity'?)" in error["message"]
    assert (
        "it takes account_id, acknowledged, cursor, end, fleet_id, kind, limit,"
        in (error["message"])
    )
    assert error["details"] == [{
        "loc": ["query", "severty"], "type": "unknown_query_parameter", "input": None,
        "msg": "unknown query parameter 'severty' (did you mean 'severity'?)",
    }]  # fmt: skip
    # several at once, each named; one far from every name gets no guess
    r = api.get("/v1/trips?vim=x&zzz=1&limit=5", headers=h)
    assert r.status_code == 400, r.text
    msgs = [d["msg"] for d in r.json()["error"]["details"]]
    assert msgs == ["unknown query parameter 'vim' (did you mean 'vin'?)",
                    "unknown query parameter 'zzz'"]  # fmt: skip
    # a route without query parameters says so; HEAD is checked like GET
    r = api.get("/v1/me?verbose=1", headers=h)
    assert r.status_code == 400, r.text
    assert "it takes none" in r.json()["error"]["message"]
    assert api.head("/v1/alerts?severty=critical", headers=h).status_code == 400


def test_every_api_route_refuses_an_unknown_query_parameter(world: World) -> None:
    """Once, for every route, from what it declares: also before authentication (a
    request's shape is checked first) and for a POST, which changes nothing then."""
    routes = [r for r in world.api.app.state.api_routes if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
    assert len(routes) > 100
    for route in routes:
        path = re.sub(r"\{vin\}", VIN, route.path)
        path = re.sub(r"\{[^}]+\}", "1", path)
        for method in sorted(route.methods or ()):
            r = world.api.request(method, path + "?not_a_parameter=1", headers=world.manager)
            assert r.status_code == 400, f"{method} {route.path}: {r.status_code} {r.text}"
            assert r.json()["error"]["code"] == "unknown_query_parameter"
    # the dashboard's pages read their query in the browser: not refused
    assert world.api.get("/login?next=/alerts&expired=1").status_code == 200


#: where the API is called with a query: the dashboard, the simulator, the benchmarks,
#: the README and the docs
_CALLERS = ("README.md", "docs", "gateway/api/webui/app.js", "gateway/bench", "device_sim",
            "scripts", "dashboards")  # fmt: skip
_QUERY = re.compile(r"(/v1/[A-Za-z0-9_{}$/.\-]*)\?((?:[A-Za-z_][A-Za-z0-9_]*=[^&\s\"'`]*&?)+)")


def test_every_example_and_caller_sends_only_known_parameters(tmp_path: Path) -> None:
    root = Path(__file__).parent.parent
    app = create_app(ApiSettings(tmp_path / "telemetry.db", fleet_worker=None))
    routes = [r for r in app.state.api_routes if isinstance(r, APIRoute)]
    files = [p for c in _CALLERS for p in ([root / c] if (root / c).is_file()
             else (root / c).rglob("*")) if p.is_file() and p.suffix in
             (".md", ".js", ".py", ".sh", ".json", ".yml", ".yaml", ".toml")]  # fmt: skip
    checked, wrong = 0, []
    for f in files:
        for m in _QUERY.finditer(f.read_text(encoding="utf-8", errors="replace")):
            path = re.sub(r"\$\{[^}]*\}|\{[^}]*\}|\$[A-Za-z_]+", "1", m.group(1))
            names = re.findall(r"(?:^|&)([A-Za-z_][A-Za-z0-9_]*)=", m.group(2))
            scope = {"type": "http", "path": path, "root_path": ""}
            taken = [
                accepted_query(r)
                for r in routes
                for method in r.methods or ()
                if r.matches({**scope, "method": method})[0] is Match.FULL
            ]
            if not taken:
                continue
            checked += 1
            known = frozenset().union(*taken)
            wrong += [f"{f.relative_to(root)}: {m.group(0)} ({n})" for n in names if n not in known]
    assert checked >= 20  # README's, the dashboard's, the benchmarks' (20 when written)
    assert wrong == []


# --- 2. swapped coordinates -------------------------------------------------------------------


def _circle(lon: float, lat: float, name: str = "depot") -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"name": name, "radius_m": 200}}  # fmt: skip


def _square(lon: float, lat: float) -> dict[str, Any]:
    d = 0.01
    ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"name": "yard"}}  # fmt: skip


def test_a_fence_with_latitude_and_longitude_swapped_is_refused_with_the_fix(
    world: World,
) -> None:
    api, h = world.api, world.manager
    # out of range: refused as before, with the hint
    r = api.post("/v1/geofences", json=_circle(11.5, 148.1), headers=h)
    assert r.status_code == 422, r.text
    assert "swapped?" in r.text
    # no vehicle has a position yet: nothing to compare with, taken
    r = api.post("/v1/geofences", json=_circle(48.1372, 11.5755, "early"), headers=h)
    assert r.status_code == 201, r.text
    world.commit([VinStep(VIN, 1, world.org, _place(*MUNICH), {}),
                  VinStep(VIN2, 1, world.org, _place(11.60, 48.15), {}),
                  VinStep(OTHER_VIN, 1, world.other, _place(45.3, 2.05), {})])  # fmt: skip
    for fence in (_circle(48.1372, 11.5755), _square(48.13, 11.57)):
        r = api.post("/v1/geofences", json=fence, headers=h)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "coordinates_swapped"
        assert error["details"][0]["loc"] == ["body", "geometry", "coordinates"]
        assert "[longitude, latitude]" in error["message"]
        assert "?confirm_far=true" in error["message"]
    r = api.post("/v1/geofences", json=_circle(48.1372, 11.5755), headers=h)
    assert "would be [11.5755, 48.1372], not [48.1372, 11.5755]" in r.json()["error"]["message"]
    # the right order is taken; so is a far fence that is no mix-up (Hamburg: swapped, it
    # is in the Sahara, near no vehicle), and a swapped-looking one confirmed
    assert api.post("/v1/geofences", json=_circle(*MUNICH), headers=h).status_code == 201
    assert api.post("/v1/geofences", json=_circle(9.99, 53.55), headers=h).status_code == 201
    r = api.post("/v1/geofences?confirm_far=true", json=_circle(48.1372, 11.5755), headers=h)
    assert r.status_code == 201, r.text
    # a replacement is checked the same way
    fence = r.json()["id"]
    r = api.put(f"/v1/geofences/{fence}", json=_square(48.13, 11.57), headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "coordinates_swapped"
    # only the account's own vehicles count: the other organization's truck near the
    # swapped Munich place (in Somalia) does not make a Somali fence of the rival's suspect
    r = api.post("/v1/geofences", json=_circle(45.3, 2.05), headers=world.rival)
    assert r.status_code == 201, r.text


# --- 3. bulk acknowledge ------------------------------------------------------------------------


def _audit(w: World, action: str) -> list[Any]:
    return AuditLog(w.db).query(action=action, limit=1000)


def test_alerts_are_acknowledged_by_ids_or_by_filter_once_audited(world: World) -> None:
    api, h = world.api, world.manager
    _alerts(world, VIN, world.org, 6)
    _alerts(world, VIN2, world.org, 3, kind="idling")
    _alerts(world, OTHER_VIN, world.other, 2)
    ours = api.get("/v1/alerts?limit=100", headers=h).json()["items"]
    theirs = api.get("/v1/alerts", headers=world.rival).json()["items"]
    first = api.post(f"/v1/alerts/{ours[0]['id']}/acknowledge", headers=h)
    assert first.status_code == 200
    ids = [a["id"] for a in ours if a["vin"] == VIN]
    r = api.post("/v1/alerts/acknowledge", json={"ids": ids}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["more"] is False
    assert sorted(body["acknowledged"] + body["already_acknowledged"]) == sorted(ids)
    assert body["already_acknowledged"] == ([ours[0]["id"]] if ours[0]["vin"] == VIN else [])
    assert len(_audit(world, "alert_acknowledge_many")) == 1  # one entry, not one per alert
    left = api.get("/v1/alerts?acknowledged=false", headers=h).json()["items"]
    assert {a["vin"] for a in left} <= {VIN2}
    # by filter: what GET /v1/alerts would list with it, not yet acknowledged
    r = api.post("/v1/alerts/acknowledge", json={"filter": {"kind": "idling"}}, headers=h)
    assert r.status_code == 200, r.text
    assert len(r.json()["acknowledged"]) == len([a for a in left if a["kind"] == "idling"])
    assert api.get("/v1/alerts?acknowledged=false", headers=h).json()["items"] == []
    assert len(_audit(world, "alert_acknowledge_many")) == 2
    # authorization as for one: a viewer 403, another organization's alert 404 (and then
    # nothing is acknowledged, not even the caller's own)
    r = api.post("/v1/alerts/acknowledge", json={"ids": ids[:1]}, headers=world.viewer)
    assert r.status_code == 403, r.text
    r = api.post("/v1/alerts/acknowledge", json={"ids": [theirs[0]["id"]]}, headers=h)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "alert_not_found"
    r = api.post("/v1/alerts/acknowledge", json={"ids": [theirs[0]["id"]]}, headers=world.rival)
    assert r.status_code == 200
    r = api.post("/v1/alerts/acknowledge", json={"ids": [theirs[1]["id"], 10**6]},
                 headers=world.rival)  # fmt: skip
    assert r.status_code == 404
    assert str(10**6) in r.json()["error"]["message"]
    assert api.get(f"/v1/alerts?vin={OTHER_VIN}&acknowledged=false",
                   headers=world.rival).json()["items"] != []  # fmt: skip
    r = api.post("/v1/alerts/acknowledge", json={"filter": {"vin": OTHER_VIN}}, headers=h)
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, "not both and not neither"),
        ({"ids": [1], "filter": {}}, "not both and not neither"),
        ({"ids": []}, "at least 1"),
        ({"ids": list(range(1, 1002))}, "at most 1000"),
        ({"ids": [0]}, "greater than or equal to 1"),
        ({"filter": {"severty": "critical"}}, "Extra inputs are not permitted"),
        ({"filter": {"start": T0, "end": T0 - 1}}, "start must be before end"),
    ],
)
def test_a_bulk_acknowledgement_is_bounded(world: World, body: Any, where: str) -> None:
    r = world.api.post("/v1/alerts/acknowledge", json=body, headers=world.manager)
    assert r.status_code == 422, r.text
    assert where in r.json()["error"]["message"]


def test_a_filter_acknowledges_at_most_a_thousand_and_says_more_remain(world: World) -> None:
    _alerts(world, VIN, world.org, 1005)
    r = world.api.post("/v1/alerts/acknowledge", json={"filter": {"vin": VIN}},
                       headers=world.manager)  # fmt: skip
    assert r.status_code == 200, r.text
    assert (len(r.json()["acknowledged"]), r.json()["more"]) == (1000, True)
    r = world.api.post("/v1/alerts/acknowledge", json={"filter": {"vin": VIN}},
                       headers=world.manager)  # fmt: skip
    assert (len(r.json()["acknowledged"]), r.json()["more"]) == (5, False)


# --- 4. the trip in progress ------------------------------------------------------------------


def _driving(minutes: int) -> list[Sample]:
    """A sample a second: ignition on, 36 km/h north from Munich (10 m a second)."""
    lon, lat = MUNICH
    return [
        Sample(
            T0 + s * 1000,
            {IGNITION: "ON", SPEED: 36.0, LONGITUDE: lon, LATITUDE: lat + s * 10 / 111_195},
        )
        for s in range(minutes * 60 + 1)
    ]


def test_a_vehicles_trip_list_shows_the_trip_under_way_and_reports_do_not_count_it(
    world: World,
) -> None:
    api, h = world.api, world.manager
    r = api.get(f"/v1/trips?vin={VIN}", headers=h)
    assert r.status_code == 200
    assert r.json()["in_progress"] is None
    state = recompute(_driving(5), TripSettings()).state
    world.commit([VinStep(VIN, 1, world.org, {}, trip_state_to_json(state))])
    body = api.get(f"/v1/trips?vin={VIN}", headers=h).json()
    assert body["items"] == []
    running = body["in_progress"]
    assert running["in_progress"] is True
    assert running["vin"] == VIN
    assert running["start_at"] == T0
    assert running["last_at"] == T0 + 300_000
    assert running["duration_ms"] == 300_000
    assert running["distance_m"] == pytest.approx(3000, rel=0.01)
    assert running["start_place"] == pytest.approx(list(MUNICH))
    assert running["start_at_iso"] == "2025-11-27T08:00:00.000Z"
    # a range that it did not start in, a later page, or a fleet-wide list: none
    assert api.get(f"/v1/trips?vin={VIN}&start={T0 + 1}", headers=h).json()["in_progress"] is None
    assert api.get("/v1/trips", headers=h).json()["in_progress"] is None
    # another organization sees no trip of this vehicle at all
    assert api.get(f"/v1/trips?vin={VIN}", headers=world.rival).status_code == 404
    # the reports count finished trips only
    report = api.get(f"/v1/reports/vehicles?vin={VIN}&start={T0 - 86_400_000}"
                     f"&end={T0 + 86_400_000}", headers=h).json()  # fmt: skip
    assert report["rows"] == [] or sum(t["trips"] for t in report["totals"]) == 0
