"""The fleet routes under attack (issue 13): what a self-registered account sends to the
real API app, and what it must get back. Found by an outside probe, then by our own:

* no quota: a self-registered account could create millions of drivers, geofences and
  fleets; now 409 ``quota_exceeded`` saying the limit and how to raise it;
* a command's ``ttl_s`` of 1e-300 was accepted (stored as 0 ms: expired at birth);
  fractions, zero and booleans too; speed limits of 1e-300 km/h and rule thresholds of
  Infinity or 10**100 likewise;
* alerts and trips asked for a backwards range (start after end) answered an empty list;
* a self-intersecting polygon (a bow tie) was a valid geofence.

Each test fails without its fix. Everything talks to an app in this process (the real
routes, dependencies and state database), or to a real Mosquitto for the commands.
"""

from __future__ import annotations

import base64
import itertools
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.api import ApiSettings
from gateway.api.settings import FleetQuotas, parse_fleet_quotas
from gateway.broker import MosquittoProcess
from gateway.statedb.database import default_url
from tests.support.api import admin_client
from tests.support.commands_api import Api

PASSWORD = "fleet-abuse-password-1"
VIN = "WVWZZZ1JZXW000001"
#: assignment times: epoch milliseconds (a number below 10^11 is refused as seconds)
T0 = 1_764_230_400_000
QUOTAS = FleetQuotas(fleets=3, drivers=3, geofences=3, assignments=3, account_assignments=5)
_emails = itertools.count(1)


def _register(client: TestClient) -> dict[str, str]:
    """A self-registered private account's owner: anyone on the internet."""
    email = f"someone-{next(_emails)}@example.com"
    r = client.post(
        "/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "Someone"}
    )
    assert r.status_code == 202, r.text
    token = client.post(
        "/v1/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module (each test registers its own accounts)."""
    db = tmp_path_factory.mktemp("fleet-abuse") / "telemetry.db"
    settings = ApiSettings(db, fleet_worker=None, fleet_quotas=QUOTAS)
    with admin_client(settings) as client:
        client.headers.pop("Authorization")
        yield client


@pytest.fixture(scope="module")
def me(api: TestClient) -> dict[str, str]:
    """One self-registered account for the tests that need no fresh one (registering
    hashes a password: seconds on a loaded machine)."""
    return _register(api)


def _fence(name: str, ring: list[list[float]] | None = None) -> dict[str, Any]:
    ring = ring or [[11.0, 48.0], [11.01, 48.0], [11.01, 48.01], [11.0, 48.0]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"name": name},
    }


CREATE: dict[str, tuple[str, Any]] = {
    "fleets": ("/v1/fleets", lambda i: {"name": f"fleet {i}"}),
    "drivers": ("/v1/drivers", lambda i: {"name": f"driver {i}"}),
    "geofences": ("/v1/geofences", lambda i: _fence(f"fence {i}")),
}


# --- quotas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("what", sorted(CREATE))
def test_an_account_cannot_create_more_than_its_quota(api: TestClient, what: str) -> None:
    url, body = CREATE[what]
    me, other = _register(api), _register(api)
    account = api.get("/v1/me", headers=me).json()["user"]["account_id"]
    created = []
    for i in range(3):
        r = api.post(url, json=body(i), headers=me)
        assert r.status_code == 201, r.text
        created.append(r.json()["id"])
    r = api.post(url, json=body(3), headers=me)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert f"Account {account} has 3 {what}, the most allowed" in error["message"]
    assert "--fleet-quotas" in error["message"]
    assert "TELEMATICS_FLEET_QUOTAS" in error["message"]
    assert error["details"][0]["msg"] == f"at most 3 {what} per account"
    # the quota is the account's, not the installation's
    assert api.post(url, json=body(0), headers=other).status_code == 201
    # and one deleted makes room (drivers are not deleted: the quota stays)
    if what != "drivers":
        assert api.delete(f"{url}/{created[0]}", headers=me).status_code == 204
        assert api.post(url, json=body(4), headers=me).status_code == 201
    assert api.get(url, params={"limit": 1000}, headers=me).json()["next"] is None
    assert len(api.get(url, params={"limit": 1000}, headers=me).json()["items"]) == 3


def test_a_driver_cannot_have_more_assignments_than_the_quota(api: TestClient) -> None:
    """A self-registered owner provisions a vehicle and has one driver: without a quota,
    millions of assignments (each one looked up for every trip and alert)."""
    me = _register(api)
    assert api.post("/v1/vehicles", json={"vin": VIN}, headers=me).status_code == 201
    driver = api.post("/v1/drivers", json={"name": "d"}, headers=me).json()["id"]
    url = f"/v1/drivers/{driver}/assignments"
    for hour in range(3):
        r = api.post(url, json={"vin": VIN, "valid_from": T0 + hour * 3_600_000}, headers=me)
        assert r.status_code == 201, r.text
    r = api.post(url, json={"vin": VIN, "valid_from": T0 + 10**9}, headers=me)
    assert r.status_code == 409, r.text
    assert f"Driver {driver} has 3 assignments" in r.json()["error"]["message"]
    assert r.json()["error"]["details"][0]["msg"] == "at most 3 assignments per driver"
    first = api.get(url, headers=me).json()["items"][0]["id"]
    assert api.delete(f"{url}/{first}", headers=me).status_code == 204
    assert api.post(url, json={"vin": VIN, "valid_from": T0 + 10**9}, headers=me).status_code == 201


def test_an_organization_cannot_have_more_assignments_than_its_quota(api: TestClient) -> None:
    """Security review 2 (decision 0023): the quota was per driver only, so an account
    with 10,000 drivers could make 10^8 assignments. The account's drivers together have
    at most ``account_assignments``."""
    me = _register(api)
    vin = "WVWZZZ1JZXW000009"  # the module shares one app
    account = api.get("/v1/me", headers=me).json()["user"]["account_id"]
    assert api.post("/v1/vehicles", json={"vin": vin}, headers=me).status_code == 201
    drivers = [
        api.post("/v1/drivers", json={"name": f"d{i}"}, headers=me).json()["id"] for i in range(2)
    ]
    for driver, count in zip(drivers, (3, 2), strict=True):
        for hour in range(count):
            body = {"vin": vin, "valid_from": T0 + hour * 3_600_000}
            r = api.post(f"/v1/drivers/{driver}/assignments", json=body, headers=me)
            assert r.status_code == 201, r.text
    # the second driver has room of their own, the account has none
    url = f"/v1/drivers/{drivers[1]}/assignments"
    r = api.post(url, json={"vin": vin, "valid_from": T0 + 10**9}, headers=me)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert f"Account {account} has 5 assignments, the most allowed" in error["message"]
    assert "account_assignments=10" in error["message"]
    assert error["details"][0]["msg"] == "at most 5 assignments per account"
    # one deleted makes room
    first = api.get(url, headers=me).json()["items"][0]["id"]
    assert api.delete(f"{url}/{first}", headers=me).status_code == 204
    assert api.post(url, json={"vin": vin, "valid_from": T0 + 10**9}, headers=me).status_code == 201


def test_the_quotas_default_to_generous_numbers_and_parse_from_the_option() -> None:
    assert FleetQuotas() == FleetQuotas(
        fleets=500, drivers=10_000, geofences=1_000, assignments=10_000,
        account_assignments=1_000_000,
    )  # fmt: skip
    assert ApiSettings(Path("x.db")).fleet_quotas == FleetQuotas()
    assert parse_fleet_quotas("") == FleetQuotas()
    assert parse_fleet_quotas("fleets=2, geofences=off") == FleetQuotas(
        fleets=2, drivers=10_000, geofences=None, assignments=10_000
    )
    for bad in ("fleets", "fleets=0", "fleets=-1", "fleets=1e9", "vehicles=5", "fleets=2**80"):
        with pytest.raises(ValueError, match=r"fleets|NAME"):
            parse_fleet_quotas(bad)


# --- numbers: finite, bounded, whole where it matters -----------------------------------------


def _loc_of(r: Any) -> list[Any]:
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request", r.text
    return [d["loc"] for d in r.json()["error"]["details"]]


BAD_TTLS = [1e-300, 0.5, 1.5, 0, -1, True, 10**30, 365 * 24 * 3600 + 1]


def test_a_command_ttl_is_whole_seconds_from_one_to_a_year(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    vin = VIN
    with Api(tmp_path / "telemetry.db", mosquitto, default_url(tmp_path)) as client:
        for ttl in BAD_TTLS:
            one = client.post(f"/v1/vehicles/{vin}/commands", json={"type": "lock", "ttl_s": ttl})
            assert ["body", "ttl_s"] in _loc_of(one), (ttl, one.text)
            many = client.post(
                "/v1/command-jobs", json={"type": "lock", "vins": [vin], "ttl_s": ttl}
            )
            assert ["body", "ttl_s"] in _loc_of(many), (ttl, many.text)
        # whole seconds, 60.0 included, pass validation (to a vehicle that does not exist)
        for ttl in (1, 60, 60.0):
            r = client.post(f"/v1/vehicles/{vin}/commands", json={"type": "lock", "ttl_s": ttl})
            assert r.status_code == 404, r.text


@pytest.mark.parametrize("limit", [1e-300, 0.5, 0, -5, 401, 1e308])
def test_a_speed_limit_is_from_1_to_400_kmh(
    api: TestClient, me: dict[str, str], limit: float
) -> None:
    r = api.post("/v1/fleets", json={"name": "vans", "speed_limit_kmh": limit}, headers=me)
    assert _loc_of(r) == [["body", "speed_limit_kmh"]]
    fence = _fence("zone")
    fence["properties"]["speed_limit_kmh"] = limit
    r = api.post("/v1/geofences", json=fence, headers=me)
    assert _loc_of(r) == [["body", "properties", "speed_limit_kmh"]]


@pytest.mark.parametrize(
    "rules",
    [
        {"speed_limit_kmh": 1e-300},
        {"harsh_braking_mps2": 0},
        {"idle_after_ms": 10**100},
        {"offline_after_ms": 10**18},
        {"max_seq_gaps": 10**9},
        {"low_soc_pct": [15, 10, 5]},  # clears below where it opens: would flap
        {"low_fuel_pct": [10, 15, 150]},
        {"harsh_interval_ms": [5_000, 500]},
        {"geofence_margin_m": 1e308},
    ],
)
def test_rule_thresholds_are_bounded(
    api: TestClient, me: dict[str, str], rules: dict[str, Any]
) -> None:
    account = api.get("/v1/me", headers=me).json()["user"]["account_id"]
    r = api.put(f"/v1/accounts/{account}/rule-settings", json={"rules": rules}, headers=me)
    assert r.status_code == 422, r.text
    assert next(iter(rules)) in r.json()["error"]["message"]


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_a_non_finite_threshold_is_refused(api: TestClient, me: dict[str, str], value: str) -> None:
    """Python's JSON reader takes Infinity (and 1e400 is infinity as a float); stored, it
    is no JSON a PostgreSQL jsonb column or a client takes."""
    account = api.get("/v1/me", headers=me).json()["user"]["account_id"]
    r = api.put(
        f"/v1/accounts/{account}/rule-settings",
        content=f'{{"rules": {{"overspeed_clear_kmh": {value}}}, "trips": {{}}}}',
        headers={**me, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text


# --- ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/v1/alerts", "/v1/trips"])
def test_a_backwards_range_is_a_422_like_the_reports(
    api: TestClient, me: dict[str, str], url: str
) -> None:
    start, end = "2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z"
    r = api.get(url, params={"start": start, "end": end}, headers=me)
    assert _loc_of(r) == [["query", "start"]]
    detail = r.json()["error"]["details"][0]
    report = api.get("/v1/reports/vehicles", params={"start": start, "end": end}, headers=me)
    assert detail["type"] == report.json()["error"]["details"][0]["type"] == "invalid_range"
    assert "start must be before end" in detail["msg"]
    # the right way round (and one end alone) is a list
    assert api.get(url, params={"start": end, "end": start}, headers=me).status_code == 200
    assert api.get(url, params={"end": end}, headers=me).status_code == 200


# --- geometry --------------------------------------------------------------------------------

BOW_TIE = [[11.0, 48.0], [11.01, 48.01], [11.01, 48.0], [11.0, 48.01], [11.0, 48.0]]


@pytest.mark.parametrize(
    ("ring", "says"),
    [
        (BOW_TIE, "crosses or touches itself"),
        ([[11.0, 48.0], [11.02, 48.0], [11.01, 48.0], [11.01, 48.01], [11.0, 48.0]], "itself"),
        ([[11.0, 48.0], [11.01, 48.0], [11.01, 48.01], [11.0, 48.01]], "not closed"),
        ([[11.0, 48.0], [11.01, 48.0], [11.0, 48.0], [11.0, 48.0]], "3 distinct"),
        ([[48.0, 11.0], [48.0, 91.0], [48.01, 11.0], [48.0, 11.0]], "swapped?"),
        ([[181.0, 48.0], [11.0, 48.0], [11.0, 48.01], [181.0, 48.0]], "longitude"),
    ],
)
def test_a_geofence_must_be_a_simple_closed_ring_on_the_earth(
    api: TestClient, me: dict[str, str], ring: list[list[float]], says: str
) -> None:
    r = api.post("/v1/geofences", json=_fence("zone", ring), headers=me)
    assert r.status_code == 422, r.text
    assert says in r.json()["error"]["message"], r.text
    assert r.json()["error"]["details"][0]["loc"][1].startswith("$.geometry.coordinates")


def test_a_hole_must_be_inside_its_polygon(api: TestClient) -> None:
    me = _register(api)
    fence = _fence("zone")
    outer = [[11.0, 48.0], [11.1, 48.0], [11.1, 48.1], [11.0, 48.1], [11.0, 48.0]]
    inside = [[11.02, 48.02], [11.04, 48.02], [11.04, 48.04], [11.02, 48.02]]
    outside = [[12.02, 48.02], [12.04, 48.02], [12.04, 48.04], [12.02, 48.02]]
    crossing = [[11.05, 48.05], [11.2, 48.05], [11.2, 48.06], [11.05, 48.05]]
    for hole, status in ((inside, 201), (outside, 422), (crossing, 422)):
        fence["geometry"]["coordinates"] = [outer, hole]
        r = api.post("/v1/geofences", json=fence, headers=me)
        assert r.status_code == status, r.text
    # a PUT is checked the same way
    fence["geometry"]["coordinates"] = [BOW_TIE]
    fence_id = api.get("/v1/geofences", headers=me).json()["items"][0]["id"]
    assert api.put(f"/v1/geofences/{fence_id}", json=fence, headers=me).status_code == 422


# --- found by probing: other accounts' ids, NUL bytes -----------------------------------------


def _cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).rstrip(b"=").decode()


def test_other_accounts_ids_and_nul_bytes_answer_404_and_422(
    state_db_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL a NUL byte in a cursor's VIN or in ``?vin=`` reached the database and
    answered 500 (text parameters cannot hold NUL there); another account's fleet, driver,
    geofence and settings are 404 whatever the verb."""
    settings = ApiSettings(tmp_path / "telemetry.db", fleet_worker=None, state_db_url=state_db_url)
    with admin_client(settings, raise_server_exceptions=False) as client:
        client.headers.pop("Authorization")
        me, them = _register(client), _register(client)
        mine = client.post("/v1/fleets", json={"name": "mine"}, headers=me).json()["id"]
        fleet = client.post("/v1/fleets", json={"name": "theirs"}, headers=them).json()
        driver = client.post("/v1/drivers", json={"name": "theirs"}, headers=them).json()["id"]
        fence = client.post("/v1/geofences", json=_fence("theirs"), headers=them).json()["id"]
        account = fleet["account_id"]
        nul_vin = "WVWZZZ1JZXW00000\x00"
        for url, params in [
            (f"/v1/fleets/{mine}/vehicles", {"cursor": _cursor("fleet_vehicles", nul_vin)}),
            ("/v1/vehicles", {"cursor": _cursor("vehicles", nul_vin)}),
            ("/v1/alerts", {"vin": nul_vin}),
            ("/v1/trips", {"vin": nul_vin}),
            ("/v1/reports/vehicles", {"vin": nul_vin}),
        ]:
            r = client.get(f"{url}?{urllib.parse.urlencode(params)}", headers=me)
            assert r.status_code == 422, f"{url} {params}: {r.status_code} {r.text}"
        foreign: list[tuple[str, str, Any]] = [
            ("GET", f"/v1/fleets/{fleet['id']}", None),
            ("PATCH", f"/v1/fleets/{fleet['id']}", {"name": "mine now"}),
            ("DELETE", f"/v1/fleets/{fleet['id']}", None),
            ("GET", f"/v1/fleets/{fleet['id']}/vehicles", None),
            ("GET", f"/v1/drivers/{driver}", None),
            (
                "POST",
                f"/v1/drivers/{driver}/assignments",
                {"vin": "WVWZZZ1JZXW000001", "valid_from": 0},
            ),
            ("GET", f"/v1/trips?driver_id={driver}", None),
            ("GET", f"/v1/alerts?fleet_id={fleet['id']}", None),
            ("GET", f"/v1/alerts?account_id={account}", None),
            ("GET", f"/v1/reports/drivers?driver_id={driver}", None),
            ("GET", f"/v1/geofences/{fence}", None),
            ("PUT", f"/v1/geofences/{fence}", _fence("mine now")),
            ("DELETE", f"/v1/geofences/{fence}", None),
            ("POST", f"/v1/geofences?account_id={account}", _fence("planted")),
            ("GET", f"/v1/accounts/{account}/rule-settings", None),
            ("PUT", f"/v1/accounts/{account}/rule-settings", {"rules": {}}),
        ]
        for method, url, body in foreign:
            r = client.request(method, url, json=body, headers=me)
            assert r.status_code == 404, f"{method} {url}: {r.status_code} {r.text}"
        assert client.get(f"/v1/geofences/{fence}", headers=them).status_code == 200
