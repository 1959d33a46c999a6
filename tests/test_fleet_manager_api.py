"""What a fleet manager's trial found in the fleet routes, each test failing without its fix:

* the rule settings: GET answered ``{"rules": {}, "trips": {}}`` on a new account, so
  nobody could tell which thresholds were in effect or what the settings were called (the
  API described them as the fields of a Python class). The answer now also holds every
  threshold with its value in effect, in the form PUT takes;
* assigning a driver "from now on" needed the current time in epoch milliseconds
  (``valid_from`` was required): it defaults to now.

Everything talks to the real API app in this process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gateway.api import ApiSettings
from gateway.core.fleet.state import RULE_SETTING_NAMES, TRIP_SETTING_NAMES
from tests.support.api import admin_client

PASSWORD = "rule-settings-password-1"


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, int]]:
    """An organization's fleet manager: (client sending their token, account id)."""
    db = tmp_path_factory.mktemp("rule-settings") / "telemetry.db"
    with admin_client(ApiSettings(db, fleet_worker=None)) as client:
        org = client.post("/v1/accounts", json={"kind": "organization", "name": "Vans Ltd"})
        account = org.json()["id"]
        r = client.post("/v1/users", json={
            "email": "ana@vans.example", "name": "Ana", "role": "fleet_manager",
            "account_id": account, "password": PASSWORD,
        })  # fmt: skip
        assert r.status_code == 201, r.text
        token = client.post("/v1/auth/token", data={
            "grant_type": "password", "username": "ana@vans.example", "password": PASSWORD,
        })  # fmt: skip
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield client, account


def test_a_new_account_reads_every_threshold_in_effect(manager: tuple[TestClient, int]) -> None:
    client, account = manager
    body = client.get(f"/v1/accounts/{account}/rule-settings").json()
    assert (body["rules"], body["trips"]) == ({}, {})
    assert set(body["effective_rules"]) == RULE_SETTING_NAMES
    assert set(body["effective_trips"]) == TRIP_SETTING_NAMES
    assert body["effective_rules"]["idle_after_ms"] == 300_000  # the documented default
    assert "ignition" in body["effective_rules"]["enabled"]


def test_an_override_shows_in_effect_and_the_answer_can_be_put_back(
    manager: tuple[TestClient, int],
) -> None:
    client, account = manager
    url = f"/v1/accounts/{account}/rule-settings"
    put = client.put(url, json={"rules": {"idle_after_ms": 120_000}, "trips": {}})
    assert put.status_code == 200, put.text
    assert put.json()["effective_rules"]["idle_after_ms"] == 120_000
    body = client.get(url).json()
    assert body["rules"] == {"idle_after_ms": 120_000}
    assert body["effective_rules"]["idle_after_ms"] == 120_000
    # what GET shows is what PUT takes: edit one value and send all of it back
    rules = {**body["effective_rules"], "enabled": ["overspeed", "harsh_braking"]}
    again = client.put(url, json={"rules": rules, "trips": body["effective_trips"]})
    assert again.status_code == 200, again.text
    assert again.json()["effective_rules"]["enabled"] == ["harsh_braking", "overspeed"]
    assert client.get(url).json()["effective_rules"] == again.json()["effective_rules"]


def test_a_driver_is_assigned_from_now_unless_told_otherwise(
    manager: tuple[TestClient, int],
) -> None:
    client, _account = manager
    vin = "WVWZZZ1JZXW000077"
    assert client.post("/v1/vehicles", json={"vin": vin, "label": "Van 77"}).status_code == 201
    driver = client.post("/v1/drivers", json={"name": "Max"}).json()["id"]
    before = int(time.time() * 1000)
    r = client.post(f"/v1/drivers/{driver}/assignments", json={"vin": vin})
    after = int(time.time() * 1000)
    assert r.status_code == 201, r.text
    assert before <= r.json()["start_at"] <= after
    assert r.json()["end_at"] is None
    # an end before now, without a start, is a backwards range like any other
    r = client.post(
        f"/v1/drivers/{driver}/assignments", json={"vin": vin, "valid_until": before - 60_000}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == ["body", "valid_until"]
